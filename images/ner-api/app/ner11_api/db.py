"""PostgreSQL access: a lazily created psycopg2 pool, a monitor thread and migrations.

- The API starts whether or not the database is up. The pool is created on first use
  (and again after a failure); every checkout is pre-pinged (SELECT 1) and a broken
  connection is discarded and replaced.
- A monitor thread pings the database every couple of seconds, so /health reports the
  state without blocking, and applies the migrations as soon as the database answers
  (retrying with backoff; an error is logged once the deadline has passed).
- Sessions identify as application_name='fastapi' (the runbooks filter on it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import psycopg2
import psycopg2.extensions
import psycopg2.pool

log = logging.getLogger("ner11.db")

APPLICATION_NAME = "fastapi"
MIGRATION_LOCK_KEY = 7_110_011  # pg_advisory_xact_lock key of the schema migrations


class DatabaseUnavailable(Exception):
    """The database cannot be reached (or the pool is exhausted); one-line message."""


def one_line(exc):
    """First line of an error; psycopg2 errors keep their class name (log signatures)."""
    if isinstance(exc, DatabaseUnavailable):
        return str(exc)
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, psycopg2.Error):
        first = "%s.%s: %s" % (type(exc).__module__.split(".")[0], type(exc).__name__, first)
    return first[:300]


MIGRATIONS = [
    (
        1,
        "initial schema and seed data",
        """
        CREATE TABLE IF NOT EXISTS vendor_equipment (
            id serial PRIMARY KEY,
            vendor text NOT NULL,
            model text NOT NULL,
            category text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS threat_intelligence (
            id serial PRIMARY KEY,
            indicator text NOT NULL,
            kind text,
            severity text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS compliance_frameworks (
            id serial PRIMARY KEY,
            name text NOT NULL,
            version text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS ner_documents (
            id bigserial PRIMARY KEY,
            text text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS ner_entities (
            id bigserial PRIMARY KEY,
            document_id bigint NOT NULL REFERENCES ner_documents (id) ON DELETE CASCADE,
            label text NOT NULL,
            text text NOT NULL,
            start_char integer NOT NULL,
            end_char integer NOT NULL
        );
        CREATE INDEX IF NOT EXISTS ner_entities_document_id_idx ON ner_entities (document_id);
        CREATE INDEX IF NOT EXISTS ner_entities_label_idx ON ner_entities (label);

        INSERT INTO vendor_equipment (vendor, model, category)
        SELECT v.vendor, v.model, v.category FROM (VALUES
            ('Siemens', 'SIMATIC S7-1500', 'PLC'),
            ('Schneider Electric', 'Modicon M580', 'PLC'),
            ('Rockwell Automation', 'ControlLogix 5580', 'PLC'),
            ('ABB', 'AC 800M', 'DCS controller'),
            ('Honeywell', 'Experion PKS C300', 'DCS controller'),
            ('Cisco', 'IE 3400', 'Industrial switch'),
            ('Moxa', 'EDR-G903', 'Industrial firewall'),
            ('Emerson', 'DeltaV PK Controller', 'DCS controller')
        ) AS v (vendor, model, category)
        WHERE NOT EXISTS (SELECT 1 FROM vendor_equipment);

        INSERT INTO compliance_frameworks (name, version)
        SELECT f.name, f.version FROM (VALUES
            ('NIST CSF', '2.0'),
            ('IEC 62443', '3-3:2013'),
            ('NERC CIP', 'v7'),
            ('ISO/IEC 27001', '2022'),
            ('NIST SP 800-82', 'Rev. 3')
        ) AS f (name, version)
        WHERE NOT EXISTS (SELECT 1 FROM compliance_frameworks);

        INSERT INTO threat_intelligence (indicator, kind, severity)
        SELECT t.indicator, t.kind, t.severity FROM (VALUES
            ('CVE-2022-38465', 'cve', 'critical'),
            ('Industroyer2', 'malware', 'high'),
            ('Triton', 'malware', 'critical')
        ) AS t (indicator, kind, severity)
        WHERE NOT EXISTS (SELECT 1 FROM threat_intelligence);
        """,
    ),
]


class Database:
    def __init__(self, settings):
        self.settings = settings
        self.pool_size = settings.pool_size
        self.maxconn = settings.pool_size + settings.max_overflow
        self._pool = None
        self._pool_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self.connected = False
        self.last_error = None
        self.server_version = None
        self.migrated = False
        self.schema_version = 0
        self._stop = threading.Event()
        self._thread = None

    # ---- connections ---------------------------------------------------------------
    def _dsn(self, application_name=APPLICATION_NAME, statement_timeout_ms=5000):
        s = self.settings
        return dict(
            host=s.db_host,
            port=s.db_port,
            dbname=s.db_name,
            user=s.db_user,
            password=s.db_password,
            application_name=application_name,
            connect_timeout=3,
            options="-c statement_timeout=%d" % statement_timeout_ms,
        )

    def _get_pool(self):
        with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = psycopg2.pool.ThreadedConnectionPool(1, self.maxconn, **self._dsn())
                except psycopg2.Error as exc:
                    raise DatabaseUnavailable(one_line(exc)) from None
            return self._pool

    def _mark(self, ok, error=None):
        with self._state_lock:
            if ok and not self.connected:
                log.info("database connected (%s:%s/%s)", self.settings.db_host, self.settings.db_port, self.settings.db_name)
            elif not ok and (self.connected or self.last_error != error):
                log.warning("database disconnected: %s", error)
            self.connected = ok
            self.last_error = None if ok else error

    def _checkout(self):
        pool = self._get_pool()
        last = None
        for _ in range(self.maxconn + 1):
            try:
                conn = pool.getconn()
            except psycopg2.pool.PoolError as exc:
                log.error("could not obtain connection from pool: %s", exc)
                raise DatabaseUnavailable("could not obtain connection from pool: %s" % exc) from None
            except psycopg2.Error as exc:
                raise DatabaseUnavailable(one_line(exc)) from None
            try:  # pre-ping
                if conn.closed:
                    raise psycopg2.InterfaceError("connection already closed")
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                conn.rollback()
                return pool, conn
            except psycopg2.Error as exc:
                last = exc
                with contextlib.suppress(Exception):
                    pool.putconn(conn, close=True)
        raise DatabaseUnavailable(one_line(last) if last else "no usable connection")

    @contextlib.contextmanager
    def connection(self):
        """A pooled, pre-pinged connection; commits on success, rolls back on error."""
        try:
            pool, conn = self._checkout()
        except DatabaseUnavailable as exc:
            self._mark(False, str(exc))
            raise
        broken = False
        try:
            yield conn
            conn.commit()
        except psycopg2.extensions.QueryCanceledError:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        except psycopg2.OperationalError as exc:
            broken = True
            self._mark(False, one_line(exc))
            raise DatabaseUnavailable(one_line(exc)) from None
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            with contextlib.suppress(Exception):
                pool.putconn(conn, close=broken or bool(conn.closed))

    def pool_stats(self):
        pool = self._pool
        if pool is None:
            return {"open": 0, "in_use": 0}
        with contextlib.suppress(Exception):
            in_use = len(pool._used)  # noqa: SLF001 - psycopg2 exposes no public counter
            idle = len(pool._pool)  # noqa: SLF001
            return {"open": in_use + idle, "in_use": in_use}
        return {"open": 0, "in_use": 0}

    # ---- checks --------------------------------------------------------------------
    def ping(self):
        try:
            with self.connection() as conn, conn.cursor() as cur:
                cur.execute("SHOW server_version")
                self.server_version = cur.fetchone()[0]
            self._mark(True)
            return True
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self._mark(False, one_line(exc))
            return False

    def health(self):
        """Live check for /api/v1/db/health: (http_status, body)."""
        try:
            with self.connection() as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT current_setting('server_version'), "
                    "(SELECT count(*) FROM pg_stat_activity WHERE application_name = %s)",
                    (APPLICATION_NAME,),
                )
                version, active = cur.fetchone()
            self.server_version = version
            self._mark(True)
            return 200, {
                "database": "connected",
                "pool_size": self.pool_size,
                "active_connections": int(active),
                "pool_in_use": self.pool_stats()["in_use"],
                "server_version": version,
            }
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self._mark(False, one_line(exc))
            return 503, {
                "database": "disconnected",
                "pool_size": self.pool_size,
                "active_connections": 0,
                "error": one_line(exc),
            }

    # ---- migrations ----------------------------------------------------------------
    def migrate(self):
        """Apply pending migrations in one transaction under an advisory lock."""
        conn = psycopg2.connect(**self._dsn(APPLICATION_NAME + "-migrate", statement_timeout_ms=60000))
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " description text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur.execute("SELECT version FROM schema_migrations")
                applied = {row[0] for row in cur.fetchall()}
                for version, description, sql in MIGRATIONS:
                    if version in applied:
                        continue
                    log.info("applying migration %d: %s", version, description)
                    cur.execute(sql)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                        (version, description),
                    )
                    applied.add(version)
            self.schema_version = max(applied) if applied else 0
            self.migrated = True
            log.info("database schema at version %d", self.schema_version)
        finally:
            conn.close()

    # ---- background monitor --------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="db-monitor", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with self._pool_lock:
            if self._pool is not None:
                with contextlib.suppress(Exception):
                    self._pool.closeall()
                self._pool = None

    def _run(self):
        started = time.monotonic()
        backoff = 1.0
        deadline_reported = False
        while not self._stop.is_set():
            ok = self.ping()
            if ok and not self.migrated:
                try:
                    self.migrate()
                    backoff = 1.0
                except psycopg2.Error as exc:
                    log.warning("migration failed (will retry): %s", one_line(exc))
                    if not deadline_reported and time.monotonic() - started > self.settings.migration_deadline:
                        log.error(
                            "migrations not applied within %d s; still retrying", self.settings.migration_deadline
                        )
                        deadline_reported = True
                    backoff = min(backoff * 2, 10.0)
                    self._stop.wait(backoff)
                    continue
            elif not ok and not self.migrated and not deadline_reported:
                if time.monotonic() - started > self.settings.migration_deadline:
                    log.error(
                        "database not reachable within %d s (%s); migrations pending, still retrying",
                        self.settings.migration_deadline, self.last_error,
                    )
                    deadline_reported = True
            self._stop.wait(self.settings.db_check_interval)

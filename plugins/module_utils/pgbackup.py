# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verified logical backups of one PostgreSQL database (module ``pg_backup``).

The plan, the commands and the manifest are built here; the module only parses
options and reports. Design (docs/backups.md):

* The dump streams straight into ``<backup_dir>/database/.partial-<id>/``: no
  byte of it passes through Python memory.
  - ``directory`` format (the default when possible) runs ``pg_dump -Fd -j N``
    in a short-lived *sidecar* container of the database container's own image
    (same pg_dump as the server), joined to its network namespace
    (``--network container:<db>``), with the partial directory bind-mounted at
    the same path and the password in a read-only 0600 passfile
    (``PGPASSFILE``). Nothing secret is on a command line or in an environment
    value. On a host target (``login_host``) the host's pg_dump writes the
    directory itself.
  - ``custom`` / ``plain`` stream from ``docker exec`` (local socket, no
    password at all) with stdout redirected to the file.
* Before publishing: ``pg_restore --list`` TOC count (custom/directory) or a
  full decompression test (compressed plain), sha256 of every file, size.
* Then ``Catalog.publish`` renames the partial into place (G58). Any failure
  discards the partial; a killed run leaves only a partial that the next run
  removes under the lock.

Plain Python: no Ansible import. Commands run through a ``runner`` with the
signature of ``AnsibleModule.run_command``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shlex
import shutil
import socket
import time

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import (
    APP_NAME,
    PgExecError,
    PgTarget,
    quote_ident,
    quote_literal,
)

KIND = "database"
FORMATS = ("directory", "custom", "plain")
DEFAULT_CANARY_TABLES = ("vendor_equipment", "threat_intelligence", "compliance_frameworks")
ARTIFACTS = {
    ("directory", "gzip"): "dump",
    ("directory", "none"): "dump",
    ("custom", "gzip"): "dump.pgdump",
    ("custom", "none"): "dump.pgdump",
    ("plain", "none"): "dump.sql",
    ("plain", "gzip"): "dump.sql.gz",
    ("plain", "zstd"): "dump.sql.zst",
}
SIDECAR_LABEL = "io.ner11.pg_backup.catalog"
PIN_REASON = "pinned by pg_backup keep_until"
_DB_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


class PgBackupError(Exception):
    """The backup cannot be made; the message names the cause and the fix."""


# -- pure helpers (unit-tested) --------------------------------------------------
def parse_compression(fmt, value):
    """``none`` | ``gzip:<0-9>`` | ``<0-9>`` (gzip level) | ``zstd:<1-19>`` (plain only) → (method, level)."""
    text = str(value if value is not None else "gzip:1").strip().lower()
    if text in ("none", "0", "gzip:0"):
        return "none", 0
    method, _sep, level = text.partition(":")
    if method.isdigit() and not level:
        method, level = "gzip", method
    if method == "gzip":
        level = level or "6"
        if not level.isdigit() or not 1 <= int(level) <= 9:
            raise PgBackupError("compression %r: the gzip level must be 1-9 (or use 'none'), e.g. gzip:1" % (value,))
        return "gzip", int(level)
    if method == "zstd":
        level = level or "3"
        if not level.isdigit() or not 1 <= int(level) <= 19:
            raise PgBackupError("compression %r: the zstd level must be 1-19, e.g. zstd:3" % (value,))
        if fmt != "plain":
            raise PgBackupError(
                "compression %r: zstd is only available for format=plain (PostgreSQL 15's pg_dump has only gzip "
                "built in); use gzip:<level> with format=%s" % (value, fmt)
            )
        return "zstd", int(level)
    raise PgBackupError("unknown compression %r: use none, gzip:<1-9> or zstd:<1-19> (plain only)" % (value,))


def compression_label(method, level):
    return "none" if method == "none" else "%s:%d" % (method, level)


def artifact_name(fmt, method):
    return ARTIFACTS[(fmt, method)]


def validate_params(params):
    """Input checks before anything is touched; raises PgBackupError naming the fix."""
    fmt = params.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise PgBackupError("unknown format %r: use directory, custom or plain" % (fmt,))
    backup_dir = params.get("backup_dir") or ""
    if not os.path.isabs(backup_dir):
        raise PgBackupError("backup_dir must be an absolute path, got %r; e.g. /var/backups/ner11" % (backup_dir,))
    jobs = params.get("jobs")
    if jobs is not None and (jobs < 1 or jobs > 64):
        raise PgBackupError("jobs must be between 1 and 64, got %r (2 suits a 2-core host)" % (jobs,))
    db_name = params.get("db_name") or ""
    if not _DB_RE.match(db_name):
        raise PgBackupError("db_name %r is not a plain database name (letters, digits, _, $, -)" % (db_name,))
    for table in params.get("canary_tables") or []:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$", table):
            raise PgBackupError("canary table %r is not a plain [schema.]table name" % (table,))
    factor = params.get("space_factor")
    if factor is not None and factor < 0:
        raise PgBackupError("space_factor must be >= 0, got %r" % (factor,))
    if (params.get("lock_timeout") or 0) < 0 or (params.get("partial_grace_s") or 0) < 0:
        raise PgBackupError("lock_timeout and partial_grace_s must be >= 0")


def choose_format(fmt, can_write_directory):
    """Default: directory (parallel, ~2x faster than custom, ENVIRONMENT anchors) when possible."""
    if fmt:
        return fmt
    return "directory" if can_write_directory else "custom"


def count_toc(listing):
    """Entries in ``pg_restore --list`` output (lines that are not comments)."""
    return sum(1 for line in (listing or "").splitlines() if line.strip() and not line.lstrip().startswith(";"))


def tree_sha256(files):
    """sha256 over ``sha256sum``-style lines of the files (docs/backup-catalog.md)."""
    text = "".join("%s  %s\n" % (f["sha256"], f["path"]) for f in files)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def restore_commands(fmt, method, artifact, jobs, has_globals):
    """Stock-tool restore lines, run in the backup directory; ``{target_db}`` is a placeholder."""
    cmds = []
    if has_globals:
        cmds.append("psql -X -d postgres -f globals.sql")
    cmds.append("createdb -T template0 {target_db}")
    if fmt in ("directory", "custom"):
        cmds.append("pg_restore --exit-on-error -j %d -d {target_db} %s" % (max(jobs, 1), artifact))
    elif method == "none":
        cmds.append("psql -X -v ON_ERROR_STOP=1 --single-transaction -d {target_db} -f %s" % artifact)
    else:
        tool = "gzip" if method == "gzip" else "zstd"
        cmds.append("%s -dc %s | psql -X -v ON_ERROR_STOP=1 --single-transaction -d {target_db}" % (tool, artifact))
    notes = [
        "Run the commands in the backup directory as the database superuser; add -h/-p/-U for a remote server.",
        "{target_db} must not exist yet (createdb fails otherwise, which protects existing data).",
    ]
    if has_globals:
        notes.append(
            "globals.sql recreates roles (without passwords: set them afterwards with ALTER ROLE ... PASSWORD); "
            "on a server that already has the roles it reports harmless 'already exists' errors - skip it there."
        )
    return {
        "workdir": "the backup directory (where manifest.json is)",
        "placeholders": {"{target_db}": "the database to restore into (must not exist yet)"},
        "commands": cmds,
        "notes": notes,
    }


def required_space(db_size, factor):
    return int(db_size * factor)


def space_error(db_size, factor, free, path):
    need = required_space(db_size, factor)
    if free >= need:
        return None
    return (
        "not enough free space for the dump: %s has %d bytes free, the backup needs an estimated %d bytes "
        "(pg_database_size %d x space_factor %s); free space there (backup_prune, ner11.ops.disk_cleanup), "
        "point backup_dir at a larger filesystem, or lower space_factor if you know the dump compresses well"
        % (path, free, need, db_size, factor)
    )


# A missing table must not fail the whole query, so the count runs through query_to_xml.
_COUNT_SQL = (
    "SELECT %s, CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE "
    "(xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM %s', false, true, '')))[1]::text::bigint END"
)
_FACTS_SQL = (
    "SELECT current_setting('server_version'), current_setting('server_version_num'), "
    "(SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s);"
)


def row_count_sql(tables):
    """One query: count(*) of every table that exists, NULL for a missing one."""
    parts = []
    for table in tables:
        ident = ".".join(quote_ident(p) for p in table.split("."))
        parts.append(_COUNT_SQL % (quote_literal(table), quote_literal(ident), ident.replace("'", "''")))
    return " UNION ALL ".join(parts) + ";" if parts else "SELECT 1 WHERE false;"


def parse_row_counts(rows):
    out = {}
    for row in rows or []:
        out[row[0]] = int(row[1]) if len(row) > 1 and row[1] not in ("", None) else None
    return out


def counts_match(expected, expected_after, actual):
    """Restored counts equal what was dumped (within the before/after range recorded under concurrent writes)."""
    problems = []
    for table, before in (expected or {}).items():
        got = actual.get(table)
        after = (expected_after or {}).get(table, before)
        if before is None:
            continue
        low, high = min(before, after if after is not None else before), max(before, after if after is not None else before)
        if got is None or not low <= got <= high:
            problems.append(
                "%s: restored %s rows, manifest says %s" % (table, got, before if low == high else "%d-%d" % (low, high))
            )
    return problems


def instance_of(params):
    if params.get("container"):
        return "container:%s" % params["container"]
    return "host:%s:%d" % (params.get("login_host"), int(params.get("login_port") or 5432))


def display(cmd):
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


# -- the runner --------------------------------------------------------------------
class PgBackup:
    """One run of pg_backup: ``plan()`` (check mode) or ``run()``."""

    def __init__(self, params, runner, check_mode=False, now=None):
        validate_params(params)
        self.p = params
        self.runner = runner
        self.check_mode = check_mode
        self.now = now or cat.utcnow()
        self.catalog = cat.Catalog(params["backup_dir"])
        self.db = params["db_name"]
        self.target = PgTarget(params, self._run_logged)
        self.executed = []
        self.warnings = []
        self.period = params.get("period") or "manual"
        self.tables = list(params.get("canary_tables") or DEFAULT_CANARY_TABLES)
        self.jobs = int(params.get("jobs") or 2)
        self.image = None
        # source identity (docs/backup-catalog.md): the name the role passes, else this machine's
        self.source_host = params.get("source_host") or socket.gethostname()
        self.pins = cat.new_backup_pins(params.get("keep_until"), params.get("keep_reason"), self.now, PIN_REASON)
        self.pin_changed = False

    # every command goes through here so executed_commands is complete (and secret-free)
    def _run_logged(self, cmd, **kwargs):
        self.executed.append(display(cmd))
        return self.runner(cmd, **kwargs)

    def _sh(self, line, check_msg=None):
        """Run a bash line (redirections, pipefail); every word in it is already shlex-quoted."""
        self.executed.append(line)
        rc, out, err = self.runner(["/bin/bash", "-o", "pipefail", "-c", line])
        if rc != 0 and check_msg:
            raise PgBackupError("%s (rc=%s): %s" % (check_msg, rc, _last(err or out)))
        return rc, out, err

    # -- server checks --------------------------------------------------------------
    def _check_container(self):
        c = self.p.get("container")
        if not c:
            return
        docker = self.p.get("docker_cli") or "docker"
        rc, out, err = self._run_logged([docker, "inspect", "--format", "{{.State.Status}}|{{.Image}}", c])
        if rc != 0:
            raise PgBackupError(
                "container %s not found (%s); check the container option (ner11_stack: <project>-postgres-1) "
                "or start the stack with ner11.ops startup.yml" % (c, _last(err))
            )
        status, _sep, image = out.strip().partition("|")
        if status != "running":
            raise PgBackupError(
                "container %s is %s, not running; start it (playbooks/startup.yml or docker start %s) and retry" % (c, status, c)
            )
        self.image = image

    def _server_facts(self):
        try:
            rows = self.target.query(_FACTS_SQL % quote_literal(self.db))
        except PgExecError as exc:
            raise PgBackupError(
                "cannot query the database server on %s: %s; is PostgreSQL up and accepting connections? "
                "(check with ner11.ops.ner_health or playbooks/health.yml)" % (self.target.describe(), exc)
            ) from None
        version, version_num, size = rows[0]
        if size in ("", None):
            raise PgBackupError(
                "database %s does not exist on %s; check db_name (ner11_stack.db_name, default ner11_db)"
                % (self.db, self.target.describe())
            )
        return {"server_version": version, "server_version_num": int(version_num), "db_size_bytes": int(size)}

    def _row_counts(self):
        return parse_row_counts(self.target.query(row_count_sql(self.tables), db=self.db))

    def _pg_dump_version(self):
        if self.p.get("container"):
            _rc, out, _err = self._run_logged(
                [self.p.get("docker_cli") or "docker", "exec", self.p["container"], "pg_dump", "--version"]
            )
        else:
            _rc, out, _err = self._run_logged(["pg_dump", "--version"])
        return out.strip()

    # -- decisions ------------------------------------------------------------------
    def _format(self):
        can_dir = bool(self.p.get("login_host") or self.p.get("login_password"))
        fmt = choose_format(self.p.get("format"), can_dir)
        if fmt == "directory" and not can_dir:
            raise PgBackupError(
                "format=directory in container mode needs login_password: pg_dump -Fd runs in a sidecar container "
                "that connects over the database container's network with a 0600 passfile; set login_password "
                "(ner11_db_password) or use format=custom"
            )
        method, level = parse_compression(fmt, self.p.get("compression"))
        jobs = self.jobs if fmt == "directory" else 1
        return fmt, method, level, jobs

    def existing(self):
        """The good backup of this source identity that already covers this period, or None.

        A backup whose recorded verification failed does not count: the period gets a new one.
        """
        if self.period == "manual" or self.p.get("force"):
            return None
        key = cat.period_key(self.period, self.now)
        found = self.catalog.list(KIND, db_name=self.db, instance=instance_of(self.p), host=self.source_host, period=self.period)
        for manifest in reversed(found):
            if manifest.get("period_key") == key:
                return manifest
        return None

    def _new_id(self):
        base = cat.new_backup_id(self.db, self.now)
        backup_id, n = base, 1
        while os.path.exists(self.catalog.path(KIND, backup_id)) or os.path.exists(self.catalog.partial_path(KIND, backup_id)):
            n += 1
            backup_id = "%s-%d" % (base, n)
        return backup_id

    # -- commands ---------------------------------------------------------------------
    def dump_command(self, fmt, method, level, jobs, partial, artifact):
        """(kind, cmd): ``argv`` for a list, ``shell`` for a bash line with redirection."""
        out_path = os.path.join(partial, artifact)
        zarg = ["-Z", "0" if method == "none" else str(level)] if method != "zstd" else []
        fmt_flag = {"directory": "-Fd", "custom": "-Fc", "plain": "-Fp"}[fmt]
        dump_args = [fmt_flag] + zarg + (["-j", str(jobs)] if fmt == "directory" else [])
        user = self.p.get("login_user") or "postgres"
        if self.p.get("login_host"):
            argv = ["pg_dump"] + [
                "-h", self.p["login_host"], "-p", str(self.p.get("login_port") or 5432), "-U", user,
            ] + dump_args  # fmt: skip
            if method == "zstd":
                return "shell", "%s %s | zstd -q -T0 -%d > %s" % (
                    shlex.join(argv),
                    shlex.quote(self.db),
                    level,
                    shlex.quote(out_path),
                )
            return "argv", argv + ["-f", out_path, self.db]
        docker = self.p.get("docker_cli") or "docker"
        if fmt == "directory":
            uid, gid = os.getuid(), os.getgid()
            return "argv", [
                docker, "run", "--rm", "--name", self.sidecar_name(), "--label", "%s=%s" % (SIDECAR_LABEL, self.catalog.root),
                "--network", "container:%s" % self.p["container"], "--user", "%d:%d" % (uid, gid),
                "-v", "%s:%s" % (partial, partial), "-v", "%s:/run/ner11/pgpass:ro" % self._passfile(),
                "-e", "PGPASSFILE=/run/ner11/pgpass", "-e", "PGAPPNAME=%s" % APP_NAME,
                "-e", "PGCONNECT_TIMEOUT=%d" % int(self.p.get("connect_timeout") or 10),
                "--entrypoint", "pg_dump", self.image or "IMAGE-OF-%s" % self.p["container"],
                "-h", "127.0.0.1", "-p", str(self.p.get("container_port") or 5432), "-U", user,
            ] + dump_args + ["-f", out_path, self.db]  # fmt: skip
        argv = self.target.argv("pg_dump", dump_args + [self.db])
        if method == "zstd":
            inner = "%s | zstd -q -T0 -%d" % (shlex.join(["pg_dump", "-U", user] + dump_args + [self.db]), level)
            argv = self.target.argv("bash", []) + ["-o", "pipefail", "-c", inner]
            # target.argv adds no -U for bash; the inner line carries it
        return "shell", "%s > %s" % (shlex.join(argv), shlex.quote(out_path))

    def globals_command(self, partial):
        path = os.path.join(partial, "globals.sql")
        args = ["--globals-only"] + ([] if self.p.get("globals_role_passwords") else ["--no-role-passwords"])
        if self.p.get("login_host"):
            return "argv", self.target.argv("pg_dumpall", args + ["-f", path])
        return "shell", "%s > %s" % (shlex.join(self.target.argv("pg_dumpall", args)), shlex.quote(path))

    def list_command(self, fmt, partial, artifact):
        path = os.path.join(partial, artifact)
        docker = self.p.get("docker_cli") or "docker"
        if self.p.get("login_host"):
            return "argv", ["pg_restore", "--list", path]
        if fmt == "custom":
            return "shell", "%s < %s" % (
                shlex.join([docker, "exec", "-i", self.p["container"], "pg_restore", "--list"]),
                shlex.quote(path),
            )
        uid, gid = os.getuid(), os.getgid()
        return "argv", [
            docker, "run", "--rm", "--network", "none", "--user", "%d:%d" % (uid, gid),
            "--label", "%s=%s" % (SIDECAR_LABEL, self.catalog.root), "-v", "%s:%s:ro" % (partial, partial),
            "--entrypoint", "pg_restore", self.image or "IMAGE-OF-%s" % self.p["container"], "--list", path,
        ]  # fmt: skip

    def sidecar_name(self):
        return "%s-pgdump-%d" % (self.p["container"], os.getpid())

    def _passfile(self):
        # PgTarget keeps the 0600 passfile in a private 0700 temp dir while the run lasts.
        return self.target._passfile()

    def _exec(self, kind, cmd, msg):
        if kind == "shell":
            return self._sh(cmd, msg)
        rc, out, err = self._run_logged(cmd, environ_update=self.target.environ())
        if rc != 0:
            raise PgBackupError("%s (rc=%s): %s" % (msg, rc, _last(err or out)))
        return rc, out, err

    def _remove_orphan_sidecars(self):
        if not self.p.get("container"):
            return []
        docker = self.p.get("docker_cli") or "docker"
        rc, out, _err = self._run_logged([docker, "ps", "-aq", "--filter", "label=%s=%s" % (SIDECAR_LABEL, self.catalog.root)])
        ids = out.split() if rc == 0 else []
        if ids:
            self._run_logged([docker, "rm", "-f"] + ids)
        return ids

    # -- the run ----------------------------------------------------------------------
    def plan(self):
        self._check_container()
        facts = self._server_facts()
        fmt, method, level, jobs = self._format()
        found = self.existing()
        backup_id = found["backup_id"] if found else self._new_id()
        partial = self.catalog.partial_path(KIND, backup_id)
        artifact = artifact_name(fmt, method)
        factor = self._factor(method)
        plan = {
            "backup_id": backup_id,
            "path": self.catalog.path(KIND, backup_id),
            "partial": partial,
            "format": fmt,
            "compression": compression_label(method, level),
            "jobs": jobs,
            "estimated_size_bytes": required_space(facts["db_size_bytes"], factor),
            "db_size_bytes": facts["db_size_bytes"],
            "exists": bool(found),
            "source_host": self.source_host,
            "pins": self.pins,
            "commands": [
                display(self.dump_command(fmt, method, level, jobs, partial, artifact)[1]),
                display(self.globals_command(partial)[1]),
                display(self.list_command(fmt, partial, artifact)[1]) if fmt != "plain" else "decompression test",
            ],
        }
        return plan, found, facts, (fmt, method, level, jobs)

    def _factor(self, method):
        factor = self.p.get("space_factor")
        if factor is None:
            factor = 1.0
        return factor

    def run(self):
        try:
            return self._run()
        finally:
            self.target.close()

    def _run(self):
        started = time.monotonic()
        plan, found, facts, (fmt, method, level, jobs) = self.plan()
        if found:
            return self._existing(found, plan)
        if self.check_mode:
            return {"changed": True, "backup_id": plan["backup_id"], "path": plan["path"], "plan": plan}
        timeout = int(self.p.get("lock_timeout") or 0)
        try:
            lock = self.catalog.lock(KIND, wait=timeout > 0, timeout=timeout)
            with lock:
                # G58: under the lock no other writer of this kind is alive (flock dies with its
                # process), so every partial is orphaned: remove them and any orphan sidecar.
                self.cleaned = self._clean_partials()
                found = self.existing()  # a concurrent run may have made it while we waited
                if found:
                    existing = found
                else:
                    return self._create(plan, facts, fmt, method, level, jobs, started)
        except cat.CatalogLocked as exc:
            raise PgBackupError(str(exc)) from None
        return self._existing(existing, plan)

    def _existing(self, found, plan):
        """The period already has a good backup: pin it when asked (keep_until), else change nothing."""
        try:
            self.pin_changed = cat.pin_existing(
                self.catalog, KIND, found["backup_id"], self.p.get("keep_until"), self.p.get("keep_reason"),
                PIN_REASON, self.check_mode, max(int(self.p.get("lock_timeout") or 0), 30),
            )  # fmt: skip
        except cat.CatalogLocked as exc:
            raise PgBackupError(str(exc)) from None
        result = self._result(found, changed=self.pin_changed, plan=plan)
        result["pins"] = self.catalog.pins(KIND, found["backup_id"])
        return result

    def _clean_partials(self):
        self._remove_orphan_sidecars()
        grace = int(self.p.get("partial_grace_s") if self.p.get("partial_grace_s") is not None else 3600)
        stale = self.catalog.clean_stale_partials(KIND, grace)
        young = self.catalog.clean_stale_partials(KIND, 0)
        return [os.path.basename(p) for p in stale + young]

    def _create(self, plan, facts, fmt, method, level, jobs, started):
        backup_id = plan["backup_id"]
        kind_dir = self.catalog.kind_dir(KIND, create=True)
        free = cat.disk_free_bytes(kind_dir)
        err = space_error(facts["db_size_bytes"], self._factor(method), free, kind_dir)
        if err:
            raise PgBackupError(err)
        self._warn_same_filesystem(kind_dir)
        created = cat.utcnow()
        partial = self.catalog.begin(KIND, backup_id)
        artifact = artifact_name(fmt, method)
        try:
            counts_before = self._row_counts()
            version = self._pg_dump_version()
            kind, cmd = self.dump_command(fmt, method, level, jobs, partial, artifact)
            self._exec(kind, cmd, "pg_dump of %s failed on %s" % (self.db, self.target.describe()))
            kind, cmd = self.globals_command(partial)
            self._exec(kind, cmd, "pg_dumpall --globals-only failed on %s" % self.target.describe())
            counts_after = self._row_counts()
            toc = self._verify_artifact(fmt, method, partial, artifact)
            files = cat.hash_tree(partial)
            size = sum(f["size"] for f in files)
            dump_size = sum(f["size"] for f in files if f["path"] == artifact or f["path"].startswith(artifact + "/"))
            if dump_size < 64:
                raise PgBackupError("the dump of %s is only %d bytes; refusing to publish it" % (self.db, dump_size))
            manifest = {
                "schema": cat.SCHEMA,
                "schema_version": cat.SCHEMA_VERSION,
                "created_at": cat.isoformat(created),
                "completed_at": cat.isoformat(cat.utcnow()),
                "period": self.period,
                "period_key": cat.period_key(self.period, self.now),
                "source": {
                    "host": self.source_host,
                    "machine": socket.gethostname(),
                    "db_name": self.db,
                    "instance": instance_of(self.p),
                    "container": self.p.get("container"),
                    "login_host": self.p.get("login_host"),
                    "login_port": self.p.get("login_port") if self.p.get("login_host") else None,
                    "server_version": facts["server_version"],
                    "server_version_num": facts["server_version_num"],
                    "db_size_bytes": facts["db_size_bytes"],
                },
                "pg_dump_version": version,
                "format": fmt,
                "compression": compression_label(method, level),
                "jobs": jobs,
                "artifact": artifact,
                "globals": "globals.sql",
                "globals_role_passwords": bool(self.p.get("globals_role_passwords")),
                "toc_entries": toc,
                "canary_tables": self.tables,
                "row_counts": counts_before,
                "files": files,
                "size_bytes": size,
                "sha256": tree_sha256(files),
                "duration_s": round(time.monotonic() - started, 3),
                "tool": {"name": "ner11.ops.pg_backup", "version": None},
                "restore": restore_commands(fmt, method, artifact, jobs, True),
            }
            if counts_after != counts_before:
                # Writes happened during the dump: the dump holds a count between the two (G23).
                manifest["row_counts_after"] = counts_after
            self.catalog.publish(KIND, backup_id, manifest, pins=self.pins)
        except BaseException:
            self._remove_orphan_sidecars()
            self.catalog.discard(KIND, backup_id)
            raise
        manifest = self.catalog.read_manifest(KIND, backup_id)
        result = self._result(manifest, changed=True, plan=plan)
        result["pins"] = self.pins
        return result

    def _verify_artifact(self, fmt, method, partial, artifact):
        path = os.path.join(partial, artifact)
        if fmt == "plain":
            test_stream(path, method, self._sh)
            return None
        kind, cmd = self.list_command(fmt, partial, artifact)
        _rc, out, _err = self._exec(kind, cmd, "pg_restore --list could not read the new dump %s" % path)
        toc = count_toc(out)
        if toc <= 0:
            raise PgBackupError("pg_restore --list found no entries in %s; the dump is unusable" % path)
        return toc

    def _warn_same_filesystem(self, kind_dir):
        for path in ("/var/lib/docker",):
            try:
                if os.stat(path).st_dev == os.stat(kind_dir).st_dev:
                    self.warnings.append(
                        "backup_dir %s is on the same filesystem as %s: a full or lost disk takes the database and its "
                        "backups together; copy backups offsite or use another filesystem" % (kind_dir, path)
                    )
            except OSError:
                pass

    def _result(self, manifest, changed, plan):
        return {
            "changed": changed,
            "backup_id": manifest["backup_id"],
            "path": self.catalog.path(KIND, manifest["backup_id"]),
            "manifest": manifest,
            "sha256": manifest.get("sha256"),
            "size_bytes": manifest.get("size_bytes"),
            "duration_s": manifest.get("duration_s") if changed else 0.0,
            "plan": plan,
            "cleaned_partials": getattr(self, "cleaned", []),
        }


def test_stream(path, method, sh=None):
    """Decompress the whole stream (gzip in Python, zstd with ``zstd -t``); raise naming the file."""
    if method == "gzip":
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1024 * 1024):
                    pass
        except (OSError, EOFError) as exc:
            raise PgBackupError("%s is not a valid gzip stream: %s" % (path, exc)) from None
    elif method == "zstd":
        if shutil.which("zstd") is None:
            raise PgBackupError("zstd is not installed on this host; install it to verify %s" % path)
        rc, out, err = sh("zstd -q -t %s" % shlex.quote(path))
        if rc != 0:
            raise PgBackupError("%s is not a valid zstd stream: %s" % (path, _last(err or out)))


def _last(text):
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def identity_table(records, now, host=None, results=()):
    """One row per source identity: newest good backup, the time its content was last confirmed, counts.

    ``records``: ``Catalog.records(kind)``; ``results``: this run's per-backup results (a backup that
    failed now is not good, even before its record is written, e.g. in check mode).
    For models/config/volume the content is confirmed current by a newer unchanged run
    (``freshness.json`` with the same content digest); a database backup counts only by its own time.
    """
    failed_now = {r["backup_id"] for r in results if r.get("status") == "failed"}
    ok_now = {r["backup_id"] for r in results if r.get("status") == "ok"}
    rows = {}
    for rec in records:
        ident = rec["identity"]
        if ident is None or (host and ident["host"] != host):
            continue
        row = rows.setdefault(
            ident["key"],
            {"identity": ident["key"], "kind": ident["kind"], "host": ident["host"], "instance": ident["instance"],
             "object": ident["object"], "good": 0, "failed": 0, "pinned": 0, "scheduled": False,
             "newest_backup_id": None, "newest_created_at": None, "confirmed_at": None},
        )  # fmt: skip
        manifest = rec["manifest"]
        state = rec["state"]
        if rec["backup_id"] in failed_now:
            state = "failed"
        elif rec["backup_id"] in ok_now and state == "failed":
            state = "good"
        if cat.effective_keep_until(rec["pins"], now):
            row["pinned"] += 1
        if manifest.get("period") != "manual" or (rec["freshness"] or {}).get("period") not in (None, "manual"):
            row["scheduled"] = True  # a scheduled run made it, or confirmed it unchanged
        if state != "good":
            row["failed"] += state == "failed"
            continue
        row["good"] += 1
        if row["newest_created_at"] is None or manifest["created_at"] >= row["newest_created_at"]:
            row["newest_backup_id"] = rec["backup_id"]
            row["newest_created_at"] = manifest["created_at"]
            fresh = rec["freshness"] or {}
            same = fresh.get("content_sha256") and fresh.get("content_sha256") == manifest.get("content_sha256")
            row["confirmed_at"] = fresh.get("confirmed_at") if same and ident["kind"] != KIND else None
    out = []
    for key in sorted(rows):
        row = rows[key]
        basis = max(t for t in (row["newest_created_at"], row["confirmed_at"]) if t) if row["good"] else None
        row["current_as_of"] = basis
        age_s = (now - cat.parse_time(basis)).total_seconds() if basis else None
        row["age_seconds"] = round(age_s, 1) if basis else None
        row["age_hours"] = round(age_s / 3600.0, 2) if basis else None
        out.append(row)
    return out


def rpo_errors(row, max_age):
    """RPO problems of one identity row (empty when within ``max_age`` hours; 0 disables)."""
    if not max_age or max_age <= 0 or not row["scheduled"]:
        return []  # an identity with only manual backups has no schedule to miss
    what = "%s backup of %s on host %s (%s)" % (row["kind"], row["object"], row["host"], row["instance"])
    if not row["good"]:
        return ["no good %s: every backup of it failed verification; run playbooks/backup.yml and inspect them" % what]
    if row["age_seconds"] > max_age * 3600.0:
        basis = "confirmed current" if row["confirmed_at"] and row["current_as_of"] == row["confirmed_at"] else "made"
        return [
            "the newest good %s (%s) was %s %.1f h ago, more than max_age_hours %s (RPO); run playbooks/backup.yml"
            % (what, row["newest_backup_id"], basis, row["age_hours"], max_age)
        ]
    return []


# -- verification (module backup_verify) -----------------------------------------------
class BackupVerifier:
    """Prove backups usable: manifest, checksums, archive readable, age (RPO), optional test restore (G65)."""

    def __init__(self, params, runner, now=None):
        self.p = params
        self.runner = runner
        self.now = now or cat.utcnow()
        self.catalog = cat.Catalog(params["backup_dir"])
        self.kind = cat.validate_kind(params.get("kind") or KIND)
        self.executed = []
        self.target = None
        if params.get("container") or params.get("login_host"):
            self.target = PgTarget(params, self._run_logged)
        self.image = None
        self.actions = []

    def _run_logged(self, cmd, **kwargs):
        self.executed.append(display(cmd))
        return self.runner(cmd, **kwargs)

    def _sh(self, line):
        self.executed.append(line)
        return self.runner(["/bin/bash", "-o", "pipefail", "-c", line])

    def _image(self):
        if self.image is None and self.p.get("container"):
            docker = self.p.get("docker_cli") or "docker"
            rc, out, err = self._run_logged([docker, "inspect", "--format", "{{.State.Status}}|{{.Image}}", self.p["container"]])
            if rc != 0:
                raise PgBackupError("container %s not found (%s); check the container option" % (self.p["container"], _last(err)))
            status, _sep, self.image = out.strip().partition("|")
            if status != "running":
                raise PgBackupError(
                    "container %s is %s; start it to read or test-restore backups" % (self.p["container"], status)
                )
        return self.image

    def _readable(self, manifest, root):
        """Errors reading the archive with the stock tools (empty when readable)."""
        fmt = manifest.get("format")
        artifact = os.path.join(root, manifest.get("artifact") or "")
        if fmt == "plain":
            method = (manifest.get("compression") or "none").partition(":")[0]
            try:
                test_stream(artifact, method, self._sh)
            except PgBackupError as exc:
                return [str(exc)]
            return []
        if fmt not in ("custom", "directory"):
            return []
        if not self.target:
            return []  # no server tools named: checksums only (reported in `checks`)
        docker = self.p.get("docker_cli") or "docker"
        if self.p.get("login_host"):
            rc, out, err = self._run_logged(["pg_restore", "--list", artifact])
        elif fmt == "custom":
            rc, out, err = self._sh(
                "%s < %s"
                % (shlex.join([docker, "exec", "-i", self.p["container"], "pg_restore", "--list"]), shlex.quote(artifact))
            )
        else:
            rc, out, err = self._run_logged(
                [docker, "run", "--rm", "--network", "none", "--user", "%d:%d" % (os.getuid(), os.getgid()),
                 "-v", "%s:%s:ro" % (root, root), "--entrypoint", "pg_restore", self._image(), "--list", artifact]
            )  # fmt: skip
        if rc != 0:
            return ["%s: pg_restore --list failed: %s" % (manifest.get("artifact"), _last(err or out))]
        toc = count_toc(out)
        if manifest.get("toc_entries") and toc != manifest["toc_entries"]:
            return ["%s: %d TOC entries, manifest says %d" % (manifest.get("artifact"), toc, manifest["toc_entries"])]
        return []

    def check_one(self, backup_id, manifest=None, load_error=None):
        entry = {"backup_id": backup_id, "status": "ok", "errors": [], "checks": []}
        if manifest is None and load_error is None:
            try:
                manifest = self.catalog.read_manifest(self.kind, backup_id)
            except cat.CatalogError as exc:
                load_error = str(exc)
        if load_error:
            entry.update(status="failed", errors=[load_error])
            return entry
        entry["created_at"] = manifest["created_at"]
        entry["age_hours"] = round((self.now - cat.parse_time(manifest["created_at"])).total_seconds() / 3600.0, 2)
        if manifest.get("status") != "verified":
            entry["errors"].append("status is %r, not verified" % manifest.get("status"))
        entry["checks"].append("manifest")
        errors = self.catalog.verify(self.kind, backup_id)
        entry["checks"].append("sha256")
        entry["errors"] += errors
        if not errors and self.kind == KIND:
            readable = self._readable(manifest, self.catalog.path(self.kind, backup_id))
            if self.target or manifest.get("format") == "plain":
                entry["checks"].append("archive")
            entry["errors"] += readable
        if entry["errors"]:
            entry["status"] = "failed"
        return entry

    def run(self):
        try:
            return self._run()
        finally:
            if self.target:
                self.target.close()

    def _run(self):
        backup_id = self.p.get("backup_id")
        host = self.p.get("source_host")
        if backup_id:
            cat.validate_backup_id(backup_id)
            if not os.path.isdir(self.catalog.path(self.kind, backup_id)):
                raise PgBackupError(
                    "backup %s/%s not found in %s; list the catalog or use all=true" % (self.kind, backup_id, self.catalog.root)
                )
            results = [self.check_one(backup_id)]
        else:
            results = [
                self.check_one(bid, m, e)
                for bid, m, e in self.catalog.entries(self.kind)
                if not host or m is None or cat.source_identity(m)["host"] == host
            ]
        if self.p.get("record", True):
            self._record(results)
        errors = []
        match = {"host": host} if host else {}
        newest = self.catalog.latest(self.kind, **match)
        max_age = self.p.get("max_age_hours")
        newest_age = None
        if newest is not None:
            newest_age = round((self.now - cat.parse_time(newest["created_at"])).total_seconds() / 3600.0, 2)
        identities = identity_table(self.catalog.records(self.kind), self.now, host, results)
        if not identities or not any(i["good"] for i in identities):
            errors.append("no good %s backup in %s; run playbooks/backup.yml" % (self.kind, self.catalog.root))
        for ident in identities:
            late = rpo_errors(ident, max_age)
            ident["rpo"] = "failed" if late else ("ok" if ident["scheduled"] and max_age else "not judged")
            errors += late
        for entry in results:
            for err in entry["errors"]:
                errors.append("%s: %s" % (entry["backup_id"], err))
        result = {
            "changed": False,
            "backups": results,
            "identities": identities,
            "newest_backup_id": newest["backup_id"] if newest else None,
            "newest_age_hours": newest_age,
            "errors": errors,
        }
        if self.p.get("test_restore") and newest is not None and self.kind == KIND:
            result["test_restore"] = self.test_restore(newest)
            if result["test_restore"]["errors"]:
                errors += ["test restore of %s: %s" % (newest["backup_id"], e) for e in result["test_restore"]["errors"]]
                if self.p.get("record", True):
                    self.catalog.record_verification(
                        self.kind, newest["backup_id"], "failed", ["manifest", "sha256", "test_restore"],
                        result["test_restore"]["errors"], self.now,
                    )  # fmt: skip
        result["status"] = "failed" if errors else "ok"
        return result

    def _record(self, results):
        """Keep each result beside its backup (verify.json): latest, prune and period idempotence read it."""
        for entry in results:
            if entry.get("created_at") is None:
                continue  # no readable manifest: nothing to record beside
            try:
                self.catalog.record_verification(
                    self.kind, entry["backup_id"], entry["status"], entry["checks"], entry["errors"], self.now
                )
            except (cat.CatalogError, OSError) as exc:
                entry["errors"].append("could not record the result beside the backup: %s; check the catalog's permissions" % exc)
                entry["status"] = "failed"

    # -- test restore into a scratch database ----------------------------------------------
    def test_restore(self, manifest):
        started = time.monotonic()
        scratch = self.p.get("scratch_db") or "ner11_test_restore"
        out = {"backup_id": manifest["backup_id"], "scratch_db": scratch, "errors": [], "actions": []}
        if not self.target:
            raise PgBackupError("test_restore needs the server: set container (or login_host) to restore into %s" % scratch)
        if not _DB_RE.match(scratch):
            raise PgBackupError("scratch_db %r is not a plain database name" % (scratch,))
        if scratch == (manifest.get("source") or {}).get("db_name"):
            raise PgBackupError(
                "scratch_db %s is the backed-up database itself; choose another name (default ner11_test_restore)" % scratch
            )
        # Scratch databases are dropped WITH (FORCE): never a system database, and only one
        # this collection created (marked with a COMMENT), issue 9.
        refusal = pgrestore.scratch_refusal(scratch, (manifest.get("source") or {}).get("db_name"))
        if refusal:
            raise PgBackupError(refusal)
        existing = self.target.query(pgrestore.marked_sql(scratch))
        if existing and not (existing[0] + [""])[1].startswith(pgrestore.MARK):
            raise PgBackupError(
                "database %s exists and was not created by ner11.ops; choose another scratch_db (default "
                "ner11_test_restore) or drop it yourself" % scratch
            )
        if self.p.get("container"):
            self._image()
        drop = "DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_ident(scratch)
        try:
            self.target.query(drop)
            self.target.query("CREATE DATABASE %s TEMPLATE template0;" % quote_ident(scratch))
            self.target.query("COMMENT ON DATABASE %s IS %s;" % (quote_ident(scratch), quote_literal(pgrestore.SCRATCH_COMMENT)))
            out["actions"] += ["dropped %s if it existed" % scratch, "created %s" % scratch]
            self._restore_into(manifest, scratch)
            out["actions"].append("restored %s into %s" % (manifest["backup_id"], scratch))
            tables = manifest.get("canary_tables") or list(manifest.get("row_counts") or {})
            actual = parse_row_counts(self.target.query(row_count_sql(tables), db=scratch))  # G23: explicit -d
            out["row_counts"] = actual
            out["errors"] += counts_match(manifest.get("row_counts"), manifest.get("row_counts_after"), actual)
        except (PgBackupError, PgExecError) as exc:
            out["errors"].append(str(exc))
        finally:
            try:
                self.target.query(drop)
                out["actions"].append("dropped %s" % scratch)
            except PgExecError as exc:
                out["errors"].append("could not drop %s afterwards: %s; drop it by hand" % (scratch, exc))
        out["duration_s"] = round(time.monotonic() - started, 3)
        return out

    def _restore_into(self, manifest, scratch):
        root = self.catalog.path(KIND, manifest["backup_id"])
        artifact = os.path.join(root, manifest["artifact"])
        fmt = manifest["format"]
        method = (manifest.get("compression") or "none").partition(":")[0]
        user = self.p.get("login_user") or "postgres"
        docker = self.p.get("docker_cli") or "docker"
        jobs = str(max(int(manifest.get("jobs") or 1), 1))
        if self.p.get("login_host"):
            if fmt in ("custom", "directory"):
                cmd = self.target.argv("pg_restore", ["--exit-on-error", "-j", jobs, "-d", scratch, artifact])
                rc, o, e = self._run_logged(cmd, environ_update=self.target.environ())
            else:
                psql = shlex.join(
                    self.target.argv("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", scratch])
                )
                src = shlex.quote(artifact) if method == "none" else "<(%s -dc %s)" % (method, shlex.quote(artifact))
                self.executed.append("%s -f %s" % (psql, src))
                rc, o, e = self.runner(
                    ["/bin/bash", "-o", "pipefail", "-c", "%s -f %s" % (psql, src)], environ_update=self.target.environ()
                )
        elif fmt == "custom":
            rc, o, e = self._sh(
                "%s < %s"
                % (
                    shlex.join(self.target.argv("pg_restore", ["--exit-on-error", "-d", scratch], stdin=True)),
                    shlex.quote(artifact),
                )
            )
        elif fmt == "plain":
            inner = "%spsql -U %s -X -q -v ON_ERROR_STOP=1 --single-transaction -d %s" % (
                "" if method == "none" else "%s -dc | " % method,
                shlex.quote(user),
                shlex.quote(scratch),
            )
            cmd = self.target.argv("bash", ["-o", "pipefail", "-c", inner], stdin=True)
            rc, o, e = self._sh("%s < %s" % (shlex.join(cmd), shlex.quote(artifact)))
        else:
            if not self.p.get("login_password"):
                raise PgBackupError(
                    "a directory-format test restore in container mode runs pg_restore -j in a sidecar over TCP and "
                    "needs login_password (ner11_db_password)"
                )
            passfile = self.target._passfile()
            cmd = [
                docker, "run", "--rm", "--network", "container:%s" % self.p["container"],
                "--user", "%d:%d" % (os.getuid(), os.getgid()), "-v", "%s:%s:ro" % (root, root),
                "-v", "%s:/run/ner11/pgpass:ro" % passfile, "-e", "PGPASSFILE=/run/ner11/pgpass",
                "-e", "PGAPPNAME=%s" % APP_NAME, "--entrypoint", "pg_restore", self.image,
                "-h", "127.0.0.1", "-U", user, "--exit-on-error", "-j", jobs, "-d", scratch, artifact,
            ]  # fmt: skip
            rc, o, e = self._run_logged(cmd)
        if rc != 0:
            raise PgBackupError("restoring %s into %s failed (rc=%s): %s" % (manifest["backup_id"], scratch, rc, _last(e or o)))

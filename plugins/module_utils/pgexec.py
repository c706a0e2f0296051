# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run PostgreSQL client tools against a server, safely.

Two ways to reach the server (doc fragment ``ner11.ops.postgres``):

* ``container``: ``docker exec -u postgres <container> <tool> ...`` — client
  version equals server version, and the container's local socket auth is used,
  so no password exists anywhere (G3).
* ``login_host``: the host's client tools over TCP; the password goes to a 0600
  passfile in a private temp dir named by ``PGPASSFILE`` — never on a command
  line or in an environment value (G3, G49).

Plain Python: the caller passes a ``runner`` with the signature of
``AnsibleModule.run_command`` so this is unit-testable without Ansible.
"""

from __future__ import annotations

# ruff: noqa: S608 -- every identifier goes through quote_name and every value through quote_literal.

import os
import shlex
import shutil
import tempfile

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import quote_literal, quote_name, quote_table
from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import DockerCli, cli_path
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandRunner, last_line

APP_NAME = "ner11.ops"
CLIENT_TOOLS = ("psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_isready", "vacuumdb", "reindexdb")
# psql, always: no psqlrc, quiet, stop at the first error.
PSQL_FLAGS = ("-X", "-q", "-v", "ON_ERROR_STOP=1")
FIELD_SEP = "\x1f"
SIDECAR_PASSFILE = "/run/ner11/pgpass"
# A sidecar shares the DB container's network namespace: the server is on its loopback.
SIDECAR_HOST = "127.0.0.1"


def psql_args(db, single_transaction=False, command=None, rows=False):
    """psql's arguments on ``db``: ``PSQL_FLAGS``, SQL from ``command`` (``-c``) or stdin (``-f -``).

    ``rows``: unaligned tuples separated by FIELD_SEP (for ``PgTarget.query``).
    """
    args = list(PSQL_FLAGS)
    if rows:
        args += ["-A", "-t", "-F", FIELD_SEP]
    if single_transaction:
        args.append("--single-transaction")
    args += ["-d", db]
    return args + (["-c", command] if command is not None else ["-f", "-"])


def postgres_argument_spec():
    """The common options (see the ``ner11.ops.postgres`` doc fragment)."""
    return dict(
        container=dict(type="str"),
        container_user=dict(type="str", default="postgres"),
        docker_cli=dict(type="str", default="docker"),
        login_host=dict(type="str"),
        login_port=dict(type="int", default=5432),
        login_user=dict(type="str", default="postgres"),
        login_password=dict(type="str", no_log=True),
        connect_timeout=dict(type="int", default=10),
    )


POSTGRES_MUTUALLY_EXCLUSIVE = [("container", "login_host")]
POSTGRES_REQUIRED_ONE_OF = [("container", "login_host")]


def postgres_module_kwargs(options):
    """``AnsibleModule`` keyword arguments: the common connection options plus ``options``, check mode supported."""
    spec = postgres_argument_spec()
    spec.update(options)
    return dict(
        argument_spec=spec,
        mutually_exclusive=POSTGRES_MUTUALLY_EXCLUSIVE,
        required_one_of=POSTGRES_REQUIRED_ONE_OF,
        supports_check_mode=True,
    )


def run_on_target(module, run, errors):
    """``run(target, params, check_mode)`` for a module built with ``postgres_module_kwargs``.

    ``params`` are the module's own options (without the connection ones). The errors in
    ``errors`` (the core's own exception types) and client-tool failures become ``fail_json``;
    a client-tool failure gets the fix its error line points to (``db_error_hint``). An error
    raised after the run changed something carries ``changed`` (and ``partial``: what it changed).
    """
    params = {k: v for k, v in module.params.items() if k not in postgres_argument_spec()}
    target_name = module.params.get("container") or module.params.get("login_host")
    try:
        with PgTarget(module.params, module.run_command) as target:
            return run(target, params, module.check_mode)
    except errors as exc:
        module.fail_json(msg=str(exc), changed=bool(getattr(exc, "changed", False)), **getattr(exc, "partial", {}))
    except PgExecError as exc:
        fix = db_error_hint(str(exc), target_name, params.get("db_name") or module.params.get("login_db") or "")
        module.fail_json(msg="%s. %s" % (exc, fix), changed=bool(getattr(exc, "changed", False)), **getattr(exc, "partial", {}))
    return None


def db_error_hint(text, target, db_name):
    """A fix for a psql/docker exec failure, from its last error line."""
    low = (text or "").lower()
    if "no such container" in low:
        return "the PostgreSQL container does not exist: deploy the stack (playbooks/deploy.yml)"
    if "is paused" in low:
        return "the PostgreSQL container is paused: docker unpause it"
    if "is not running" in low or "is restarting" in low:
        return "the PostgreSQL container is not running: start postgres (playbooks/service.yml)"
    if "password authentication failed" in low or "no password supplied" in low:
        return "authentication failed: check login_user/login_password"
    if "database" in low and "does not exist" in low:
        return "database %s does not exist: restore it (playbooks/restore.yml)" % db_name
    if "too many clients" in low or "remaining connection slots" in low:
        return "connection slots exhausted: terminate idle sessions (pg_sessions) or raise max_connections"
    if "starting up" in low or "shutting down" in low or "recovery" in low:
        return (
            "PostgreSQL is starting or stopping: wait for it to accept connections, then run again "
            "(ner_health waits with wait_for=pass)"
        )
    if "timed out" in low or "timeout" in low or "no answer" in low:
        return "PostgreSQL (or docker exec) did not answer in time: check the host load and the PostgreSQL logs"
    if "connection refused" in low or "could not connect" in low or "no such file" in low:
        return "PostgreSQL is not accepting connections on %s: start it and read its logs" % target
    return (
        "read the PostgreSQL logs (docker logs of its container); ner11.ops.ner_health or playbooks/incident_db.yml "
        "diagnose the database"
    )


class PgExecError(Exception):
    """A client tool failed; the message names the cause and the fix."""


def _escape_passfile(value):
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


def create_database_statements(name, comment=None):
    """CREATE DATABASE ``name`` from template0 and, with ``comment``, its COMMENT (the mark): one statement each."""
    statements = ["CREATE DATABASE %s TEMPLATE template0;" % quote_name(name)]
    if comment is not None:
        statements.append("COMMENT ON DATABASE %s IS %s;" % (quote_name(name), quote_literal(comment)))
    return statements


class PgTarget:
    """Builds and runs client-tool commands for one server."""

    def __init__(self, params, runner):
        self.container = params.get("container")
        self.container_user = params.get("container_user") or "postgres"
        self.docker = cli_path(params)
        self.host = params.get("login_host")
        self.port = int(params.get("login_port") or 5432)
        self.user = params.get("login_user") or "postgres"
        self.timeout = int(params.get("connect_timeout") or 10)
        self._password = params.get("login_password")
        # One CommandRunner records every command (executed_commands); the password is never shown.
        self.runner = CommandRunner.wrap(runner)
        self.runner.add_secret(self._password)
        self.docker_cli = DockerCli(self.runner, self.docker)
        self._tmpdir = None
        if not self.container and not self.host:
            raise PgExecError("set either container (the PostgreSQL container name) or login_host")

    @property
    def has_password(self):
        """True when a password was given (a sidecar can then log in over TCP with the passfile)."""
        return bool(self._password)

    # -- context: the passfile lives only while the target is open ------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _passfile(self):
        if not self._password:
            return None
        if not self._tmpdir:
            self._tmpdir = tempfile.mkdtemp(prefix="ner11-pg-")
            os.chmod(self._tmpdir, 0o700)
            path = os.path.join(self._tmpdir, "pgpass")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("*:*:*:%s:%s\n" % (_escape_passfile(self.user), _escape_passfile(self._password)))
        return os.path.join(self._tmpdir, "pgpass")

    # -- commands --------------------------------------------------------------
    def describe(self):
        """A one-line, secret-free description for messages and returns."""
        if self.container:
            return "container %s (as %s)" % (self.container, self.container_user)
        return "%s@%s:%d" % (self.user, self.host, self.port)

    def argv(self, tool, args, stdin=False, env=None):
        """argv running ``tool`` with ``args`` (connection options added for host mode)."""
        env = dict(env or {})
        env.setdefault("PGAPPNAME", APP_NAME)
        env.setdefault("PGCONNECT_TIMEOUT", str(self.timeout))
        if self.container:
            login = ["-U", self.user] if tool in CLIENT_TOOLS else []
            return self.docker_cli.exec_argv(
                self.container, [tool] + login + list(args), user=self.container_user, env=env, interactive=stdin
            )
        return [tool, "-h", self.host, "-p", str(self.port), "-U", self.user] + list(args)

    def environ(self, env=None):
        """Environment for run_command in host mode (PGPASSFILE is a path, not a secret)."""
        if self.container:
            return {}
        out = {"PGAPPNAME": APP_NAME, "PGCONNECT_TIMEOUT": str(self.timeout)}
        out.update(env or {})
        passfile = self._passfile()
        if passfile:
            out["PGPASSFILE"] = passfile
        return out

    def run(self, tool, args, data=None, env=None, check=True, **kwargs):
        """Run a tool; returns (rc, stdout, stderr). Raises PgExecError when check and rc != 0."""
        cmd = self.argv(tool, args, stdin=data is not None, env=env)
        rc, out, err = self.runner.run(cmd, data=data, env=self.environ(env), check=False, **kwargs)
        if check and rc != 0:
            raise PgExecError("%s failed on %s (rc=%s): %s" % (tool, self.describe(), rc, _last_line(err or out)))
        return rc, out, err

    def query(self, sql, db="postgres", check=True):
        """Run SQL with psql (ON_ERROR_STOP, no psqlrc); return rows as lists of strings.

        Empty output lines are dropped: never let a one-column value that may be empty decide
        anything (select a non-empty column first).
        """
        rc, out, err = self.run("psql", psql_args(db, rows=True), data=sql, check=check)
        if rc != 0:
            return None
        return [line.split(FIELD_SEP) for line in out.splitlines() if line != ""]

    def script(self, sql, db, single_transaction=False, check=True):
        """Run a SQL script (on stdin) in ``db``; returns (rc, stdout, stderr)."""
        return self.run("psql", psql_args(db, single_transaction=single_transaction), data=sql, check=check)

    def execute(self, statement, db="postgres", check=True):
        """Run one statement with ``psql -c`` (for those that cannot run in a transaction block)."""
        return self.run("psql", psql_args(db, command=statement), check=check)

    def inner_argv(self, tool, args):
        """``tool -U <user> args``: the client command inside a shell line that ``argv("bash", ...)`` wraps."""
        return [tool, "-U", self.user] + list(args)

    def psql_line(self, db, single_transaction=False):
        """A shell-quoted psql command reading SQL on stdin, for a pipeline (``... | <line>``)."""
        return shlex.join(self.argv("psql", psql_args(db, single_transaction=single_transaction), stdin=True))

    # -- the server's own tools from its image, beside the container ------------------
    def tool_version(self):
        """``pg_dump --version`` as the server's container (or this host) has it."""
        if self.container:
            cmd = self.docker_cli.exec_argv(self.container, ["pg_dump", "--version"])
        else:
            cmd = ["pg_dump", "--version"]
        _rc, out, _err = self.runner.run(cmd, check=False)
        return out.strip()

    def container_state(self):
        """``(status, image id)`` of the server's container, or ``(None, why)`` when it cannot be inspected."""
        rc, out, err = self.docker_cli.call(["inspect", "--format", "{{.State.Status}}|{{.Image}}", self.container], check=False)
        if rc != 0:
            return None, last_line(err)
        status, _sep, image = out.strip().partition("|")
        return status, image

    def sidecar_conn_args(self, port=5432):
        """``-h 127.0.0.1 -p <port> -U <user>``: a sidecar reaches the server on the DB container's loopback."""
        return ["-h", SIDECAR_HOST, "-p", str(port), "-U", self.user]

    def sidecar_env(self, port=None):
        """A sidecar's environment: the passfile's path (not a secret); with ``port`` the connection too.

        ``PGHOST``/``PGPORT``/``PGUSER`` let every client tool of a sidecar script connect the
        same way ``sidecar_conn_args`` does.
        """
        env = {"PGPASSFILE": SIDECAR_PASSFILE, "PGAPPNAME": APP_NAME, "PGCONNECT_TIMEOUT": str(self.timeout)}
        if port is not None:
            env.update({"PGHOST": SIDECAR_HOST, "PGPORT": str(port), "PGUSER": self.user})
        return env

    def _sidecar(self, image, argv, entrypoint, volumes, name, labels, env):
        """The one ``docker run`` of a sidecar: this uid, the DB container's network, the passfile mounted read-only."""
        return self.docker_cli.run_argv(
            image,
            list(argv),
            entrypoint=entrypoint,
            volumes=list(volumes) + ["%s:%s:ro" % (self._passfile(), SIDECAR_PASSFILE)],
            labels=labels,
            user="%d:%d" % (os.getuid(), os.getgid()),
            network="container:%s" % self.container,
            env=env,
            name=name,
        )

    def sidecar_argv(self, tool, args, image, volumes=(), name=None, labels=(), port=5432):
        """``docker run`` of ``tool`` from the server's image in the DB container's network namespace.

        Runs as this uid (files it writes are ours) and reads the password from the 0600
        passfile mounted read-only, so no secret is on a command line or in an environment value.
        """
        return self._sidecar(image, self.sidecar_conn_args(port) + list(args), tool, volumes, name, labels, self.sidecar_env())

    def sidecar_script_argv(self, script, args, image, volumes=(), name=None, labels=(), port=5432, script_name="ner11-sidecar"):
        """``docker run ... --entrypoint sh <image> -c <script> <script_name> <args...>``: several tools, ONE sidecar.

        Same container as ``sidecar_argv`` (uid, network, read-only passfile). ``script`` is a
        fixed text: every value reaches it as a positional parameter (``$1`` ...), never pasted
        into it; its tools connect through ``PGHOST``/``PGPORT``/``PGUSER`` and ``PGPASSFILE``
        (``sidecar_env``), so no password is on a command line here either.
        """
        argv = ["-c", script, script_name] + [str(a) for a in args]
        return self._sidecar(image, argv, "sh", volumes, name, labels, self.sidecar_env(port))

    def list_dump_command(self, fmt, path, image, labels=()):
        """``(kind, cmd)`` listing a custom/directory dump with ``pg_restore --list`` (no server needed).

        ``argv`` for a list, ``shell`` for a line with a redirection. A directory dump is read by
        a network-less container of the server's image with the dump's directory mounted read-only.
        """
        if not self.container:
            return "argv", self.argv("pg_restore", ["--list", path])
        if fmt == "custom":
            return "shell", "%s < %s" % (shlex.join(self.argv("pg_restore", ["--list"], stdin=True)), shlex.quote(path))
        root = os.path.dirname(path.rstrip("/"))
        return "argv", self.docker_cli.run_argv(
            image,
            ["--list", path],
            entrypoint="pg_restore",
            volumes=["%s:%s:ro" % (root, root)],
            labels=labels,
            user="%d:%d" % (os.getuid(), os.getgid()),
            network="none",
        )

    # -- databases: created and dropped here only -------------------------------------
    def create_database(self, name, comment=None):
        """CREATE DATABASE ``name`` from template0, then its COMMENT (marks: only marked databases are dropped)."""
        for statement in create_database_statements(name, comment):
            self.execute(statement)

    def drop_database(self, name):
        """DROP DATABASE IF EXISTS ... WITH (FORCE); None when done, else the error (the caller decides)."""
        rc, out, err = self.execute("DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_name(name), check=False)
        return None if rc == 0 else last_line(err or out)

    def database_comment(self, name):
        """The COMMENT of database ``name`` ('' when it has none), or None when it does not exist."""
        rows = self.query(
            "SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = %s;"
            % quote_literal(name)
        )
        return (rows[0] + [""])[1] if rows else None

    def scalar(self, sql, db="postgres"):
        rows = self.query(sql, db)
        return rows[0][0] if rows and rows[0] else None

    def canary_counts(self, tables, db):
        """``{table: rows}`` of the canary tables in ``db`` (None for a missing table)."""
        if not tables:
            return {}
        return parse_canary_counts(self.query(canary_count_sql(tables) + ";", db))


# -- canary row counts: the one way to count them ------------------------------------
# A missing table must not fail the whole query, so each count runs through query_to_xml.
_CANARY_COUNT_SQL = (
    "SELECT %s, CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE "
    "(xpath('/row/c/text()', query_to_xml(%s, false, true, '')))[1]::text::bigint END"
)


def canary_count_sql(tables):
    """One SELECT (no ``;``): a row ``(table, count)`` per table, the count NULL for a missing table.

    Tables follow ``identifiers``' ``[schema.]table`` rule (``public.t`` and ``t``; an
    unqualified name is looked up on the search_path). Embed it as a sub-select to
    tag or reshape the rows, e.g. ``SELECT 'canary', t, c FROM (<sql>) x(t, c)``.
    """
    parts = []
    for table in tables:  # every name quoted by identifiers.quote_table, every value by quote_literal
        ident = quote_table(table, what="canary table")
        parts.append(
            _CANARY_COUNT_SQL % (quote_literal(table), quote_literal(ident), quote_literal("SELECT count(*) AS c FROM " + ident))  # noqa: S608
        )
    return " UNION ALL ".join(parts) if parts else "SELECT NULL::text, NULL::bigint WHERE false"


def parse_canary_counts(rows):
    """``{table: int or None}`` from the rows of ``canary_count_sql``."""
    out = {}
    for row in rows or []:
        out[row[0]] = int(row[1]) if len(row) > 1 and row[1] not in ("", None) else None
    return out


# last_line moved to runner.py (the one command runner); re-exported here until every caller imports it from there.
_last_line = last_line


# The quoting rule lives in identifiers.py; these names stay importable from here.
quote_ident = quote_name
__all__ = ["PgExecError", "PgTarget", "last_line", "quote_ident", "quote_literal"]

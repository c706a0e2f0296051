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
    value. ONE sidecar runs ``pg_dumpall --globals-only``, ``pg_dump -Fd`` and
    ``pg_restore --list`` (``SIDECAR_SCRIPT``, exit codes 41/42/43 name the
    step that failed); the listing's "Dumped by pg_dump version" line is the
    manifest's ``pg_dump_version``. On a host target (``login_host``) the
    host's pg_dump writes the directory itself.
  - ``custom`` / ``plain`` stream from ``docker exec`` (local socket, no
    password at all) with stdout redirected to the file.
* Before publishing: ``pg_restore --list`` TOC count (custom/directory) or a
  full decompression test (compressed plain), sha256 of every file, size.
* Then ``Catalog.publish`` renames the partial into place (G58), checking the
  names and sizes against the list just hashed (``hashed_now``: the bytes are
  read once here; ``backup_verify`` re-hashes them). Any failure
  discards the partial; a killed run leaves only a partial that the next run
  removes under the lock.

Plain Python: no Ansible import. Commands run through a ``runner`` with the
signature of ``AnsibleModule.run_command``.

The dump formats are in ``pgbackup_formats``; verification (module ``backup_verify``)
is in ``pgbackup_verify``.
"""

from __future__ import annotations

import os
import shlex
import socket
import threading
import time

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import IdentifierError, check_name, check_table
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup_formats import (
    DEFAULT_CANARY_TABLES,
    DEFAULT_CLIENT_IMAGE,
    FORMATS,
    KIND,
    PgBackupError,
    artifact_name,
    choose_format,
    compression_label,
    count_toc,
    display,
    parse_compression,
    required_space,
    restore_commands,
    space_error,
    test_stream,
    tree_sha256,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup_verify import BackupVerifier
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import (
    PgExecError,
    PgTarget,
    quote_literal,
)
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandRunner, concurrently, last_line

SIDECAR_LABEL = "io.ner11.pg_backup.catalog"
PIN_REASON = "pinned by pg_backup keep_until"

# The directory dump in container mode runs its three client tools in ONE sidecar (issue 16: each
# further ``docker run`` costs a container start). A fixed script: the values arrive as positional
# parameters ($1 globals file, $2 dump directory, $3 role passwords yes/no, $4 the signal directory
# (the partial), then pg_dump's arguments), the connection through PGHOST/PGPORT/PGUSER and the
# password through the read-only passfile (PgTarget.sidecar_env). Each step has its own exit code,
# and prints a time mark on stderr.
# The canary row counts "before" run in the module while this container starts (issue 16); pg_dump
# (its snapshot) starts only once they are taken: the module creates $4/.ner11-counted after them,
# or $4/.ner11-abort when they failed (exit 44, the module reports the counts' own error). After
# pg_dump the script creates $4/.ner11-dumped: the counts "after" start then, while the listing runs
# and the container exits. The module removes these files before it hashes the partial.
SIDECAR_SCRIPT = """set -u
globals=$1 dump=$2 roles=$3 signals=$4
shift 4
mark() { echo "ner11-step $1 $(date +%s.%N 2>/dev/null)" >&2; }
mark start
if [ "$roles" = yes ]; then
  pg_dumpall --globals-only -f "$globals" || exit 41
else
  pg_dumpall --globals-only --no-role-passwords -f "$globals" || exit 41
fi
mark globals
waited=0
until [ -e "$signals/.ner11-counted" ]; do
  if [ -e "$signals/.ner11-abort" ] || [ "$waited" -ge 360000 ]; then exit 44; fi
  sleep 0.01 2>/dev/null || sleep 1
  waited=$((waited + 1))
done
mark counted
pg_dump "$@" || exit 42
: > "$signals/.ner11-dumped"
mark dump
pg_restore --list "$dump" || exit 43
mark list
"""  # 360000 waits of 10 ms: the counts before may take up to about an hour
SIDECAR_SCRIPT_NAME = "ner11-backup"
STEP_MARK = "ner11-step "
# The files through which the module and the sidecar script signal each other (see SIDECAR_SCRIPT).
SIGNAL_COUNTED = ".ner11-counted"
SIGNAL_ABORT = ".ner11-abort"
SIGNAL_DUMPED = ".ner11-dumped"
SIGNALS = (SIGNAL_COUNTED, SIGNAL_ABORT, SIGNAL_DUMPED)
SIGNAL_POLL_S = 0.01
# (mark, step name) in the order the script prints them; the first step runs from ``docker run`` to "start".
SIDECAR_STEPS = (
    ("start", "sidecar start"),
    ("globals", "pg_dumpall --globals-only"),
    ("counted", "wait for the canary row counts before"),
    ("dump", "pg_dump"),
    ("list", "pg_restore --list"),
)
SIDECAR_ONE_STEP = "one sidecar: pg_dumpall --globals-only, pg_dump, pg_restore --list"
SIDECAR_EXIT = {41: "globals", 42: "dump", 43: "list", 44: "counts"}


def split_marks(stderr):
    """``({mark: epoch seconds}, stderr without the mark lines)`` of the backup sidecar."""
    marks, rest = {}, []
    for line in (stderr or "").splitlines():
        if line.startswith(STEP_MARK):
            name, _sep, value = line[len(STEP_MARK) :].partition(" ")
            try:
                marks[name] = float(value)
            except ValueError:
                pass  # no usable clock in the image: the steps are reported as one
            continue
        rest.append(line)
    return marks, "\n".join(rest)


def sidecar_steps(started, marks, ended):
    """``[(step, seconds)]`` from the sidecar's marks (wall clock, same kernel), or one step when a mark is missing.

    ``started``/``ended``: the wall time around ``docker run``; the container's start is the
    first step, its exit and removal the last.
    """
    names = [mark for mark, _step in SIDECAR_STEPS]
    if any(mark not in marks for mark in names):
        return [(SIDECAR_ONE_STEP, max(ended - started, 0.0))]
    out, previous = [], started
    for mark, step in SIDECAR_STEPS:
        out.append((step, max(marks[mark] - previous, 0.0)))
        previous = max(marks[mark], previous)
    out.append(("sidecar exit", max(ended - previous, 0.0)))
    return out


def sidecar_failure(rc, stderr, db, where, dump_path, image):
    """The message for a failed backup sidecar: which step failed (by its exit code) and what to do."""
    _marks, rest = split_marks(stderr)
    why = last_line(rest) or "no error output"
    step = SIDECAR_EXIT.get(rc)
    if step == "globals":
        return (
            "pg_dumpall --globals-only failed on %s (step 1 of 3 in the backup sidecar, rc=41): %s; the login user "
            "must be able to read the roles (login_user, e.g. postgres), check it with ner11.ops.ner_health; "
            "nothing was published" % (where, why)
        )
    if step == "dump":
        return (
            "pg_dump of %s failed on %s (step 2 of 3 in the backup sidecar, rc=42): %s; check that the server is up "
            "(ner11.ops.ner_health), that login_password is right and that backup_dir has room, then run again; "
            "nothing was published" % (db, where, why)
        )
    if step == "counts":
        return (
            "the backup sidecar gave up waiting for the canary row counts before pg_dump on %s (rc=44): %s; check "
            "that the canary tables can be counted (canary_tables; ner11.ops.ner_health), then run again; nothing "
            "was published" % (where, why)
        )
    if step == "list":
        return (
            "pg_restore --list could not read the new dump %s (step 3 of 3 in the backup sidecar, rc=43): %s; the "
            "dump is unusable and was discarded: run again, and check the disk of backup_dir if it repeats" % (dump_path, why)
        )
    return (
        "pg_dump of %s failed on %s: the backup sidecar (docker run of %s) stopped with rc=%s before its steps "
        "finished: %s; check that docker can run that image (docker run --rm --entrypoint sh <image> -c true) "
        "and that the database container is running, then run again; nothing was published" % (db, where, image, rc, why)
    )


def dumped_by(listing):
    """``pg_dump (PostgreSQL) <version>`` from the ``Dumped by pg_dump version:`` line of a TOC listing."""
    for line in (listing or "").splitlines():
        if "Dumped by pg_dump version:" in line:
            return "pg_dump (PostgreSQL) " + line.split(":", 1)[1].strip()
    return None


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
    try:
        check_name(params.get("db_name") or "", "db_name")
        for table in params.get("canary_tables") or []:
            check_table(table, "canary table")
    except IdentifierError as exc:
        raise PgBackupError(str(exc)) from None
    factor = params.get("space_factor")
    if factor is not None and factor < 0:
        raise PgBackupError("space_factor must be >= 0, got %r" % (factor,))
    if (params.get("lock_timeout") or 0) < 0 or (params.get("partial_grace_s") or 0) < 0:
        raise PgBackupError("lock_timeout and partial_grace_s must be >= 0")


_FACTS_SQL = (
    "SELECT current_setting('server_version'), current_setting('server_version_num'), "
    "(SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s);"
)


def instance_of(params):
    if params.get("container"):
        return "container:%s" % params["container"]
    return "host:%s:%d" % (params.get("login_host"), int(params.get("login_port") or 5432))


# -- the runner --------------------------------------------------------------------
class PgBackup:
    """One run of pg_backup: ``plan()`` (check mode) or ``run()``."""

    def __init__(self, params, runner, check_mode=False, now=None):
        validate_params(params)
        self.p = params
        # One CommandRunner records every command (executed_commands, secret-free).
        self.cmd = CommandRunner.wrap(runner)
        self.check_mode = check_mode
        self.now = now or cat.utcnow()
        self.catalog = cat.Catalog(params["backup_dir"])
        self.db = params["db_name"]
        self.target = PgTarget(params, self.cmd)
        self.executed = self.cmd.commands
        self.warnings = []
        self.period = params.get("period") or "manual"
        self.tables = list(params.get("canary_tables") or DEFAULT_CANARY_TABLES)
        self.jobs = int(params.get("jobs") or 2)
        self.image = None
        self.client_image = params.get("client_image") or DEFAULT_CLIENT_IMAGE
        self._listing = ""
        # source identity (docs/backup-catalog.md): the name the role passes, else this machine's
        self.source_host = params.get("source_host") or socket.gethostname()
        # The pins a new backup would get, counted from now (the plan, check mode). A backup made
        # gets them counted from its own ``created_at`` (``_create``): the instant a later run in
        # the same period counts a relative keep_until from, so that run changes nothing.
        self.pins = self._new_pins(self.now)
        self.pin_changed = False
        # True once something is visible in the catalog (a published backup, a changed pin): a
        # failure after that point still reports changed (the module's ``fail_json``).
        self.wrote = False
        # What a failure to write the catalog (disk full, read-only) left behind, for its message.
        self._outcome = "nothing was published"
        # Every step that ran, with its seconds (returned as ``steps``; the bench prints them).
        self.steps = []
        self._mark = time.monotonic()

    def _new_pins(self, created):
        return cat.new_backup_pins(self.p.get("keep_until"), self.p.get("keep_reason"), created, PIN_REASON)

    def _step(self, name):
        """Close the step that ends now: ``name`` took the time since the previous mark."""
        now = time.monotonic()
        self.steps.append({"step": name, "s": round(now - self._mark, 3)})
        self._mark = now

    def _sh(self, line, check_msg=None):
        """Run a bash line (redirections, pipefail); every word in it is already shlex-quoted."""
        rc, out, err = self.cmd.shell(line, check=False)
        if rc != 0 and check_msg:
            raise PgBackupError("%s (rc=%s): %s" % (check_msg, rc, last_line(err or out)))
        return rc, out, err

    # -- server checks --------------------------------------------------------------
    def _check_container(self):
        c = self.p.get("container")
        if not c:
            return
        status, image = self.target.container_state()
        if status is None:
            raise PgBackupError(
                "container %s not found (%s); check the container option (ner11_stack: <project>-postgres-1) "
                "or start the stack with ner11.ops startup.yml" % (c, image)
            )
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
        return self.target.canary_counts(self.tables, self.db)

    def _pg_dump_version(self):
        return self.target.tool_version()

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
        if fmt == "directory" and method == "zstd" and self.p.get("container"):
            self._check_client_image()
        return fmt, method, level, jobs

    def uses_client_image(self, fmt, method):
        """A zstd directory dump in container mode runs pg_dump >= 16 from the client image, not the server's."""
        return bool(self.p.get("container")) and fmt == "directory" and method == "zstd"

    def _check_client_image(self):
        rc, _out, err = self.target.docker_cli.call(["image", "inspect", "--format", "{{.Id}}", self.client_image], check=False)
        if rc != 0:
            raise PgBackupError(
                "compression zstd needs pg_dump >= 16 from the client image %s, which is not on this host (%s); "
                "build it with 'make pgclient' (images/pgclient/build.sh) or set client_image to an image with "
                "pg_dump 16 or later, or use compression gzip:<level>" % (self.client_image, last_line(err))
            )

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
    @staticmethod
    def dump_args(fmt, method, level, jobs):
        """pg_dump's format, compression and jobs flags."""
        zarg = ["-Z", "0" if method == "none" else str(level)] if method != "zstd" else []
        if method == "zstd" and fmt == "directory":
            zarg = ["-Z", "zstd:%d" % level]  # pg_dump >= 16's own zstd
        fmt_flag = {"directory": "-Fd", "custom": "-Fc", "plain": "-Fp"}[fmt]
        return [fmt_flag] + zarg + (["-j", str(jobs)] if fmt == "directory" else [])

    def one_sidecar(self, fmt):
        """A directory dump in container mode: globals, pg_dump and the listing run in ONE sidecar."""
        return fmt == "directory" and bool(self.p.get("container"))

    def sidecar_command(self, fmt, method, level, jobs, partial, artifact):
        """The argv of the one backup sidecar (``SIDECAR_SCRIPT``): globals, ``pg_dump -Fd``, ``pg_restore --list``."""
        out_path = os.path.join(partial, artifact)
        roles = "yes" if self.p.get("globals_role_passwords") else "no"
        args = [os.path.join(partial, "globals.sql"), out_path, roles, partial]
        args += self.dump_args(fmt, method, level, jobs) + ["-f", out_path, self.db]
        return self.target.sidecar_script_argv(
            SIDECAR_SCRIPT,
            args,
            self._sidecar_image(fmt, method),
            volumes=["%s:%s" % (partial, partial)],
            name=self.sidecar_name(),
            labels=["%s=%s" % (SIDECAR_LABEL, self.catalog.root)],
            port=int(self.p.get("container_port") or 5432),
            script_name=SIDECAR_SCRIPT_NAME,
        )

    def dump_command(self, fmt, method, level, jobs, partial, artifact):
        """(kind, cmd): ``argv`` for a list, ``shell`` for a bash line with redirection.

        For a directory dump in container mode this is the bare ``pg_dump`` sidecar (the raw
        command the bench compares with); the module runs it inside ``sidecar_command``.
        """
        out_path = os.path.join(partial, artifact)
        dump_args = self.dump_args(fmt, method, level, jobs)
        if self.p.get("login_host"):
            argv = self.target.argv("pg_dump", dump_args)
            if method == "zstd" and fmt == "plain":
                return "shell", "%s %s | zstd -q -T0 -%d > %s" % (
                    shlex.join(argv),
                    shlex.quote(self.db),
                    level,
                    shlex.quote(out_path),
                )
            return "argv", argv + ["-f", out_path, self.db]
        if fmt == "directory":
            return "argv", self.target.sidecar_argv(
                "pg_dump",
                dump_args + ["-f", out_path, self.db],
                self._sidecar_image(fmt, method),
                volumes=["%s:%s" % (partial, partial)],
                name=self.sidecar_name(),
                labels=["%s=%s" % (SIDECAR_LABEL, self.catalog.root)],
                port=int(self.p.get("container_port") or 5432),
            )
        argv = self.target.argv("pg_dump", dump_args + [self.db])
        if method == "zstd":
            inner = "%s | zstd -q -T0 -%d" % (shlex.join(self.target.inner_argv("pg_dump", dump_args + [self.db])), level)
            argv = self.target.argv("bash", ["-o", "pipefail", "-c", inner])
            # target.argv adds no -U for bash; the inner line carries it
        return "shell", "%s > %s" % (shlex.join(argv), shlex.quote(out_path))

    def globals_command(self, partial):
        path = os.path.join(partial, "globals.sql")
        args = ["--globals-only"] + ([] if self.p.get("globals_role_passwords") else ["--no-role-passwords"])
        if self.p.get("login_host"):
            return "argv", self.target.argv("pg_dumpall", args + ["-f", path])
        return "shell", "%s > %s" % (shlex.join(self.target.argv("pg_dumpall", args)), shlex.quote(path))

    def _sidecar_image(self, fmt, method):
        if self.uses_client_image(fmt, method):
            return self.client_image
        return self.image or "IMAGE-OF-%s" % self.p.get("container")

    def list_command(self, fmt, partial, artifact, method="gzip"):
        image = self._sidecar_image(fmt, method)
        labels = ["%s=%s" % (SIDECAR_LABEL, self.catalog.root)]
        return self.target.list_dump_command(fmt, os.path.join(partial, artifact), image, labels)

    def sidecar_name(self):
        return "%s-pgdump-%d" % (self.p["container"], os.getpid())

    def _exec(self, kind, cmd, msg):
        if kind == "shell":
            return self._sh(cmd, msg)
        rc, out, err = self.cmd.run(cmd, env=self.target.environ(), check=False)
        if rc != 0:
            raise PgBackupError("%s (rc=%s): %s" % (msg, rc, last_line(err or out)))
        return rc, out, err

    def _remove_orphan_sidecars(self):
        if not self.p.get("container"):
            return []
        docker = self.target.docker_cli
        rc, out, _err = docker.call(["ps", "-aq", "--filter", "label=%s=%s" % (SIDECAR_LABEL, self.catalog.root)], check=False)
        ids = out.split() if rc == 0 else []
        if ids:
            docker.call(["rm", "-f"] + ids, check=False)
        return ids

    # -- the run ----------------------------------------------------------------------
    def plan(self):
        # One after the other: run at once (issue 16) the plan's reads were not measurably faster
        # on 2 cores (plan step 0.01 s less in the median of 10 profile pairs, within the noise).
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
            "client_image": self.client_image if self.uses_client_image(fmt, method) else None,
            "pins": self.pins,
            "commands": self._plan_commands(fmt, method, level, jobs, partial, artifact),
        }
        return plan, found, facts, (fmt, method, level, jobs)

    def _plan_commands(self, fmt, method, level, jobs, partial, artifact):
        if self.one_sidecar(fmt):
            return [display(self.sidecar_command(fmt, method, level, jobs, partial, artifact))]
        return [
            display(self.dump_command(fmt, method, level, jobs, partial, artifact)[1]),
            display(self.globals_command(partial)[1]),
            display(self.list_command(fmt, partial, artifact, method)[1]) if fmt != "plain" else "decompression test",
        ]

    def _factor(self, method):
        factor = self.p.get("space_factor")
        if factor is None:
            factor = 1.0
        return factor

    def run(self):
        try:
            return self._run()
        except OSError as exc:
            # A full disk or a read-only backup_dir (lock file, partial directory, signal files,
            # manifest, pins): a plain message instead of a traceback. Partials are already discarded.
            raise PgBackupError(self._io_message(exc)) from None
        finally:
            self.target.close()

    def _io_message(self, exc):
        return (
            "cannot write the backup catalog at %s: %s; check free space and permissions on %s (df -h, ls -ld), "
            "then run again; %s"
            % (
                exc.filename or self.catalog.root,
                exc.strerror or exc,
                self.catalog.root,
                self._outcome,
            )
        )

    def _run(self):
        started = time.monotonic()
        self._mark = started
        plan, found, facts, (fmt, method, level, jobs) = self.plan()
        self._step("plan: container state, server facts, period lookup")
        if found:
            return self._existing(found, plan)
        if self.check_mode:
            # The pins it would get (counted from now; the backup counts them from its created_at).
            return {
                "changed": True,
                "backup_id": plan["backup_id"],
                "path": plan["path"],
                "plan": plan,
                "pins": plan["pins"],
                "steps": self.steps,
            }
        timeout = int(self.p.get("lock_timeout") or 0)
        try:
            lock = self.catalog.lock(KIND, wait=timeout > 0, timeout=timeout)
            with lock:
                # G58: under the lock no other writer of this kind is alive (flock dies with its
                # process), so every partial is orphaned: remove them and any orphan sidecar.
                self.cleaned = self._clean_partials()
                found = self.existing()
                self._step("lock, orphan sidecars and partials removed")  # a concurrent run may have made it while we waited
                if found:
                    existing = found
                else:
                    return self._create(plan, facts, fmt, method, level, jobs, started)
        except cat.CatalogLocked as exc:
            raise PgBackupError(str(exc)) from None
        return self._existing(existing, plan)

    def _existing(self, found, plan):
        """The period already has a good backup: pin it when asked (keep_until), else change nothing."""
        self._outcome = "the pins of backup %s were not changed" % found["backup_id"]
        before = self.catalog.pins(KIND, found["backup_id"])
        try:
            self.pin_changed = cat.pin_existing(
                self.catalog, KIND, found["backup_id"], self.p.get("keep_until"), self.p.get("keep_reason"),
                PIN_REASON, self.check_mode, max(int(self.p.get("lock_timeout") or 0), 30),
            )  # fmt: skip
        except cat.CatalogLocked as exc:
            raise PgBackupError(str(exc)) from None
        except (cat.CatalogError, OSError) as exc:
            # the pins record is replaced atomically: either the old one or the new one is there
            if self.catalog.pins(KIND, found["backup_id"]) != before:
                self.wrote = True
                self._outcome = "the pins of backup %s were changed" % found["backup_id"]
            if isinstance(exc, OSError):
                raise  # run() names the path and the fix
            raise PgBackupError("%s; %s" % (exc, self._outcome)) from None
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
        # Whole seconds, as the manifest records it: the pins count from this very instant, so a
        # later run in the period (cat.pin_existing counts from created_at) finds them equal.
        created = cat.parse_time(cat.isoformat(cat.utcnow()))
        self.pins = self._new_pins(created)
        plan["pins"] = self.pins
        artifact = artifact_name(fmt, method)
        publishing = False
        try:
            partial = self.catalog.begin(KIND, backup_id)
            self._step("free space check, partial directory")
            files = None
            if self.one_sidecar(fmt):
                counts_before, counts_after, toc, files = self._sidecar_with_counts(fmt, method, level, jobs, partial, artifact)
            else:
                counts_before = self._row_counts()
                self._step("canary row counts before")
                kind, cmd = self.dump_command(fmt, method, level, jobs, partial, artifact)
                self._exec(kind, cmd, "pg_dump of %s failed on %s" % (self.db, self.target.describe()))
                self._step("pg_dump")
                kind, cmd = self.globals_command(partial)
                self._exec(kind, cmd, "pg_dumpall --globals-only failed on %s" % self.target.describe())
                self._step("pg_dumpall --globals-only")
                counts_after = self._row_counts()
                self._step("canary row counts after")
                toc = self._verify_artifact(fmt, method, partial, artifact)
                self._step("pg_restore --list" if fmt != "plain" else "decompression test")
            # The listing names the pg_dump that made the dump; --version only without one (plain).
            version = dumped_by(self._listing)
            if version is None and not self.uses_client_image(fmt, method):
                version = self._pg_dump_version()
                self._step("pg_dump --version")
            if files is None:
                files = cat.hash_tree(partial)
                self._step("sha256 of every file")
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
                "restore": restore_commands(fmt, method, artifact, jobs, True, version),
            }
            if self.uses_client_image(fmt, method):
                manifest["client_image"] = self.client_image
            if counts_after != counts_before:
                # Writes happened during the dump: the dump holds a count between the two (G23).
                manifest["row_counts_after"] = counts_after
            # Hashed just above: publish re-checks names and sizes only (backup_verify re-hashes).
            publishing = True
            self.catalog.publish(KIND, backup_id, manifest, pins=self.pins, hashed_now=True)
            self._step("publish: names and sizes re-check, manifest, fsync, rename")
        except BaseException as exc:
            self._remove_orphan_sidecars()
            self.catalog.discard(KIND, backup_id)
            if publishing and os.path.isfile(os.path.join(self.catalog.path(KIND, backup_id), cat.MANIFEST)):
                # renamed into place, then a last fsync failed: it is visible, say so
                self.wrote = True
                self._outcome = "backup %s was published at %s but its last step failed: verify it (ner11.ops.backup_verify)" % (
                    backup_id,
                    self.catalog.path(KIND, backup_id),
                )
            if isinstance(exc, cat.CatalogError):
                raise PgBackupError("%s; %s" % (exc, self._outcome)) from None
            raise
        self.wrote = True
        try:
            manifest = self.catalog.read_manifest(KIND, backup_id)
        except cat.CatalogError:
            # published just now; what was written is what the run returns
            manifest = dict(manifest, backup_id=backup_id, kind=KIND, status="verified")
        result = self._result(manifest, changed=True, plan=plan)
        result["pins"] = self.pins
        return result

    def _sidecar_with_counts(self, fmt, method, level, jobs, partial, artifact):
        """The one sidecar with the canary row counts beside it: ``(before, after, toc entries, hashed files)``.

        Three calls at once (``concurrently``; a failure raises the first failing call's error in
        the order before, sidecar, after - the order they ran in one after the other):

        * the counts "before" run while the container starts and dumps the globals; pg_dump, and
          so its snapshot, waits for ``SIGNAL_COUNTED``, created once they are taken (when they
          fail, ``SIGNAL_ABORT`` ends the sidecar at once);
        * the sidecar, then the listing check and the sha256 of every file;
        * the counts "after" start once pg_dump has ended (``SIGNAL_DUMPED``, or the sidecar's
          success), while the listing runs, the container exits and the files are hashed.
        """
        # Only the sidecar's thread uses the passfile (the counts run through docker exec).
        done = threading.Event()
        sidecar = {}
        began = time.monotonic()
        timed = {}

        def before():
            try:
                counts = self._row_counts()
            except BaseException:
                self._signal(partial, SIGNAL_ABORT, done, raise_error=False)
                raise
            timed["before"] = time.monotonic() - began
            self._signal(partial, SIGNAL_COUNTED, done)
            return counts

        def dump():
            try:
                self._run_sidecar(fmt, method, level, jobs, partial, artifact)
                sidecar["ok"] = True
            finally:
                done.set()
            for name in SIGNALS:
                _remove(os.path.join(partial, name))
            toc = self._check_listing(os.path.join(partial, artifact))
            files = cat.hash_tree(partial)
            self._step("sha256 of every file")
            return toc, files

        def after():
            dumped = os.path.join(partial, SIGNAL_DUMPED)
            while not os.path.exists(dumped) and not done.wait(SIGNAL_POLL_S):
                pass
            if not (sidecar.get("ok") or os.path.exists(dumped)):
                return None  # pg_dump did not finish: the sidecar's error is the one raised
            start = time.monotonic()
            counts = self._row_counts()
            timed["after"] = time.monotonic() - start
            return counts

        counts_before, (toc, files), counts_after = concurrently(before, dump, after)
        self._step("wait for the canary row counts after")
        # The counts ran beside the steps above; their own seconds are not part of the sum.
        self.steps.append(
            {"step": "canary row counts before (at once with the sidecar start)", "s": round(timed["before"], 3), "at_once": True}
        )
        self.steps.append(
            {
                "step": "canary row counts after (at once with the sidecar exit, sha256)",
                "s": round(timed["after"], 3),
                "at_once": True,
            }
        )
        return counts_before, counts_after, toc, files

    def _signal(self, partial, name, done, raise_error=True):
        """Create the signal file ``name`` for the sidecar (``SIDECAR_SCRIPT``).

        When it cannot be written (disk full, read-only), the sidecar must not wait for it: the
        abort file is tried, and failing that the sidecar is removed (until its ``docker run``
        returned, ``done``). The write's OSError is raised again (``raise_error``).
        """
        try:
            _touch(os.path.join(partial, name))
            return
        except OSError as exc:
            error = exc
        try:
            _touch(os.path.join(partial, SIGNAL_ABORT))
        except OSError:
            for _attempt in range(120):
                self._remove_orphan_sidecars()
                if done.wait(1.0):
                    break
        if raise_error:
            raise error

    def _run_sidecar(self, fmt, method, level, jobs, partial, artifact):
        """Run the one backup sidecar; its steps (with their times from its marks) go to ``steps``."""
        argv = self.sidecar_command(fmt, method, level, jobs, partial, artifact)
        started_mono, started = time.monotonic(), time.time()
        rc, out, err = self.cmd.run(argv, check=False)
        ended = time.time()
        if rc != 0:
            raise PgBackupError(
                sidecar_failure(
                    rc, err, self.db, self.target.describe(), os.path.join(partial, artifact), self._sidecar_image(fmt, method)
                )
            )
        marks, _rest = split_marks(err)
        lead = started_mono - self._mark  # from the previous step to ``docker run``
        for index, (name, seconds) in enumerate(sidecar_steps(started, marks, ended)):
            self.steps.append({"step": name, "s": round(seconds + (lead if index == 0 else 0.0), 3)})
        self._mark = time.monotonic()
        self._listing = out

    def _check_listing(self, path):
        toc = count_toc(self._listing)
        if toc <= 0:
            raise PgBackupError("pg_restore --list found no entries in %s; the dump is unusable" % path)
        return toc

    def _verify_artifact(self, fmt, method, partial, artifact):
        path = os.path.join(partial, artifact)
        if fmt == "plain":
            test_stream(path, method, self._sh)
            return None
        kind, cmd = self.list_command(fmt, partial, artifact, method)
        _rc, out, _err = self._exec(kind, cmd, "pg_restore --list could not read the new dump %s" % path)
        self._listing = out
        return self._check_listing(path)

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
            "steps": list(self.steps),
        }


def _touch(path):
    with open(path, "w"):
        pass


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# BackupVerifier lives in pgbackup_verify; it stays importable from here.
__all__ = ["BackupVerifier", "PgBackup", "PgBackupError", "validate_params"]

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The I/O half of a restore: runs the steps against one server (``Restorer``).

Part of ``pg_restore``'s core (overview in ``pgrestore.py``). Client tools run
through ``pgexec.PgTarget`` with a ``run_command``-compatible runner.
"""

from __future__ import annotations

# ruff: noqa: S608 -- every identifier goes through quote_ident and every value through quote_literal.

import json
import os
import shlex
import threading
import time

from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import DockerCli
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import quote_literal, quote_name
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup_formats import judge_lenient_restore
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgExecError
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError, CommandRunner, concurrently
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_plan import (
    RestoreError,
    backup_db_size,
    filter_globals,
    read_globals,
    split_table,
    qualified,
    temp_db_name,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_repair import (
    CONTAINER_SCAN,
    TEMP_COMMENT,
    classify_leftovers,
    stage_pattern,
    test_pause,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_sql import (
    HAS_LOG_SQL,
    LATEST_LOG_SQL,
    USER_TABLES_SQL,
    canary_lookup_sql,
    counts_from_fingerprint,
    create_db_sql,
    newest_sql,
    parse_preflight,
    preflight_sql,
    sessions_sql,
    terminate_sql,
    timestamp_columns_sql,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_state import (
    FINGERPRINT_VERSION,
    fingerprint_diff,
    fingerprint_sql,
    parse_fingerprint,
)

quote_ident = quote_name

# Label of the pg_restore sidecars (value: <container>/<database>): a killed run's sidecar is found by it.
SIDECAR_LABEL = "io.ner11.pg_restore.target"


class Restorer:
    """Runs the steps against one server. ``runner`` has AnsibleModule.run_command's signature."""

    def __init__(self, target, runner, log=None, check_mode=False, db=None, started=None):
        self.target = target
        # One CommandRunner and Docker client record every command (executed_commands).
        self.cmd = CommandRunner.wrap(runner)
        self.commands = self.cmd.commands
        self.docker_cli = DockerCli(self.cmd, target.docker)
        self._log = log or (lambda msg: None)
        self.stage = None
        self.image = None
        self._image_lock = threading.Lock()
        # What the first round read besides the leftovers (``find_leftovers``): the data directory,
        # its df rows, the roles and the target's sessions; None when not read (or stale after a repair).
        self.prefetched = None
        self.check_mode = check_mode
        self.db = db or "db"
        # What this run changed for good (for ``changed`` when it fails later).
        self.changes = []
        self.listing_in_background = False
        # Every step that ran, with its seconds (returned as ``steps``; the bench prints them).
        self.steps = []
        self._mark = time.monotonic() if started is None else started

    def step(self, name):
        """Close the step that ends now: ``name`` took the time since the previous mark."""
        now = time.monotonic()
        self.steps.append({"step": name, "s": round(now - self._mark, 3)})
        self._mark = now

    # -- helpers -------------------------------------------------------------------
    def q(self, sql, db="postgres"):
        return self.target.query(sql, db)

    def psql_script(self, sql, db, single_transaction=False):
        return self.target.script(sql, db, single_transaction)

    def shell(self, line, what, display=None):
        """Run a bash pipeline (pipefail) with the target's environment; raise on failure."""
        rc, out, err = self.cmd.shell(line, env=self.target.environ(), check=False, display=display)
        if rc != 0:
            raise RestoreError("%s failed (rc=%s): %s" % (what, rc, _tail(err or out)))
        return out

    def tool_cmd(self, tool, args, stdin=False):
        return shlex.join(self.target.argv(tool, args, stdin=stdin))

    def docker(self, args, what):
        """``docker <args>``; its output, or RestoreError naming ``what``."""
        rc, out, err = self.docker_cli.call(args, check=False)
        if rc != 0:
            raise RestoreError("%s failed (rc=%s): %s" % (what, rc, _tail(err or out)))
        return out

    def in_container(self, argv, what=None, user="0"):
        """Run ``argv`` in the database container (as root by default); RestoreError when ``what`` and it fails."""
        rc, out, err = self.docker_cli.exec(self.target.container, argv, user=user, check=False)
        if what and rc != 0:
            raise RestoreError("%s failed (rc=%s): %s" % (what, rc, _tail(err or out)))
        return rc, out, err

    # -- target state ----------------------------------------------------------------
    def db_exists(self, db):
        return self.target.scalar("SELECT 1 FROM pg_database WHERE datname = %s;" % quote_literal(db)) == "1"

    def inspect(self, db, newer_columns, exists=None):
        """The target's state; ``exists``: whether ``db`` exists when known already (the leftovers rows tell)."""
        exists = self.db_exists(db) if exists is None else bool(exists)
        state = {"exists": exists, "user_tables": 0, "applied": None, "newest_write": None, "newest": {}}
        if not state["exists"]:
            return state
        rows = self.q(USER_TABLES_SQL, db) or []
        state["user_tables"] = len(rows)
        state["tables"] = ["%s.%s" % (r[0], r[1]) for r in rows]
        raw = self.target.scalar(LATEST_LOG_SQL, db) if self.target.scalar(HAS_LOG_SQL, db) == "t" else None
        state["applied"] = json.loads(raw) if raw else None
        if state["applied"]:
            state["changes"] = self.changes_since(db, state["applied"])
        state["newest"] = self.newest(db, newer_columns)
        values = [v for v in state["newest"].values() if v is not None]
        state["newest_write"] = max(values) if values else None
        return state

    def changes_since(self, db, applied):
        """``fingerprint_diff`` of the applied restore against the database now."""
        recorded = parse_fingerprint(applied.pop("fingerprint", None))
        if not recorded or recorded.get("v") != FINGERPRINT_VERSION:
            return fingerprint_diff(recorded, None)
        tables = applied.get("tables") if applied.get("scope") == "tables" else None
        try:
            current = parse_fingerprint(self.target.scalar(fingerprint_sql(recorded.get("h"), tables), db))
        except (PgExecError, TypeError, ValueError, RestoreError):
            current = None
        return fingerprint_diff(recorded, current)

    def inspect_tables(self, db):
        return ["%s.%s" % (r[0], r[1]) for r in self.q(USER_TABLES_SQL, db) or []]

    def timestamp_columns(self, db, newer_columns):
        out = {}
        for schema, table, column in self.q(timestamp_columns_sql(newer_columns), db) or []:
            out.setdefault("%s.%s" % (schema, table), []).append(column)
        return out

    def newest(self, db, newer_columns):
        sql = newest_sql(self.timestamp_columns(db, newer_columns))
        if not sql:
            return {}
        return {row[0]: (float(row[1]) if row[1] not in ("", None) else None) for row in self.q(sql, db) or []}

    def counts(self, db, tables):
        """Canary row counts in ``db`` (None for a missing table), as pg_backup counted them."""
        return self.target.canary_counts(list(tables), db)

    def sessions(self, db):
        return [{"pid": int(r[0]), "application_name": r[1], "user": r[2], "state": r[3]} for r in self.q(sessions_sql(db)) or []]

    def roles(self):
        return [r[0] for r in self.q("SELECT rolname FROM pg_roles ORDER BY 1;") or []]

    # -- where the tools read the dump ----------------------------------------------------
    def reads_by_mount(self, info, jobs):
        """True when ``pg_restore`` reads the dump through a read-only mount into a sidecar (no copy).

        Container mode with ``login_password``: a sidecar of the database container's image,
        in its network namespace, logs in over 127.0.0.1 with the 0600 passfile (as pg_backup
        dumps). Without a password a seekable dump is copied into the container instead.
        """
        if self.target.container and info.get("client_image"):
            return True  # a zstd dump: only the client image's pg_restore (>= 16) reads it
        return bool(
            self.target.container
            and self.target.has_password
            and (info["format"] == "directory" or (info["format"] == "custom" and jobs > 1))
        )

    def copies_dump(self, info, jobs):
        """True when the dump is copied into the database container (``docker cp``) to restore it."""
        if not self.target.container or self.reads_by_mount(info, jobs):
            return False
        return info["format"] == "directory" or (info["format"] == "custom" and jobs > 1)

    def db_image(self):
        """The image of the database container (sidecars run its own client tools).

        Inspected once; the listing thread and the first round may both ask (the lock makes the
        second wait for the first's answer instead of inspecting again).
        """
        with self._image_lock:
            if self.image is None:
                status, image = self.target.container_state()
                if status != "running":
                    raise RestoreError(
                        "container %s is %s; start it (playbooks/startup.yml) and run again"
                        % (self.target.container, status or "not found (%s)" % image)
                    )
                self.image = image
            return self.image

    def needs_image(self, info, jobs):
        """True when this run starts a sidecar of the database container's image (so the first round inspects it)."""
        if not self.target.container or self.check_mode or info.get("client_image"):
            return False
        return self.listing_in_background or self.reads_by_mount(info, jobs)

    def sidecar_label(self, db):
        return "%s=%s/%s" % (SIDECAR_LABEL, self.target.container, db)

    def find_sidecars(self, db):
        """Ids of pg_restore sidecars (running or not) of a restore into ``db`` of this container."""
        if not self.target.container:
            return []
        rc, out, _err = self.docker_cli.call(["ps", "-aq", "--filter", "label=" + self.sidecar_label(db)], check=False)
        return out.split() if rc == 0 else []

    # -- staging the dump where the tools can read it ------------------------------------
    def stage_dump(self, info, jobs, only_toc=False):
        """Path of the dump as the tools see it.

        Host mode (login_host): the files themselves. Container mode: custom and
        plain dumps are streamed on stdin (no copy); a directory dump (and a
        custom dump restored with jobs > 1, which needs a seekable file) is
        copied with ``docker cp`` into a private temp dir in the container,
        removed by ``cleanup``.
        """
        if not self.target.container:
            return info["path"]
        needs_copy = info["format"] == "directory" or (info["format"] == "custom" and jobs > 1)
        if not needs_copy:
            return None
        container = self.target.container
        if self.check_mode:
            raise RestoreError("internal: the dump is never copied in check mode")
        if not self.stage:
            self.stage = self.in_container(
                ["mktemp", "-d", stage_pattern(self.db) + "XXXXXX"], "creating a temp dir in %s" % container
            )[1].strip()
        dest = self.stage + "/" + os.path.basename(info["path"].rstrip("/"))
        if only_toc and info["format"] == "directory":
            self.in_container(["mkdir", "-p", dest], "creating %s" % dest)
            self.docker(["cp", os.path.join(info["path"], "toc.dat"), "%s:%s/toc.dat" % (container, dest)], "copying toc.dat")
        else:
            self.docker(["cp", info["path"], "%s:%s" % (container, dest)], "copying the dump into %s" % container)
            test_pause("copy")
        self.in_container(
            ["chown", "-R", self.target.container_user, self.stage], "handing the dump to %s" % self.target.container_user
        )
        return dest

    def cleanup(self):
        if self.stage and self.target.container:
            self.in_container(["rm", "-rf", self.stage])
            self.stage = None

    def _input(self, info, staged):
        """(path argument or None, shell redirect suffix) for a tool reading the dump."""
        if staged is not None:
            return staged, ""
        return None, " < " + shlex.quote(info["path"])

    def list_toc(self, info, recorded=None):
        """``pg_restore --list`` of a custom/directory dump: the number of TOC entries (0 for plain).

        In check mode a directory dump is not copied into the container (check
        mode writes nothing anywhere): the manifest's recorded count is returned
        (the checksums of every file were verified already).
        """
        if info["format"] == "plain":
            return None
        if self.check_mode and info["format"] == "directory" and self.target.container:
            return recorded
        if info["format"] == "directory" and self.target.container:
            # A network-less sidecar of the DB image reads the directory through a read-only mount (no copy).
            kind, cmd = self.target.list_dump_command("directory", info["path"], info.get("client_image") or self.db_image())
            rc, out, err = self.cmd.run(cmd, check=False)
            if rc != 0:
                raise RestoreError(
                    "pg_restore --list (the dump is unreadable; restore another backup) failed (rc=%s): %s"
                    % (rc, _tail(err or out))
                )
            return self._toc_count(out)
        staged = self.stage_dump(info, jobs=1, only_toc=True)
        arg, redirect = self._input(info, staged)
        line = self.tool_cmd("pg_restore", ["--list"] + ([arg] if arg else []), stdin=arg is None) + redirect
        out = self.shell(line, "pg_restore --list (the dump is unreadable; restore another backup)")
        return self._toc_count(out)

    def start_list_toc(self, info, recorded=None):
        """``list_toc`` started now; returns a function that waits for it (its count, or its error).

        A directory dump in container mode is listed by a sidecar of its own (``docker run``, about
        as long as all the read-only queries before the restore): it runs in a thread while they
        run (issue 16). The thread inspects the image first; the first round (``find_leftovers``)
        waits for that answer and raises a stopped container's error itself. The caller waits for
        the listing before its first change. Any other listing runs here and now.
        """
        self.listing_in_background = bool(info["format"] == "directory" and self.target.container and not self.check_mode)
        if not self.listing_in_background:
            toc = self.list_toc(info, recorded)
            return lambda: toc
        out = {}

        def work():
            try:
                out["toc"] = self.list_toc(info, recorded)
            except (RestoreError, PgExecError, CommandError, OSError) as exc:
                out["error"] = exc

        thread = threading.Thread(target=work, name="ner11-list-toc", daemon=True)
        thread.start()

        def wait():
            thread.join()
            if "error" in out:
                raise out["error"]
            if "toc" not in out:  # the thread ended without either (the runner exited it)
                raise RestoreError("pg_restore --list of %s stopped without a result; run again" % info["path"])
            return out["toc"]

        return wait

    @staticmethod
    def _toc_count(out):
        entries = [x for x in out.splitlines() if x.strip() and not x.startswith(";")]
        if not entries:
            raise RestoreError("pg_restore --list shows no entries; the dump is empty or damaged: restore another backup")
        return len(entries)

    # -- steps ---------------------------------------------------------------------------
    def restore_globals(self, info, login_user, roles=None):
        """Create the backup's roles the server lacks; ``roles``: the server's roles when read already."""
        if not info["globals_path"]:
            return {"created": [], "kept": []}
        if roles is None:
            roles = self.roles()
        sql, created, kept = filter_globals(read_globals(info["globals_path"]), roles, login_user)
        if created:
            self.psql_script(sql, "postgres")
        return {"created": created, "kept": kept}

    def create_db(self, db, comment=TEMP_COMMENT):
        """CREATE DATABASE, then mark it as ours at once (only marked databases are ever dropped by a repair).

        One psql call (issue 16: each call is a ``docker exec``): psql runs the two statements
        one after the other, each in its own transaction (CREATE DATABASE cannot run in one),
        and stops at the first error (ON_ERROR_STOP), so an uncreated database is never commented.
        """
        self.psql_script(create_db_sql(db, comment), "postgres")

    def log_and_counts(self, log_sql, db, tables):
        """Write the restore_log row (with the state fingerprint) in ``db``; the canary counts of ``db``.

        The fingerprint counts the rows of every table (one scan each): a canary that is a
        plain table without children takes its count from there, in the same psql call,
        instead of a second full scan (issue 16). Any other canary (partitioned, inherited,
        or not resolved by the fingerprint) is counted with ``counts`` as before.
        """
        rows = self.q(log_sql + canary_lookup_sql(tables), db) or []
        counts = counts_from_fingerprint(rows, tables)
        rest = [t for t in tables if t not in counts]
        if rest:
            counts.update(self.counts(db, rest))
        return counts

    def drop_db(self, db):
        """DROP DATABASE ... WITH (FORCE); returns None when done, else the error text."""
        return self.target.drop_database(db)

    # -- what a killed or failed run left ----------------------------------------------------
    def find_leftovers(self, db, image=False):
        """(classify_leftovers(...), stage dirs, client processes) for this database.

        The first round of reads before a restore (issue 16): in container mode its reads run at
        once, each one round trip: the server's side in one psql call (``preflight_sql``: the
        databases, which tell whether ``db`` exists, the data directory, the roles, the target's
        sessions), the container scan (client processes, dump copies, and ``df`` of the data
        directory and /tmp), the sidecars, and with ``image`` the container's image (first: a
        stopped container is the error reported). What is read besides the leftovers is kept in
        ``prefetched`` for the free-space check, the globals and the plan.
        """
        df = {}
        if self.target.container:
            calls = [
                lambda: self.q(preflight_sql(db)),
                lambda: self.in_container(["sh", "-c", CONTAINER_SCAN, "sh", temp_db_name(db), stage_pattern(db)]),
                lambda: self.find_sidecars(temp_db_name(db)),
            ]
            results = concurrently(*([self.db_image] if image else []) + calls)
            rows, (rc, out, _err), sidecars = results[-3:]
        else:
            rows = self.q(preflight_sql(db))
        rows, self.prefetched = parse_preflight(rows)
        found = classify_leftovers(db, rows)
        stages, clients = [], []
        if self.target.container:
            for line in (out or "").splitlines() if rc == 0 else []:
                if line.startswith("df\t"):
                    _kind, path, row = (line.split("\t", 2) + ["", ""])[:3]
                    df[path] = row.split()
                    continue
                kind, _sep, rest = line.partition(" ")
                if kind == "stage" and rest.startswith(stage_pattern(db)):
                    stages.append(rest.strip())
                elif kind == "pid":
                    pid, _sep, tool = rest.partition(" ")
                    if pid.isdigit():
                        clients.append({"pid": int(pid), "tool": os.path.basename(tool.strip()) or "client"})
            clients += [{"sidecar": cid, "tool": "pg_restore"} for cid in sidecars]
        if self.prefetched is not None:
            self.prefetched["df"] = df
        return found, stages, clients

    def repair(self, db, found, stages, clients):
        """Bring back a state the restore can start from; returns what was done (each step a sentence)."""
        done = []
        in_db = [c for c in clients if c.get("pid")]
        sidecars = [c for c in clients if c.get("sidecar")]
        if in_db:
            pids = [str(c["pid"]) for c in in_db]
            self.in_container(["kill", "-TERM"] + pids)  # one that ended meanwhile is fine: dropping the database ends the rest
            done += ["stopped %s (pid %s) in the database container" % (c["tool"], c["pid"]) for c in in_db]
        if sidecars:
            self.docker(["rm", "-f"] + [c["sidecar"] for c in sidecars], "removing the pg_restore sidecar of a killed restore")
            done += ["removed the %s sidecar container %s" % (c["tool"], c["sidecar"][:12]) for c in sidecars]
        if found["target_blocked"]:
            self.allow_connections(db, True)
            done.append("allowed connections to %s again" % db)
        if found["temp"]:
            error = self.drop_db(found["temp"]["name"])
            if error:
                raise RestoreError(
                    "could not drop the temporary database %s a killed restore left (%s); drop it with DROP DATABASE %s "
                    "WITH (FORCE); and run again" % (found["temp"]["name"], error, quote_ident(found["temp"]["name"]))
                )
            done.append("dropped the half-built temporary database %s" % found["temp"]["name"])
        for old in found["old"]:
            if not old["drop"]:
                continue
            error = self.drop_db(old["name"])
            if error:
                old["drop"] = False
                old["comment"] += " (drop failed: %s)" % error
                continue
            done.append("dropped %s (replaced by a completed restore)" % old["name"])
        for stage in stages:
            self.in_container(["rm", "-rf", "--", stage], "removing %s" % stage)
            done.append("removed the dump copy %s in the database container" % stage)
        self.changes += done
        if done:
            self.prefetched = None  # space was freed, sessions may have come: read again after a repair
        return done

    def restore_full(self, info, db, jobs):
        if self.reads_by_mount(info, jobs):
            self._restore_by_mount(info, db, jobs)
            return
        staged = self.stage_dump(info, jobs)
        if info["format"] == "plain":
            # G24: stop at the first error, all or nothing.
            psql = self.target.psql_line(db, single_transaction=True)
            source = shlex.quote(info["path"])
            if info["decompress"]:
                line = "%s -dc -- %s | %s" % (info["decompress"], source, psql)
            else:
                line = "%s < %s" % (psql, source)
            self.shell(line + " > /dev/null", "restoring the plain dump with psql")
            return
        args = ["--exit-on-error", "--no-password", "-d", db]
        if jobs > 1 and staged is not None or (jobs > 1 and not self.target.container):
            args += ["-j", str(jobs)]
        arg, redirect = self._input(info, staged)
        line = self.tool_cmd("pg_restore", args + ([arg] if arg else []), stdin=arg is None) + redirect
        if os.environ.get("NER11_OPS_TEST_PAUSE_AT") == "pg_restore":
            # Test-only hook: pg_restore runs on while this run waits to be killed.
            line = '{ %s; } & sleep 0.3; echo $$ > "$NER11_OPS_TEST_PAUSE_DIR/pg_restore"; wait $!; sleep 300' % line
        self.shell(line, "pg_restore into %s" % db)

    def _restore_by_mount(self, info, db, jobs):
        """``pg_restore -j`` in a sidecar of the DB image, the backup directory mounted read-only."""
        root = os.path.dirname(info["path"].rstrip("/"))
        lenient = bool(info.get("client_image"))
        if lenient and not self.target.has_password:
            raise RestoreError(
                "backup %s is a zstd dump: pg_restore 16 or later from %s restores it in a sidecar that logs in over "
                "TCP; set login_password (ner11_db_password)" % (os.path.basename(root), info["client_image"])
            )
        # pg_restore 17 sends SET transaction_timeout, which a 15/16 server rejects: a zstd restore runs
        # without --exit-on-error and then fails on any error but that one (judge_lenient_restore).
        argv = self.target.sidecar_argv(
            "pg_restore",
            ([] if lenient else ["--exit-on-error"]) + ["--no-password", "-d", db, "-j", str(jobs), info["path"]],
            info.get("client_image") or self.db_image(),
            volumes=["%s:%s:ro" % (root, root)],
            name="%s-pgrestore-%d" % (self.target.container, os.getpid()),
            labels=[self.sidecar_label(db)],
        )
        line = shlex.join(argv)
        if os.environ.get("NER11_OPS_TEST_PAUSE_AT") == "pg_restore":
            # Test-only hook: pg_restore runs on while this run waits to be killed.
            line = '{ %s; } & sleep 0.3; echo $$ > "$NER11_OPS_TEST_PAUSE_DIR/pg_restore"; wait $!; sleep 300' % line
        if not lenient:
            self.shell(line, "pg_restore into %s" % db)
            return
        rc, out, err = self.cmd.shell(line, check=False)
        problem = judge_lenient_restore(rc, err)
        if problem:
            raise RestoreError("pg_restore into %s failed: %s" % (db, problem))

    # -- space pre-flight -----------------------------------------------------------------
    def space_check(self, manifest, info, staged):
        """Free space for the restored copy (and the dump copy) before anything is touched.

        The restored copy needs about the database's size at backup time (``backup_db_size``)
        plus 10 %% on the data directory's filesystem; a dump copied into the container needs
        its size on the container's /tmp. Returns the numbers and ``error`` (a message) when
        they do not fit. Only container mode can see the server's filesystems; host mode
        reports ``checked: false``.
        """
        db_size = backup_db_size(manifest) or None
        dump_size = sum(
            int(f.get("size") or 0)
            for f in manifest.get("files") or []
            if f.get("path") == info["artifact"] or str(f.get("path", "")).startswith(info["artifact"] + "/")
        )
        out = {"checked": False, "db_size_bytes": db_size, "dump_copy_bytes": dump_size if staged else 0}
        if not self.target.container:
            out["note"] = "not checked: the server's filesystem is not visible in login_host mode"
            return out
        facts = self.prefetched
        if facts is not None:
            datadir = facts["datadir"]  # read by the first round (empty when the login may not read it)
        else:
            try:
                datadir = self.target.scalar("SHOW data_directory;")
            except PgExecError:
                datadir = None
        if not datadir:
            # SHOW data_directory needs a superuser or pg_read_all_settings (pg_settings hides it too).
            out["note"] = "not checked: %s may not read data_directory (grant it pg_read_all_settings)" % self.target.user
            return out
        paths = [datadir] + (["/tmp"] if staged else [])  # noqa: S108 - the container's /tmp, where mktemp puts the copy
        scanned = (facts or {}).get("df") or {}
        rows = [scanned.get(path) for path in paths]
        if not all(row and len(row) >= 6 for row in rows):
            # The scan's $PGDATA is not the server's data directory (or no df row): df it now.
            rc, text, err = self.in_container(["df", "-P", "-k"] + paths, user=None)
            if rc != 0:
                out["note"] = "not checked: df failed in the container (%s)" % _tail(err or text)
                return out
            rows = [line.split() for line in text.splitlines()[1:] if line.strip()]
            if len(rows) != len(paths):
                out["note"] = "not checked: unexpected df output"
                return out
        need = {}
        for index, path in enumerate(paths):  # (no zip(strict=): Python 3.9 managed nodes)
            row = rows[index]
            fs, free = row[0] + " " + row[-1], int(row[3]) * 1024
            entry = need.setdefault(fs, {"path": path, "free_bytes": free, "need_bytes": 0, "for": []})
            if path == datadir and db_size:
                entry["need_bytes"] += int(int(db_size) * 1.1)
                entry["for"].append("the restored copy (%s at backup time + 10%%)" % _mb(db_size))
            elif path != datadir:
                entry["need_bytes"] += dump_size
                entry["for"].append("the dump copy (%s)" % _mb(dump_size))
        out.update(checked=True, filesystems=list(need.values()))
        short = [e for e in need.values() if e["need_bytes"] > e["free_bytes"]]
        if short:
            e = short[0]
            out["error"] = (
                "not enough free space to restore backup %s into %s: %s in container %s needs %s for %s but has %s free. "
                "Free space on that filesystem (or give the container a larger volume)%s; nothing was changed"
                % (
                    manifest.get("backup_id"),
                    self.db,
                    e["path"],
                    self.target.container,
                    _mb(e["need_bytes"]),
                    " and ".join(e["for"]),
                    _mb(e["free_bytes"]),
                    ", or restore a custom-format backup with jobs=1 (streamed, no dump copy)" if staged else "",
                )
            )
        return out

    def owned_sequences(self, db, tables):
        quals = ", ".join(quote_literal(qualified(t)) for t in tables)
        rows = self.q(
            "SELECT sn.nspname, s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "JOIN pg_namespace sn ON sn.oid = s.relnamespace WHERE d.deptype IN ('a', 'i') "
            "AND d.refobjid IN (SELECT to_regclass(x)::oid FROM unnest(ARRAY[%s]) x);" % quals,
            db,
        )
        return ["%s.%s" % (r[0], r[1]) for r in rows or []]

    def fk_dependants(self, db, tables):
        quals = ", ".join(quote_literal(qualified(t)) for t in tables)
        rows = self.q(
            "SELECT DISTINCT cn.nspname || '.' || c.relname, rn.nspname || '.' || r.relname FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace "
            "JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace "
            "WHERE k.contype = 'f' AND k.confrelid IN (SELECT to_regclass(x)::oid FROM unnest(ARRAY[%s]) x) ORDER BY 1;" % quals,
            db,
        )
        return [{"table": r[0], "references": r[1]} for r in rows or []]

    def restore_tables(self, info, db, tables, pre, post):
        if info.get("client_image"):
            raise RestoreError(
                "a zstd dump cannot be restored table by table yet (the database container's pg_restore cannot read "
                "zstd); restore it whole into a scratch database, or take gzip backups for selective restores"
            )
        staged = self.stage_dump(info, jobs=1)
        sequences = self.owned_sequences(db, tables)
        targets = []
        for schema in sorted({split_table(t)[0] for t in list(tables) + sequences}):
            targets += ["-n", schema]
        for name in list(tables) + sequences:
            targets += ["-t", split_table(name)[1]]
        arg, redirect = self._input(info, staged)
        dump = self.tool_cmd(
            "pg_restore", ["--data-only", "--no-owner", "-f", "-"] + targets + ([arg] if arg else []), stdin=arg is None
        )
        psql = self.target.psql_line(db, single_transaction=True)
        line = "{ printf '%%s' %s; %s%s; printf '%%s' %s; } | %s > /dev/null" % (
            shlex.quote(pre),
            dump,
            redirect,
            shlex.quote(post),
            psql,
        )
        shown = "{ <pre.sql>; %s%s; <post.sql>; } | %s" % (dump, redirect, psql)
        self.shell(line, "restoring tables %s" % ", ".join(tables), display=shown)
        return sequences

    def terminate(self, db):
        rows = self.q(terminate_sql(db)) or []
        return [{"pid": int(r[0]), "application_name": r[1], "terminated": r[2] == "t"} for r in rows]

    def allow_connections(self, db, allow):
        """ALTER DATABASE ... ALLOW_CONNECTIONS; raises when disallowing fails (never restore into a used db)."""
        return self.target.execute(
            "ALTER DATABASE %s WITH ALLOW_CONNECTIONS %s;" % (quote_ident(db), "true" if allow else "false")
        )


def _mb(n):
    return "%.1f MB" % (int(n or 0) / 1048576.0)


def _tail(text):
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:]) if lines else "no output"

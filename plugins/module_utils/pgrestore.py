# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a ``database`` backup of the catalog, idempotently and guarded.

The pure half (no I/O): which backup to restore (``select_latest``, G9), what the
target's state means (``decide``), whether the target holds data newer than the
backup (``newer_tables``), which statements of ``globals.sql`` may run
(``filter_globals``), and the SQL text of every step. The I/O half
(``Restorer``) runs the client tools through ``pgexec.PgTarget`` with a
``run_command``-compatible runner, so the module stays thin.

A full restore never writes into the live database: it restores into
``<db>__ner11_restore``, checks the canary row counts and the "newer data" rule
there, and only then swaps the databases with two ``ALTER DATABASE ... RENAME``
in one transaction (G47). A failure before the swap drops the temporary
database and leaves the target untouched.

Plain Python: no Ansible import, unit-tested in tests/unit.

The core is split by concern: ``pgrestore_plan`` (which backup, decisions, names),
``pgrestore_sql`` (SQL text), ``pgrestore_state`` (the state fingerprint),
``pgrestore_repair`` (what a killed run left), ``pgrestore_runner`` (``Restorer``,
the I/O half); this file runs them in order (``run_restore``).
"""

from __future__ import annotations

# ruff: noqa: S608 -- every identifier goes through quote_ident and every value through quote_literal.

import time

from ansible_collections.ner11.ops.plugins.module_utils.catalog import utcnow
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import quote_literal, quote_name
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgExecError, PgTarget
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_plan import (
    DEFAULT_NEWER_COLUMNS,
    BackgroundVerify,
    Refused,
    RestoreError,
    _iso,
    count_mismatches,
    decide,
    dump_info,
    epoch,
    expected_counts,
    newer_tables,
    old_db_name,
    resolve_backup,
    split_table,
    temp_db_name,
    validate_db_name,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_repair import (
    created_comment,
    leftover_report,
    old_comment,
    repair_plan,
    test_pause,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_runner import Restorer
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_sql import log_insert_sql, swap_sql, table_restore_wrapper
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandRunner, concurrently

quote_ident = quote_name


def run_restore(params, runner, check_mode=False, now=None):
    """The whole module: resolve, verify, decide, plan; apply unless ``check_mode``.

    Returns the module result (without ``msg``); raises RestoreError/Refused/PgExecError.
    """
    started = time.monotonic()
    now = now or utcnow()
    db = validate_db_name(params["db_name"])
    tables = list(params.get("tables") or [])
    for table in tables:
        split_table(table)
    jobs = int(params.get("jobs") or 1)
    if jobs < 1:
        raise RestoreError("jobs must be 1 or more, got %d" % jobs)
    force = bool(params.get("force"))
    newer_columns = list(params.get("newer_columns") or DEFAULT_NEWER_COLUMNS)
    for column in newer_columns:
        validate_db_name(column, "newer_columns entry")
    if not (params.get("backup_id") or params.get("path") or params.get("latest")):
        raise RestoreError("name the backup: set backup_id, path, or latest=true")
    source_db = params.get("source_db_name") or db
    # A named backup is hashed in a thread while the server is read (below); ``latest`` verifies
    # its candidates while choosing.
    named = bool(params.get("backup_id") or params.get("path"))
    catalog, manifest, backup_path, skipped = resolve_backup(
        params.get("backup_dir"),
        params.get("backup_id"),
        params.get("path"),
        params.get("latest"),
        source_db,
        source_host=params.get("source_host"),
        verify=not named,
    )
    pending = BackgroundVerify(catalog, manifest["backup_id"]) if named else None
    try:
        return _run(
            params,
            runner,
            check_mode,
            now,
            started,
            db,
            tables,
            jobs,
            force,
            newer_columns,
            manifest,
            backup_path,
            skipped,
            pending,
        )
    except (RestoreError, PgExecError) as exc:
        # Every checksum is known before anything changes: a damaged backup is the reason,
        # whatever failed meanwhile (an unreadable dump fails pg_restore --list first).
        if pending is None:
            raise
        try:
            pending.check()
        except RestoreError as error:
            if error.args[:1] != exc.args[:1]:
                error.partial = getattr(exc, "partial", None)
                raise error from None
        raise


def _run(
    params, runner, check_mode, now, started, db, tables, jobs, force, newer_columns, manifest, backup_path, skipped, pending
):
    """``run_restore`` once the backup is found; ``pending`` (or None): its checksums, joined before any change."""
    info = dump_info(manifest, backup_path)
    if info["client_image"] and params.get("container") and not params.get("login_password"):
        raise RestoreError(
            "backup %s is a zstd dump: pg_restore 16 or later from %s restores it in a sidecar that logs in over TCP; "
            "set login_password (ner11_db_password)" % (manifest["backup_id"], info["client_image"])
        )
    if tables and info["format"] == "plain":
        raise RestoreError(
            "backup %s is a plain SQL dump, which cannot be restored table by table; restore it whole into a "
            "scratch database, or take custom/directory backups" % manifest["backup_id"]
        )
    backup = {"backup_id": manifest["backup_id"], "sha256": info["sha256"], "created_at": epoch(manifest["created_at"])}
    canaries = list(manifest.get("canary_tables") or (manifest.get("row_counts") or {}).keys())
    result = {
        "backup_id": manifest["backup_id"],
        "backup_path": backup_path,
        "backup_created_at": manifest["created_at"],
        "format": info["format"],
        "db_name": db,
        "restored": False,
        "changed": False,
        "skipped_backups": skipped,
        "row_counts": {},
        "sessions_terminated": [],
        "globals": {"created": [], "kept": []},
        "newer_data": [],
        "leftovers": [],
        "plan": {},
    }
    cmd = CommandRunner.wrap(runner)
    with PgTarget(params, cmd) as target:
        r = Restorer(target, cmd, check_mode=check_mode, db=db, started=started)
        r.step("find the backup" + (", its checksums in the background" if pending else ", verify its checksums"))
        result["executed_commands"] = r.commands
        result["steps"] = r.steps
        try:
            # pg_restore --list (a sidecar of its own for a directory dump) runs while the server is read.
            listing = r.start_list_toc(info, manifest.get("toc_entries"))
            if r.listing_in_background:
                r.step("start pg_restore --list in the background")
            else:
                result["toc_entries"] = listing()
                r.step("pg_restore --list")

            def ready():
                """The checksums and the listing: waited for before the first change and before any return."""
                if pending:
                    pending.check()
                if "toc_entries" not in result:
                    result["toc_entries"] = listing()

            # First what a killed or failed earlier run left (docs/restore.md, "Interrupted restores"),
            # in one round with everything else the decisions below read (issue 16).
            found, stages, clients = r.find_leftovers(db, image=r.needs_image(info, jobs))
            steps = repair_plan(db, found, stages, clients)
            result["leftovers"] = leftover_report(db, found)
            r.step("look for leftovers of a killed run")
            if steps:
                result["plan"]["repair"] = steps
                ready()  # before a repair, and before check mode reports one
                if check_mode:
                    result["changed"] = True
                    if found["target_blocked"]:
                        # Its state cannot be read until connections are allowed again.
                        result["operation"] = "repair"
                        result["reason"] = "database %s refuses connections (a killed restore); the run repairs it first" % db
                        return _finish(result, started)
                else:
                    result["repaired"] = r.repair(db, found, stages, clients)
                    result["leftovers"] = leftover_report(db, found)
                    r.step("repair the leftovers")
            state = r.inspect(db, newer_columns, exists=found["target_exists"])
            expected = expected_counts(manifest, tables or None)
            if tables:
                observed = r.counts(db, list(expected))
                state["counts_match"] = not count_mismatches(expected, observed)
            decision = decide(db, backup, state, params.get("if_exists") or "fail", params.get("confirm"), force, tables)
            result["operation"] = decision["action"]
            result["reason"] = decision["reason"]
            if state.get("applied"):
                result["changes_since_restore"] = state.get("changes", [])
            r.step("inspect the target, decide")
            if pending or r.listing_in_background:
                # Nothing was changed so far (the reads above); nothing is changed before every file
                # matches and the dump lists.
                ready()
                r.step("wait for the checksums and pg_restore --list")
            if decision["action"] in ("none", "skip"):
                result["row_counts"] = r.counts(db, tables or canaries)
                r.step("canary counts")
                result["applied"] = state.get("applied")
                result["changed"] = bool(steps)
                return _finish(result, started)
            if decision["action"] == "tables":
                return _finish(
                    _tables(r, params, info, manifest, db, tables, expected, newer_columns, force, check_mode, result), started
                )
            return _finish(
                _full(
                    r, params, info, manifest, db, state, expected, canaries, newer_columns, force, jobs, check_mode, now, result
                ),
                started,
            )
        except (RestoreError, PgExecError) as exc:
            # Failures report what they changed for good and what they left (issue 9).
            exc.partial = {
                "steps": r.steps,
                "changed": bool(r.changes),
                "changes": list(r.changes),
                "leftovers": result.get("leftovers", []),
                "restored": result.get("restored", False),
                "executed_commands": r.commands,
            }
            raise
        finally:
            r.cleanup()


def _finish(result, started):
    result["duration_s"] = round(time.monotonic() - started, 3)
    for left in result.get("leftovers") or []:
        result.setdefault("warnings", []).append("%s is left: %s; %s" % (left["database"], left["state"], left["fix"]))
    return result


def _tables(r, params, info, manifest, db, tables, expected, newer_columns, force, check_mode, result):
    dependants = [d for d in r.fk_dependants(db, tables) if split_table(d["table"]) not in {split_table(t) for t in tables}]
    present = {"%s.%s" % split_table(t) for t in r.inspect_tables(db)}
    missing = [t for t in tables if "%s.%s" % split_table(t) not in present]
    if missing:
        raise RestoreError(
            "table(s) %s do not exist in %s; a selective restore fills existing tables only" % (", ".join(missing), db)
        )
    if dependants:
        # G30: never TRUNCATE ... CASCADE; a referencing table would be emptied silently.
        raise Refused(
            "tables %s are referenced by foreign keys from %s; TRUNCATE without CASCADE would fail: add the "
            "referencing tables to tables (they are replaced too) or restore the whole database; nothing was changed"
            % (", ".join(tables), ", ".join(sorted({d["table"] for d in dependants})))
        )
    columns = r.timestamp_columns(db, newer_columns)
    check_cols = {t: columns.get("%s.%s" % split_table(t), []) for t in tables}
    result["plan"].update(
        {
            "action": "tables",
            "database": db,
            "tables": tables,
            "truncate": ["%s.%s" % split_table(t) for t in tables],
            "expected_row_counts": {k: v[0] if v[0] == v[1] else list(v) for k, v in expected.items()},
            "newer_check_columns": check_cols if not force else {},
            "single_transaction": True,
        }
    )
    result["changed"] = True
    if check_mode:
        return result
    pre, post = table_restore_wrapper(tables, expected, check_cols, force)
    post += log_insert_sql(
        manifest["backup_id"],
        info["sha256"],
        "tables",
        tables,
        (manifest.get("source") or {}).get("db_name"),
        manifest["created_at"],
        force,
    )
    r.step("plan the table restore")
    try:
        result["sequences"] = r.restore_tables(info, db, tables, pre, post)
    except RestoreError as exc:
        if "held rows newer than the backup" in str(exc):
            raise Refused("%s; the transaction was rolled back, nothing was changed" % exc) from None
        raise RestoreError("%s; the transaction was rolled back, the tables are unchanged" % exc) from None
    r.step("restore the tables in one transaction")
    result["restored"] = True
    result["row_counts"] = r.counts(db, tables)
    r.step("canary counts")
    return result


def _full(r, params, info, manifest, db, state, expected, canaries, newer_columns, force, jobs, check_mode, now, result):
    temp = temp_db_name(db)
    old = old_db_name(db, now) if state["exists"] else None
    keep_old = bool(params.get("keep_old"))
    estimate = []
    if state["exists"] and state["user_tables"] and not force:
        estimate = [
            {"table": t, "target_newest": _iso(v)}
            for t, v in sorted(state["newest"].items())
            if v is not None and v > epoch(manifest["created_at"])
        ]
    staged = r.copies_dump(info, jobs)
    facts = r.prefetched
    if facts is not None:
        # Read in the first round (issue 16): the target's sessions, the data directory and its
        # free space, the server's roles (for the globals below; a role created meanwhile fails
        # CREATE ROLE, before the copy exists). No round trip here unless df must run again.
        sessions = facts["sessions"] if state["exists"] else []
        roles = (facts["roles"] or None) if info["globals_path"] else None
        space = r.space_check(manifest, info, staged)
    else:
        # Not read yet (a repair ran): three reads at once.
        sessions, space, roles = concurrently(
            lambda: r.sessions(db) if state["exists"] else [],
            lambda: r.space_check(manifest, info, staged),
            lambda: r.roles() if info["globals_path"] else None,
        )
    r.step("sessions and free space" if state["exists"] else "free space")
    result["plan"].update(
        {
            "action": "replace" if state["exists"] else "create",
            "database": db,
            "restore_into": temp,
            "rename": ({db: old, temp: db} if state["exists"] else {temp: db}),
            "drop": [old] if state["exists"] and not keep_old else [],
            "terminate_sessions": sessions,
            "globals": bool(info["globals_path"]),
            "jobs": jobs,
            "copy_dump_into_container": bool(staged),
            "read_dump_by_mount": r.reads_by_mount(info, jobs),
            "space": space,
            "expected_row_counts": {k: v[0] if v[0] == v[1] else list(v) for k, v in expected.items()},
            # Check mode can only estimate "newer" from the backup's start time; the apply
            # compares the target with the restored copy, table by table.
            "newer_data_suspected": estimate,
        }
    )
    if space.get("error"):
        raise Refused(space["error"])
    result["changed"] = True
    if check_mode:
        if estimate:
            result["warnings"] = [
                "the target may hold data newer than backup %s (%s); the restore will refuse unless force=true"
                % (manifest["backup_id"], ", ".join(e["table"] for e in estimate))
            ]
        return result
    result["globals"] = r.restore_globals(info, r.target.user, roles)
    if result["globals"]["created"]:
        r.changes.append("created roles %s" % ", ".join(result["globals"]["created"]))
    r.step("globals (roles)")
    r.create_db(temp)
    r.step("create the temporary database")
    swapped = False
    try:
        r.restore_full(info, temp, jobs)
        r.step("pg_restore into the temporary database")
        # The restore_log row and the state fingerprint, taken before anyone else can connect; the
        # canary counts come from the fingerprint's own row counts (one scan, one psql call). A
        # refusal below drops the temporary database with the row.
        log_sql = log_insert_sql(
            manifest["backup_id"],
            info["sha256"],
            "full",
            None,
            (manifest.get("source") or {}).get("db_name"),
            manifest["created_at"],
            force,
            returning=True,
        )
        counts = r.log_and_counts(log_sql, temp, canaries)
        r.step("restore log, fingerprint and canary counts")
        problems = count_mismatches(expected, counts)
        if problems:
            raise RestoreError(
                "the restored copy does not match backup %s (%s); database %s was left untouched"
                % (manifest["backup_id"], "; ".join(problems), db)
            )
        if state["exists"] and state["user_tables"]:
            newer = newer_tables(r.newest(db, newer_columns), r.newest(temp, newer_columns))
            result["newer_data"] = newer
            if newer and not force:
                raise Refused(
                    "database %s holds data newer than backup %s (%s); restoring would lose it. Take a backup first, "
                    "or set force=true to overwrite; nothing was changed"
                    % (
                        db,
                        manifest["backup_id"],
                        "; ".join(
                            "%s newest %s, backup %s" % (n["table"], n["target_newest"], n["backup_newest"]) for n in newer
                        ),
                    )
                )
            r.step("newer-data check")
        if state["exists"]:
            r.allow_connections(db, False)
            try:
                test_pause("connections")
                result["sessions_terminated"] = r.terminate(db)
                r.psql_script(swap_sql(db, temp, old, old_comment(manifest["backup_id"], keep_old)), "postgres")
            except (RestoreError, PgExecError):
                try:
                    r.allow_connections(db, True)
                except PgExecError as exc:
                    result["leftovers"] = [
                        {
                            "database": db,
                            "state": "refuses connections: %s" % exc,
                            "fix": "ALTER DATABASE %s WITH ALLOW_CONNECTIONS true; (or run the restore again: it repairs this)"
                            % quote_ident(db),
                        }
                    ]
                    r.changes.append("left %s refusing connections" % db)
                raise
            swapped = True
            r.changes.append("replaced database %s with backup %s" % (db, manifest["backup_id"]))
            r.step("swap (rename in one transaction)")
            test_pause("drop")
            if keep_old:
                r.allow_connections(old, True)
                result["old_db"] = old
            else:
                error = r.drop_db(old)
                if error:
                    result.setdefault("warnings", []).append(
                        "the replaced database %s could not be dropped (%s): it refuses connections and holds disk; "
                        "the next restore run drops it, or run DROP DATABASE %s WITH (FORCE);" % (old, error, quote_ident(old))
                    )
                    result["leftovers"] = [
                        {
                            "database": old,
                            "state": "refuses connections; drop failed: %s" % error,
                            "fix": "run the restore again, or DROP DATABASE %s WITH (FORCE);" % quote_ident(old),
                        }
                    ]
            r.step("keep the replaced database" if keep_old else "drop the replaced database")
        else:
            # A database the collection created keeps a mark (scratch databases are dropped only when marked).
            r.psql_script(
                "BEGIN;\nALTER DATABASE %s RENAME TO %s;\nCOMMENT ON DATABASE %s IS %s;\nCOMMIT;\n"
                % (quote_ident(temp), quote_ident(db), quote_ident(db), quote_literal(created_comment(manifest["backup_id"]))),
                "postgres",
            )
            swapped = True
            r.changes.append("created database %s from backup %s" % (db, manifest["backup_id"]))
            r.step("rename into place")
    finally:
        if not swapped:
            error = r.drop_db(temp)
            if error:
                result["leftovers"] = result.get("leftovers", []) + [
                    {
                        "database": temp,
                        "state": "half-built temporary database; drop failed: %s" % error,
                        "fix": "run the restore again (it drops it first), or DROP DATABASE %s WITH (FORCE);" % quote_ident(temp),
                    }
                ]
                r.changes.append("left the temporary database %s" % temp)
    result["restored"] = True
    # The canary counts of the restored copy, checked against the manifest before the swap: a
    # rename changes no row, so they are not counted a second time (a full scan of each table).
    result["row_counts"] = counts
    return result


__all__ = ["PgExecError", "Refused", "RestoreError", "Restorer", "run_restore"]

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
"""

from __future__ import annotations

# ruff: noqa: S608 -- every identifier goes through quote_ident and every value through quote_literal.

import datetime
import gzip
import json
import os
import re
import shlex

from ansible_collections.ner11.ops.plugins.module_utils.catalog import (
    Catalog,
    CatalogError,
    choose_identity,
    isoformat,
    parse_time,
    utcnow,
    validate_backup_id,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgExecError, quote_ident, quote_literal

LOG_SCHEMA = "ner11_ops"
LOG_TABLE = "ner11_ops.restore_log"
TEMP_SUFFIX = "__ner11_restore"
OLD_INFIX = "__ner11_old_"
FORMATS = ("custom", "directory", "plain")
DEFAULT_NEWER_COLUMNS = ("created_at", "updated_at")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_TABLE_RE = re.compile(r"^(?:([A-Za-z_][A-Za-z0-9_$]{0,62})\.)?([A-Za-z_][A-Za-z0-9_$]{0,62})$")
_ROLE_STMT_RE = re.compile(r'^(CREATE|ALTER)\s+ROLE\s+("(?:[^"]|"")+"|[^\s;]+)', re.IGNORECASE)
_MAX_IDENT = 63
# mktemp -d (0700) inside the DB container, per database; removed after the restore
# (and by the next run's repair when a run was killed).
CONTAINER_STAGE_PREFIX = "/tmp/ner11-restore-"  # noqa: S108
# Databases this collection creates or renames carry a COMMENT starting with MARK;
# only those are ever dropped by a repair.
MARK = "ner11.ops:"
TEMP_COMMENT = MARK + " temporary database of a restore in progress (dropped by the next run if left)"
DROP_PENDING = "drop pending"
# Test-only hook (docs/restore.md "Interrupted restores"): with NER11_OPS_TEST_PAUSE_AT=<phase>
# the module writes <NER11_OPS_TEST_PAUSE_DIR>/<phase> and sleeps at that phase, so a test can
# kill the whole job there. Phases: copy, pg_restore, connections, drop.
PAUSE_PHASES = ("copy", "pg_restore", "connections", "drop")


class RestoreError(Exception):
    """The restore cannot go on; the message names the cause and the fix."""


class Refused(RestoreError):
    """A guard refused the restore (nothing was touched)."""


def test_pause(phase, environ=None):
    """The test-only pause hook: a no-op unless NER11_OPS_TEST_PAUSE_AT names this phase."""
    import time

    environ = os.environ if environ is None else environ
    if environ.get("NER11_OPS_TEST_PAUSE_AT") != phase:
        return False
    directory = environ.get("NER11_OPS_TEST_PAUSE_DIR")
    if directory:
        with open(os.path.join(directory, phase), "w") as fh:
            fh.write("%d\n" % os.getpid())
    time.sleep(float(environ.get("NER11_OPS_TEST_PAUSE_SECONDS") or 300))
    return True


PROTECTED_DBS = ("postgres", "template0", "template1")
SCRATCH_COMMENT = MARK + " scratch database (test restore or DR drill), dropped after use"


def created_comment(backup_id):
    return "%s created by the restore of %s" % (MARK, backup_id)


def scratch_refusal(name, source_db=None):
    """Why ``name`` must not be used as a scratch database (None when it may) (pure).

    Scratch databases are dropped WITH (FORCE) without a confirmation, so they can
    never be a system database, the backed-up (source) database, or one of the
    names a restore uses for its own temporary and replaced databases.
    """
    if name in PROTECTED_DBS:
        return (
            "scratch database %s is a system database (postgres, template0 and template1 are never used); choose another name"
            % name
        )
    if source_db and name == source_db:
        return "scratch database %s is the backed-up database itself; choose another name" % name
    if name.endswith(TEMP_SUFFIX) or OLD_INFIX in name:
        return "scratch database %s uses a name the restore keeps for itself; choose another name" % name
    return None


def marked_sql(name):
    """``datname, comment`` of database ``name`` (no row when it does not exist).

    The name comes first so that a database without a comment still gives a non-empty row.
    """
    return (
        "SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = %s;"
        % quote_literal(name)
    )


def stage_pattern(db):
    return CONTAINER_STAGE_PREFIX + db + "-"


def old_comment(backup_id, keep_old):
    return "%s replaced by the restore of %s; %s" % (MARK, backup_id, "kept (keep_old)" if keep_old else DROP_PENDING)


def classify_leftovers(db, rows):
    """What a killed or failed run left, from ``(datname, datallowconn, comment)`` rows (pure).

    Returns {target_blocked, temp (None or {name, ours}), old: [{name, allow, comment, drop}]}.
    ``drop`` is true only for a database this collection renamed and meant to drop.
    """
    temp = temp_db_name(db)
    out = {"target_exists": False, "target_blocked": False, "temp": None, "old": []}
    prefix = old_prefix(db)
    for name, allow, comment in rows:
        allowed = allow in (True, "t", "true")
        comment = comment or ""
        if name == db:
            out["target_exists"] = True
            out["target_blocked"] = not allowed
        elif name == temp:
            out["temp"] = {"name": name, "ours": comment.startswith(MARK), "allow": allowed}
        elif name.startswith(prefix):
            ours = comment.startswith(MARK)
            out["old"].append(
                {"name": name, "allow": allowed, "comment": comment, "ours": ours, "drop": ours and DROP_PENDING in comment}
            )
    out["old"].sort(key=lambda o: o["name"])
    return out


def repair_plan(db, found, stage_dirs=(), clients=()):
    """The repair steps (descriptions) for what ``classify_leftovers`` found (pure).

    Raises Refused when a database with our temporary name was not made by us.
    """
    steps = []
    if found["temp"] and not found["temp"]["ours"]:
        raise Refused(
            "database %s exists but was not created by ner11.ops (it has no ner11.ops comment); rename or drop it "
            "yourself before restoring %s; nothing was changed" % (found["temp"]["name"], db)
        )
    for client in clients:
        steps.append("stop %s still running in the database container (pid %s)" % (client["tool"], client["pid"]))
    if found["target_blocked"]:
        steps.append("allow connections to %s again (a killed restore left them disallowed)" % db)
    if found["temp"]:
        steps.append("drop the half-built temporary database %s" % found["temp"]["name"])
    for old in found["old"]:
        if old["drop"]:
            steps.append("drop %s (the database a completed restore replaced; it was due to be dropped)" % old["name"])
    for stage in stage_dirs:
        steps.append("remove the dump copy %s in the database container" % stage)
    return steps


def leftover_report(db, found):
    """Leftovers this run does not remove: what they are and what to run (for ``leftovers``)."""
    out = []
    for old in found["old"]:
        if old["drop"]:
            continue
        why = "kept on request (keep_old)" if old["ours"] else "not marked by ner11.ops, so never dropped automatically"
        out.append(
            {
                "database": old["name"],
                "state": "%s; %s" % ("accepts connections" if old["allow"] else "refuses connections", why),
                "fix": "inspect it, then DROP DATABASE %s; (it holds the content %s had before a restore)"
                % (quote_ident(old["name"]), db),
            }
        )
    return out


# -- names -------------------------------------------------------------------
def validate_db_name(name, what="db_name"):
    if not isinstance(name, str) or not _IDENT_RE.match(name):
        raise RestoreError("%s %r is not a plain SQL identifier (letters, digits, '_', at most 63 characters)" % (what, name))
    return name


def split_table(name):
    """``'public.t'`` or ``'t'`` -> ``('public', 't')`` (schema defaults to public)."""
    match = _TABLE_RE.match(name or "")
    if not match:
        raise RestoreError("table %r is not a plain [schema.]table name; fix the tables option" % (name,))
    return match.group(1) or "public", match.group(2)


def qualified(name):
    schema, table = split_table(name)
    return "%s.%s" % (quote_ident(schema), quote_ident(table))


def _suffixed(db, suffix):
    return db[: _MAX_IDENT - len(suffix)] + suffix


def temp_db_name(db):
    return _suffixed(db, TEMP_SUFFIX)


def old_prefix(db):
    """What every ``old_db_name(db)`` starts with (the 15-character timestamp follows)."""
    return db[: _MAX_IDENT - len(OLD_INFIX) - 15] + OLD_INFIX


def old_db_name(db, now=None):
    return _suffixed(db, OLD_INFIX + (now or utcnow()).strftime("%Y%m%dT%H%M%S"))


# -- the backup ----------------------------------------------------------------
def partial_reason(manifest):
    """Why a manifest is not a FULL database backup (None when it is one), G9."""
    if manifest.get("tables"):
        return "it holds only the tables %s" % ", ".join(manifest["tables"])
    scope = manifest.get("scope")
    if scope not in (None, "full", "database"):
        return "its scope is %r" % scope
    if manifest.get("partial"):
        return "it is marked partial"
    for flag in ("schema_only", "data_only"):
        if manifest.get(flag):
            return "it is %s" % flag.replace("_", "-")
    if manifest.get("format") not in FORMATS:
        return "its format %r is not one of %s" % (manifest.get("format"), ", ".join(FORMATS))
    return None


def select_latest(catalog, db_name, verify, instance=None, source_host=None):
    """Newest good FULL backup of ``db_name`` of one source identity: (manifest, skipped[]) (G9).

    Good: verified and not failed by a recorded backup_verify (``Catalog.list``).
    Only one source identity (host, instance) may qualify: ``source_host`` picks
    one; when several hold backups of the database, ``catalog.choose_identity``
    raises CatalogError listing them (a restore never guesses another host's data).
    ``verify(backup_id)`` returns the checksum problems of a backup; a backup
    with problems is skipped (and reported), as are partial, single-table and
    schema/data-only backups. ``.partial-*`` directories are never listed.
    """
    match = {"db_name": db_name}
    if instance:
        match["instance"] = instance
    skipped = []
    candidates, _identity = choose_identity(catalog.list("database", **match), "database %s" % db_name, source_host)
    for manifest in reversed(candidates):
        reason = partial_reason(manifest)
        if reason:
            skipped.append({"backup_id": manifest["backup_id"], "reason": "not a full backup: " + reason})
            continue
        problems = verify(manifest["backup_id"])
        if problems:
            skipped.append({"backup_id": manifest["backup_id"], "reason": "fails verification: " + "; ".join(problems)})
            continue
        return manifest, skipped
    return None, skipped


def resolve_backup(backup_dir=None, backup_id=None, path=None, latest=False, source_db=None, instance=None, source_host=None):
    """Find and verify the backup to restore; returns (catalog, manifest, backup_path, skipped)."""
    if path:
        path = os.path.normpath(path)
        root, kind, found_id = (
            os.path.dirname(os.path.dirname(path)),
            os.path.basename(os.path.dirname(path)),
            os.path.basename(path),
        )
        if kind != "database":
            raise RestoreError(
                "path %s is not a database backup: expected <backup_dir>/database/<backup_id> (the catalog layout)" % path
            )
        if backup_id and backup_id != found_id:
            raise RestoreError("backup_id %s and path %s name different backups; give only one" % (backup_id, path))
        backup_id = found_id
        backup_dir = root
    if not backup_dir:
        raise RestoreError("set backup_dir (the catalog root) or path (a backup directory)")
    try:
        catalog = Catalog(backup_dir)
        skipped = []
        if latest and not backup_id:
            manifest, skipped = select_latest(
                catalog, source_db, lambda bid: catalog.verify("database", bid), instance, source_host
            )
            if manifest is None:
                raise RestoreError(
                    "no verified full backup of database %s%s in %s/database%s; take one with ner11.ops.pg_backup "
                    "or name a backup with backup_id"
                    % (source_db, " from host %s" % source_host if source_host else "", catalog.root, _skipped_text(skipped))
                )
        else:
            validate_backup_id(backup_id)
            if not os.path.isdir(catalog.path("database", backup_id)):
                raise RestoreError(
                    "backup %s not found in %s/database; list the catalog for valid ids" % (backup_id, catalog.root)
                )
            manifest = catalog.read_manifest("database", backup_id)
            problems = catalog.verify("database", backup_id)
            if problems:
                raise RestoreError(
                    "backup %s fails verification (%s); it is damaged: restore another backup" % (backup_id, "; ".join(problems))
                )
            if manifest.get("status") != "verified":
                raise RestoreError(
                    "backup %s has status %r, not verified; restore another backup" % (backup_id, manifest.get("status"))
                )
    except CatalogError as exc:
        raise RestoreError(str(exc)) from None
    return catalog, manifest, catalog.path("database", manifest["backup_id"]), skipped


def _skipped_text(skipped):
    if not skipped:
        return ""
    return " (skipped: %s)" % "; ".join("%s %s" % (s["backup_id"], s["reason"]) for s in skipped)


def dump_info(manifest, backup_path):
    """Format, dump path, compression and globals file of a database manifest."""
    fmt = manifest.get("format")
    if fmt not in FORMATS:
        raise RestoreError(
            "backup %s has format %r; pg_restore handles %s" % (manifest.get("backup_id"), fmt, ", ".join(FORMATS))
        )
    artifact = manifest.get("artifact") or manifest.get("dump_path")
    if not artifact:
        artifact = {"custom": "dump.pgdump", "directory": "dump", "plain": "dump.sql"}[fmt]
    if artifact.startswith("/") or ".." in artifact.split("/"):
        raise RestoreError("backup %s names an artifact outside itself (%r)" % (manifest.get("backup_id"), artifact))
    full = os.path.join(backup_path, artifact)
    if fmt == "directory" and not os.path.isfile(os.path.join(full, "toc.dat")):
        raise RestoreError(
            "backup %s: %s/toc.dat is missing; the directory dump is incomplete" % (manifest.get("backup_id"), artifact)
        )
    if fmt != "directory" and not os.path.isfile(full):
        raise RestoreError("backup %s: dump file %s is missing" % (manifest.get("backup_id"), artifact))
    compression = str(manifest.get("compression") or "none")
    decompress = None
    if fmt == "plain":
        if artifact.endswith(".gz") or compression.startswith("gzip"):
            decompress = "gzip"
        elif artifact.endswith(".zst") or compression.startswith("zstd"):
            decompress = "zstd"
    globals_name = manifest.get("globals")
    if globals_name is None and any(f.get("path") == "globals.sql" for f in manifest.get("files", [])):
        globals_name = "globals.sql"
    globals_path = None
    if globals_name:
        if globals_name.startswith("/") or ".." in globals_name.split("/"):
            raise RestoreError("backup %s names a globals file outside itself" % manifest.get("backup_id"))
        globals_path = os.path.join(backup_path, globals_name)
        if not os.path.isfile(globals_path):
            raise RestoreError("backup %s: globals file %s is missing" % (manifest.get("backup_id"), globals_name))
    return {
        "format": fmt,
        "artifact": artifact,
        "path": full,
        "decompress": decompress,
        "globals_path": globals_path,
        "created_at": manifest["created_at"],
        "sha256": manifest.get("sha256") or "",
    }


def expected_counts(manifest, tables=None):
    """The manifest's canary row counts as ``{table: (low, high)}`` (only known ones).

    ``row_counts_after`` (written by pg_backup when rows changed during the
    dump) widens the range: the dump holds a count between the two (G23).
    """
    counts = {}
    wanted = None
    if tables:
        wanted = {split_table(t) for t in tables}
    after = manifest.get("row_counts_after") or {}
    for name, value in (manifest.get("row_counts") or {}).items():
        if value is None:
            continue
        try:
            key = split_table(name)
        except RestoreError:
            continue
        if wanted is not None and key not in wanted:
            continue
        other = after.get(name, value)
        other = value if other is None else other
        counts[name] = (min(int(value), int(other)), max(int(value), int(other)))
    return counts


def count_mismatches(expected, observed):
    """Human-readable mismatches between expected ``(low, high)`` ranges and observed row counts."""
    out = []
    for name, (low, high) in sorted(expected.items()):
        got = observed.get(name)
        if got is None or not low <= got <= high:
            want = low if low == high else "%d-%d" % (low, high)
            out.append("%s: %s rows, backup has %s" % (name, "missing" if got is None else got, want))
    return out


# -- globals ---------------------------------------------------------------------
def _unquote_role(token):
    if token.startswith('"') and token.endswith('"'):
        return token[1:-1].replace('""', '"')
    return token


def filter_globals(sql, existing_roles, login_user):
    """Keep what creates missing roles; never touch an existing role (or the connecting one).

    ``pg_dumpall --globals-only`` writes one statement per line. ``CREATE ROLE``
    and ``ALTER ROLE`` of roles that already exist are dropped, so a restore
    never changes an existing role's attributes or password, and never the
    role it connects as. Returns (sql, created_roles, kept_roles).
    """
    existing = set(existing_roles) | {login_user}
    out = []
    created, kept = [], []
    for line in sql.splitlines():
        match = _ROLE_STMT_RE.match(line.strip())
        if match:
            role = _unquote_role(match.group(2))
            if role in existing:
                if role not in kept:
                    kept.append(role)
                continue
            if match.group(1).upper() == "CREATE" and role not in created:
                created.append(role)
        out.append(line)
    return "\n".join(out) + "\n", created, kept


def read_globals(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return fh.read().decode("utf-8")


# -- decisions ---------------------------------------------------------------------
def decide(db_name, backup, target, if_exists="fail", confirm=None, force=False, tables=None):
    """What to do, from the backup and the observed target state (pure).

    ``backup``: {backup_id, sha256, created_at (epoch)}.
    ``target``: {exists, user_tables, applied (latest restore_log row or None:
    {backup_id, sha256, scope, tables, applied_at, source_created_at} epochs),
    changes (``fingerprint_diff`` of the applied restore: [] when the database
    is still in the state it produced; missing = unknown = changed)}.
    Returns {action, changed, reason}; raises Refused when a guard says no.
    Actions: ``none`` (this backup is applied and nothing was written since;
    never with ``force``), ``skip``, ``create`` (no or an empty target),
    ``replace``, ``tables``.
    """
    applied = target.get("applied")
    if tables:
        if not target.get("exists"):
            raise Refused("database %s does not exist; a selective restore (tables) needs the existing database" % db_name)
        if (
            applied
            and applied.get("scope") == "tables"
            and applied.get("backup_id") == backup["backup_id"]
            and sorted(applied.get("tables") or []) == sorted(tables)
            and not target.get("changes", ["no state fingerprint"])
            and target.get("counts_match", True)
            and not force
        ):
            return {
                "action": "none",
                "changed": False,
                "reason": "tables %s were already restored from this backup" % ", ".join(tables),
            }
        if confirm != db_name:
            raise Refused(
                "restoring tables %s replaces their rows in %s: set confirm=%s to proceed (nothing was changed)"
                % (", ".join(tables), db_name, db_name)
            )
        return {
            "action": "tables",
            "changed": True,
            "reason": "replace the rows of %s%s" % (", ".join(tables), _since(applied, backup, target)),
        }

    if (
        target.get("exists")
        and applied
        and applied.get("scope", "full") == "full"
        and applied.get("backup_id") == backup["backup_id"]
        and (not backup.get("sha256") or applied.get("sha256") == backup["sha256"])
        and not target.get("changes", ["no state fingerprint"])
        and not force
    ):
        return {"action": "none", "changed": False, "reason": "backup %s is already the applied one" % backup["backup_id"]}
    if not target.get("exists"):
        return {"action": "create", "changed": True, "reason": "database %s does not exist" % db_name}
    if not target.get("user_tables"):
        return {"action": "create", "changed": True, "reason": "database %s exists but holds no user tables" % db_name}
    if if_exists == "skip":
        return {
            "action": "skip",
            "changed": False,
            "reason": "database %s already holds %d user tables and if_exists=skip" % (db_name, target["user_tables"]),
        }
    if if_exists != "replace":
        raise Refused(
            "database %s already holds %d user tables: set if_exists=replace and confirm=%s to replace it "
            "(or if_exists=skip); nothing was changed" % (db_name, target["user_tables"], db_name)
        )
    if confirm != db_name:
        raise Refused("replacing database %s needs confirm=%s (got %r); nothing was changed" % (db_name, db_name, confirm))
    if applied and not force and applied.get("source_created_at") and applied["source_created_at"] > backup["created_at"]:
        raise Refused(
            "database %s holds a newer restore (backup %s, taken %s) than backup %s (taken %s): restoring would roll "
            "it back; set force=true if that is intended"
            % (
                db_name,
                applied.get("backup_id"),
                _iso(applied["source_created_at"]),
                backup["backup_id"],
                _iso(backup["created_at"]),
            )
        )
    return {"action": "replace", "changed": True, "reason": "replace database %s%s" % (db_name, _since(applied, backup, target))}


def _since(applied, backup, target):
    """Why an applied backup is restored again (for ``reason``)."""
    if not applied or applied.get("backup_id") != backup["backup_id"]:
        return ""
    changes = target.get("changes") or []
    if not changes:
        return " (forced)"
    return ": changed since backup %s was restored (%s)" % (backup["backup_id"], "; ".join(changes[:5]))


def newer_tables(target_newest, backup_newest):
    """Tables whose newest timestamp in the target is later than anything in the backup.

    Both map ``schema.table`` -> newest epoch (None for an empty table). A table
    that has timestamped rows in the target but is absent or empty in the
    backup counts as newer.
    """
    out = []
    for table, value in sorted(target_newest.items()):
        if value is None:
            continue
        theirs = backup_newest.get(table)
        if theirs is None or value > theirs:
            out.append({"table": table, "target_newest": _iso(value), "backup_newest": _iso(theirs) if theirs else None})
    return out


def _iso(epoch):
    if epoch is None:
        return None
    return isoformat(datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc))


def epoch(text):
    return parse_time(text).timestamp()


# -- SQL -----------------------------------------------------------------------------
USER_TABLES_SQL = (
    """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', '%s')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%' ORDER BY 1, 2;
"""
    % LOG_SCHEMA
)

LOG_DDL = """
CREATE SCHEMA IF NOT EXISTS %(schema)s;
COMMENT ON SCHEMA %(schema)s IS 'ner11.ops bookkeeping: which backup was restored here (see docs/restore.md)';
CREATE TABLE IF NOT EXISTS %(table)s (
    id bigserial PRIMARY KEY,
    backup_id text NOT NULL,
    sha256 text,
    scope text NOT NULL DEFAULT 'full',
    tables text[],
    source_db text,
    source_created_at timestamptz,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    forced boolean NOT NULL DEFAULT false,
    tool text
);
ALTER TABLE %(table)s ADD COLUMN IF NOT EXISTS fingerprint text;
""" % {"schema": LOG_SCHEMA, "table": LOG_TABLE}

HAS_LOG_SQL = "SELECT to_regclass('%s') IS NOT NULL;" % LOG_TABLE
LATEST_LOG_SQL = (
    "SELECT row_to_json(r)::text FROM (SELECT backup_id, sha256, scope, tables, "
    "extract(epoch FROM applied_at)::float8 AS applied_at, "
    "extract(epoch FROM source_created_at)::float8 AS source_created_at, "
    "to_jsonb(l) ->> 'fingerprint' AS fingerprint "
    "FROM %s l ORDER BY applied_at DESC, id DESC LIMIT 1) r;" % LOG_TABLE
)


def log_insert_sql(backup_id, sha256, scope, tables, source_db, source_created_at, forced):
    """The restore_log row, with the state fingerprint taken in the same statement."""
    tables_sql = "ARRAY[%s]::text[]" % ", ".join(quote_literal(t) for t in tables) if tables else "NULL"
    return (
        LOG_DDL + "INSERT INTO %s (backup_id, sha256, scope, tables, source_db, source_created_at, forced, tool, "
        "fingerprint) VALUES (%s, %s, %s, %s, %s, %s::timestamptz, %s, 'ner11.ops.pg_restore', (%s));\n"
        % (
            LOG_TABLE,
            quote_literal(backup_id),
            quote_literal(sha256 or ""),
            quote_literal(scope),
            tables_sql,
            quote_literal(source_db or ""),
            quote_literal(source_created_at),
            "true" if forced else "false",
            fingerprint_sql(None, tables or None),
        )
    )


def timestamp_columns_sql(columns):
    cols = ", ".join(quote_literal(c) for c in columns)
    return """
SELECT n.nspname, c.relname, a.attname FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attname IN (%s) AND a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', '%s') AND n.nspname NOT LIKE 'pg_toast%%'
ORDER BY 1, 2, 3;
""" % (cols, LOG_SCHEMA)


def newest_sql(columns_by_table):
    """One query: ``schema.table|epoch`` of the newest timestamp per table (None when empty)."""
    parts = []
    for table, cols in sorted(columns_by_table.items()):
        schema, name = split_table(table)
        greatest = "GREATEST(%s)" % ", ".join("max(%s)" % quote_ident(c) for c in cols)
        parts.append(
            "SELECT %s, extract(epoch FROM %s::timestamptz)::float8 FROM %s.%s"
            % (quote_literal(table), greatest, quote_ident(schema), quote_ident(name))
        )
    return " UNION ALL ".join(parts) + ";" if parts else None


# -- the state fingerprint -----------------------------------------------------------
# "The database is in the state backup B produced" is decided from a fingerprint
# taken right after the restore and compared on every later run (docs/restore.md,
# "When a re-run is a no-op"). Statistics counters are not used: TRUNCATE does not
# count as deletes, counters reach pg_stat_* only after a delay and a crash resets
# them. What is used can only change through a write:
#   * per relation (tables, matviews, sequences, views, partitioned parents): its oid,
#     its relfilenode (TRUNCATE, VACUUM FULL, CLUSTER, rewrites change it) and the
#     xmin of its pg_class row (DDL: ALTER, GRANT, ... write a new row);
#   * per table: the number of rows and the number of rows whose xmin is at or after
#     a horizon ``h`` (the oldest transaction still running when the fingerprint was
#     taken). INSERT and UPDATE always write row versions with a new xmin; DELETE
#     lowers the count. Both are exact for committed data, with no delay.
#   * per sequence: last_value and is_called.
#   * tables added or dropped change the set of relations.
# The schema ner11_ops (the restore log itself) is left out. When more than 2^31
# transactions ran since ``h`` (xmin comparison wraps), or the fingerprint cannot be
# read, the database counts as changed: restoring again is the safe direction.
FINGERPRINT_VERSION = 1
_XID_SPACE = 4294967296
_XID_HALF = 2147483648


def fingerprint_sql(horizon=None, tables=None):
    """One SQL statement returning the fingerprint JSON (see above).

    ``horizon``: None takes a new one (when recording); the recorded value when
    comparing. ``tables``: limit to these tables and the sequences they own.
    """
    h = "txid_snapshot_xmin(txid_current_snapshot())" if horizon is None else "%d::bigint" % int(horizon)
    if tables:
        names = "ARRAY[%s]::text[]" % ", ".join(quote_literal(qualified(t)) for t in tables)
        scope = (
            "c.oid IN (SELECT to_regclass(x)::oid FROM unnest(%s) x UNION SELECT d.objid FROM pg_depend d "
            "WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') AND d.refobjid IN "
            "(SELECT to_regclass(x)::oid FROM unnest(%s) x))" % (names, names)
        )
    else:
        scope = (
            "c.relkind IN ('r', 'p', 'm', 'S', 'v') AND n.nspname NOT IN ('pg_catalog', 'information_schema', '%s') "
            "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'" % LOG_SCHEMA
        )
    count = (
        "SELECT count(*)::text || '/' || (count(*) FILTER (WHERE ((xmin::text::bigint - %%s + %d) %%%% %d) < %d))::text "
        "AS c FROM ONLY %%I.%%I" % (_XID_SPACE, _XID_SPACE, _XID_HALF)
    )
    data = (
        "CASE WHEN c.relkind IN ('r', 'm') AND c.relispopulated THEN (xpath('/row/c/text()', query_to_xml(format(%s, "
        "hz.h %% %d, n.nspname, c.relname), false, true, '')))[1]::text "
        "WHEN c.relkind = 'S' THEN (xpath('/row/c/text()', query_to_xml(format("
        "'SELECT last_value::text || ''/'' || is_called::text AS c FROM %%I.%%I', n.nspname, c.relname), "
        "false, true, '')))[1]::text ELSE '' END" % (quote_literal(count), _XID_SPACE)
    )
    return (
        "WITH hz AS (SELECT %s AS h) SELECT json_build_object('v', %d, 'h', hz.h, "
        "'next', txid_snapshot_xmax(txid_current_snapshot()), "
        "'db_oid', (SELECT oid FROM pg_database WHERE datname = current_database()), "
        "'rels', coalesce((SELECT json_object_agg(n.nspname || '.' || c.relname, json_build_array(c.relkind::text, "
        "c.oid, pg_relation_filenode(c.oid), c.xmin::text, %s) ORDER BY n.nspname, c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE %s), '{}'::json))::text FROM hz"
        % (h, FINGERPRINT_VERSION, data, scope)
    )


def fingerprint_diff(recorded, current):
    """Why ``current`` is not the recorded state: a list of reasons ([] = same state).

    Pure. ``recorded`` is what the restore stored (None when it stored none:
    an older restore, or a log copied in by a backup); ``current`` is the same
    query run now with the recorded horizon (None when it could not be read).
    """
    if not recorded or not isinstance(recorded, dict) or recorded.get("v") != FINGERPRINT_VERSION:
        return ["no state fingerprint was recorded with that restore"]
    if not current or not isinstance(current, dict):
        return ["the state fingerprint could not be read"]
    reasons = []
    if current.get("db_oid") != recorded.get("db_oid"):
        reasons.append("the database was dropped and created again")
    try:
        if int(current.get("next")) - int(recorded.get("h")) >= _XID_HALF:
            reasons.append("too many transactions since the restore to compare row versions")
    except (TypeError, ValueError):
        reasons.append("the transaction horizon is unreadable")
    old, new = recorded.get("rels") or {}, current.get("rels") or {}
    for name in sorted(set(old) | set(new)):
        if name not in new:
            reasons.append("%s was dropped" % name)
            continue
        if name not in old:
            reasons.append("%s was created" % name)
            continue
        a, b = old[name], new[name]
        if list(a[:3]) != list(b[:3]):
            reasons.append("%s was rewritten or truncated" % name)
        elif a[3] != b[3]:
            reasons.append("%s: its definition or privileges changed" % name)
        if a[0] == "S":
            if a[4] != b[4]:
                reasons.append("%s: sequence moved from %s to %s" % (name, a[4], b[4]))
            continue
        rows_a, _sep, newer_a = str(a[4]).partition("/")
        rows_b, _sep, newer_b = str(b[4]).partition("/")
        if rows_a != rows_b:
            reasons.append("%s: %s rows, %s after the restore" % (name, rows_b or "?", rows_a or "?"))
        elif newer_a != newer_b:
            reasons.append("%s: rows inserted or updated since the restore" % name)
    return reasons


def parse_fingerprint(text):
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def sessions_sql(db):
    return (
        "SELECT pid, coalesce(application_name, ''), coalesce(usename, ''), coalesce(state, '') "
        "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid;" % quote_literal(db)
    )


def terminate_sql(db):
    # G48: scoped by datname; waits up to 5 s for each backend to exit (PostgreSQL >= 14).
    return (
        "SELECT pid, coalesce(application_name, ''), pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid;" % quote_literal(db)
    )


def swap_sql(db, temp, old, comment=None):
    """Both renames in one transaction: either the restored database is in place, or nothing moved.

    The replaced database is marked (``comment``) in the same transaction, so a
    run killed before the drop leaves a database the next run knows it may drop;
    the restored one loses the temporary mark.
    """
    mark = "COMMENT ON DATABASE %s IS %s;\n" % (quote_ident(old), quote_literal(comment)) if comment else ""
    return (
        "BEGIN;\nALTER DATABASE %s RENAME TO %s;\nALTER DATABASE %s RENAME TO %s;\n%sCOMMENT ON DATABASE %s IS NULL;\nCOMMIT;\n"
        % (
            quote_ident(db),
            quote_ident(old),
            quote_ident(temp),
            quote_ident(db),
            mark,
            quote_ident(db),
        )
    )


def leftovers_sql(db):
    temp = temp_db_name(db)
    prefix = old_prefix(db)
    return (
        "SELECT datname, datallowconn, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
        "WHERE datname IN (%s, %s) OR left(datname, %d) = %s ORDER BY 1;"
        % (quote_literal(db), quote_literal(temp), len(prefix), quote_literal(prefix))
    )


# Lists, inside the DB container, the client processes working on the temporary
# database (pg_restore/psql; "$1" is its name) and the dump copies of this database.
CONTAINER_SCAN = r"""
for p in /proc/[0-9]*; do
  c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case "$c" in *" $1 "*|*" $1") ;; *) continue ;; esac
  case "$c" in pg_restore\ *|psql\ *|*/pg_restore\ *|*/psql\ *) echo "pid ${p#/proc/} ${c%% *}" ;; esac
done
for d in "$2"*; do [ -d "$d" ] && echo "stage $d"; done
exit 0
"""


def table_restore_wrapper(tables, expected, check_newer_cols, forced):
    """SQL around ``pg_restore --data-only`` output, run by psql in ONE transaction (G30).

    Before: remember the newest timestamps, TRUNCATE exactly these tables (no
    CASCADE: a table other tables reference makes TRUNCATE fail, nothing lost).
    After: fail (and roll everything back) when a row count differs from the
    manifest or when the table held rows newer than anything the backup has.
    """
    quals = [qualified(t) for t in tables]
    pre = ["SET lock_timeout = '30s';", "CREATE TEMP TABLE ner11_before (t text, newest timestamptz) ON COMMIT DROP;"]
    for table in tables:
        cols = check_newer_cols.get(table) or []
        if cols and not forced:
            pre.append(
                "INSERT INTO ner11_before SELECT %s, GREATEST(%s) FROM %s;"
                % (quote_literal(table), ", ".join("max(%s)::timestamptz" % quote_ident(c) for c in cols), qualified(table))
            )
    pre.append("TRUNCATE ONLY %s;" % ", ".join(quals))
    post = []
    for table in tables:
        cols = check_newer_cols.get(table) or []
        if cols and not forced:
            post.append(
                "DO $ner11$ BEGIN IF (SELECT newest FROM ner11_before WHERE t = %s) > "
                "(SELECT GREATEST(%s) FROM %s) OR ((SELECT newest FROM ner11_before WHERE t = %s) IS NOT NULL AND "
                "NOT EXISTS (SELECT 1 FROM %s)) THEN RAISE EXCEPTION "
                "'ner11: table %s held rows newer than the backup; set force=true to overwrite them'; END IF; END $ner11$;"
                % (
                    quote_literal(table),
                    ", ".join("max(%s)::timestamptz" % quote_ident(c) for c in cols),
                    qualified(table),
                    quote_literal(table),
                    qualified(table),
                    table.replace("'", ""),
                )
            )
    for table, (low, high) in sorted(expected.items()):
        post.append(
            "DO $ner11$ BEGIN IF (SELECT count(*) FROM %s) NOT BETWEEN %d AND %d THEN RAISE EXCEPTION "
            "'ner11: %s has %% rows after the restore, the backup has %d', (SELECT count(*) FROM %s); END IF; END $ner11$;"
            % (qualified(table), low, high, table.replace("'", ""), low, qualified(table))
        )
    return "\n".join(pre) + "\n", "\n".join(post) + "\n"


# -- the I/O half ------------------------------------------------------------------------
class Restorer:
    """Runs the steps against one server. ``runner`` has AnsibleModule.run_command's signature."""

    def __init__(self, target, runner, log=None, check_mode=False, db=None):
        self.target = target
        self.runner = runner
        self.commands = []
        self._log = log or (lambda msg: None)
        self.stage = None
        self.check_mode = check_mode
        self.db = db or "db"
        # What this run changed for good (for ``changed`` when it fails later).
        self.changes = []

    # -- helpers -------------------------------------------------------------------
    def q(self, sql, db="postgres"):
        return self.target.query(sql, db)

    def psql_script(self, sql, db, single_transaction=False):
        args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"]
        if single_transaction:
            args.insert(0, "--single-transaction")
        return self.target.run("psql", args, data=sql)

    def shell(self, line, what, display=None):
        """Run a bash pipeline (pipefail) with the target's environment; raise on failure."""
        cmd = "set -o pipefail; " + line
        self.commands.append(display or line)
        rc, out, err = self.runner(
            cmd, use_unsafe_shell=True, executable="/bin/bash", environ_update=self.target.environ(), binary_data=False
        )
        if rc != 0:
            raise RestoreError("%s failed (rc=%s): %s" % (what, rc, _tail(err or out)))
        return out

    def tool_cmd(self, tool, args, stdin=False):
        return " ".join(shlex.quote(a) for a in self.target.argv(tool, args, stdin=stdin))

    def docker(self, args, what):
        cmd = [self.target.docker] + list(args)
        self.commands.append(" ".join(shlex.quote(a) for a in cmd))
        rc, out, err = self.runner(cmd)
        if rc != 0:
            raise RestoreError("%s failed (rc=%s): %s" % (what, rc, _tail(err or out)))
        return out

    # -- target state ----------------------------------------------------------------
    def db_exists(self, db):
        return self.target.scalar("SELECT 1 FROM pg_database WHERE datname = %s;" % quote_literal(db)) == "1"

    def inspect(self, db, newer_columns):
        state = {"exists": self.db_exists(db), "user_tables": 0, "applied": None, "newest_write": None, "newest": {}}
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
        present = {"%s.%s" % tuple(r) for r in (self.q(USER_TABLES_SQL, db) or [])}
        out = {}
        sqls = []
        for table in tables:
            schema, name = split_table(table)
            if "%s.%s" % (schema, name) in present:
                sqls.append("SELECT %s, count(*) FROM %s" % (quote_literal(table), qualified(table)))
            else:
                out[table] = None
        if sqls:
            for name, value in self.q(" UNION ALL ".join(sqls) + ";", db) or []:
                out[name] = int(value)
        return out

    def sessions(self, db):
        return [{"pid": int(r[0]), "application_name": r[1], "user": r[2], "state": r[3]} for r in self.q(sessions_sql(db)) or []]

    def roles(self):
        return [r[0] for r in self.q("SELECT rolname FROM pg_roles ORDER BY 1;") or []]

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
            self.stage = self.docker(
                ["exec", "-u", "0", container, "mktemp", "-d", stage_pattern(self.db) + "XXXXXX"],
                "creating a temp dir in %s" % container,
            ).strip()
        dest = self.stage + "/" + os.path.basename(info["path"].rstrip("/"))
        if only_toc and info["format"] == "directory":
            self.docker(["exec", "-u", "0", container, "mkdir", "-p", dest], "creating %s" % dest)
            self.docker(["cp", os.path.join(info["path"], "toc.dat"), "%s:%s/toc.dat" % (container, dest)], "copying toc.dat")
        else:
            self.docker(["cp", info["path"], "%s:%s" % (container, dest)], "copying the dump into %s" % container)
            test_pause("copy")
        self.docker(
            ["exec", "-u", "0", container, "chown", "-R", self.target.container_user, self.stage],
            "handing the dump to %s" % self.target.container_user,
        )
        return dest

    def cleanup(self):
        if self.stage and self.target.container:
            self.runner([self.target.docker, "exec", "-u", "0", self.target.container, "rm", "-rf", self.stage])
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
        staged = self.stage_dump(info, jobs=1, only_toc=True)
        arg, redirect = self._input(info, staged)
        line = self.tool_cmd("pg_restore", ["--list"] + ([arg] if arg else []), stdin=arg is None) + redirect
        out = self.shell(line, "pg_restore --list (the dump is unreadable; restore another backup)")
        if info["format"] == "directory" and self.target.container:
            self.cleanup()
        entries = [x for x in out.splitlines() if x.strip() and not x.startswith(";")]
        if not entries:
            raise RestoreError("pg_restore --list shows no entries; the dump is empty or damaged: restore another backup")
        return len(entries)

    # -- steps ---------------------------------------------------------------------------
    def restore_globals(self, info, login_user):
        if not info["globals_path"]:
            return {"created": [], "kept": []}
        sql, created, kept = filter_globals(read_globals(info["globals_path"]), self.roles(), login_user)
        if created:
            self.psql_script(sql, "postgres")
        return {"created": created, "kept": kept}

    def create_db(self, db, comment=TEMP_COMMENT):
        """CREATE DATABASE, then mark it as ours at once (only marked databases are ever dropped by a repair)."""
        self.target.run(
            "psql",
            [
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE %s TEMPLATE template0;" % quote_ident(db),
            ],
        )
        self.target.run(
            "psql",
            [
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                "COMMENT ON DATABASE %s IS %s;" % (quote_ident(db), quote_literal(comment)),
            ],
        )

    def drop_db(self, db):
        """DROP DATABASE ... WITH (FORCE); returns None when done, else the error text."""
        rc, out, err = self.target.run(
            "psql",
            [
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                "DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_ident(db),
            ],
            check=False,
        )
        return None if rc == 0 else _tail(err or out)

    # -- what a killed or failed run left ----------------------------------------------------
    def find_leftovers(self, db):
        """(classify_leftovers(...), stage dirs, client processes) for this database."""
        rows = self.q(leftovers_sql(db)) or []
        found = classify_leftovers(db, rows)
        stages, clients = [], []
        if self.target.container:
            rc, out, _err = self.runner(
                [self.target.docker, "exec", "-u", "0", self.target.container, "sh", "-c", CONTAINER_SCAN, "sh",
                 temp_db_name(db), stage_pattern(db)]
            )  # fmt: skip
            for line in (out or "").splitlines() if rc == 0 else []:
                kind, _sep, rest = line.partition(" ")
                if kind == "stage" and rest.startswith(stage_pattern(db)):
                    stages.append(rest.strip())
                elif kind == "pid":
                    pid, _sep, tool = rest.partition(" ")
                    if pid.isdigit():
                        clients.append({"pid": int(pid), "tool": os.path.basename(tool.strip()) or "client"})
        return found, stages, clients

    def repair(self, db, found, stages, clients):
        """Bring back a state the restore can start from; returns what was done (each step a sentence)."""
        done = []
        if clients:
            pids = [str(c["pid"]) for c in clients]
            cmd = [self.target.docker, "exec", "-u", "0", self.target.container, "kill", "-TERM"] + pids
            self.commands.append(" ".join(shlex.quote(a) for a in cmd))
            self.runner(cmd)  # a client that ended meanwhile is fine: dropping the database ends the rest
            done += ["stopped %s (pid %s) in the database container" % (c["tool"], c["pid"]) for c in clients]
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
            self.docker(["exec", "-u", "0", self.target.container, "rm", "-rf", "--", stage], "removing %s" % stage)
            done.append("removed the dump copy %s in the database container" % stage)
        self.changes += done
        return done

    def restore_full(self, info, db, jobs):
        staged = self.stage_dump(info, jobs)
        if info["format"] == "plain":
            # G24: stop at the first error, all or nothing.
            psql = self.tool_cmd(
                "psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", db, "-f", "-"], stdin=True
            )
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

    # -- space pre-flight -----------------------------------------------------------------
    def space_check(self, manifest, info, staged):
        """Free space for the restored copy (and the dump copy) before anything is touched.

        The restored copy needs about the database's size at backup time (manifest
        ``db_size_bytes``) plus 10 %% on the data directory's filesystem; a dump copied
        into the container needs its size on the container's /tmp. Returns the numbers
        and ``error`` (a message) when they do not fit. Only container mode can see the
        server's filesystems; host mode reports ``checked: false``.
        """
        db_size = manifest.get("db_size_bytes")
        dump_size = sum(
            int(f.get("size") or 0)
            for f in manifest.get("files") or []
            if f.get("path") == info["artifact"] or str(f.get("path", "")).startswith(info["artifact"] + "/")
        )
        out = {"checked": False, "db_size_bytes": db_size, "dump_copy_bytes": dump_size if staged else 0}
        if not self.target.container:
            out["note"] = "not checked: the server's filesystem is not visible in login_host mode"
            return out
        try:
            datadir = self.target.scalar("SHOW data_directory;")
        except PgExecError:
            datadir = None
        if not datadir:
            # SHOW data_directory needs a superuser or pg_read_all_settings.
            out["note"] = "not checked: %s may not read data_directory (grant it pg_read_all_settings)" % self.target.user
            return out
        paths = [datadir] + (["/tmp"] if staged else [])  # noqa: S108 - the container's /tmp, where mktemp puts the copy
        rc, text, err = self.runner([self.target.docker, "exec", self.target.container, "df", "-P", "-k"] + paths)
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
        psql = self.tool_cmd(
            "psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", db, "-f", "-"], stdin=True
        )
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
        return self.target.run(
            "psql",
            [
                "-X",
                "-q",
                "-d",
                "postgres",
                "-c",
                "ALTER DATABASE %s WITH ALLOW_CONNECTIONS %s;" % (quote_ident(db), "true" if allow else "false"),
            ],
        )


def run_restore(params, runner, check_mode=False, now=None):
    """The whole module: resolve, verify, decide, plan; apply unless ``check_mode``.

    Returns the module result (without ``msg``); raises RestoreError/Refused/PgExecError.
    """
    import time

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
    _catalog, manifest, backup_path, skipped = resolve_backup(
        params.get("backup_dir"),
        params.get("backup_id"),
        params.get("path"),
        params.get("latest"),
        source_db,
        source_host=params.get("source_host"),
    )
    info = dump_info(manifest, backup_path)
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
    with _target(params, runner) as target:
        r = Restorer(target, runner, check_mode=check_mode, db=db)
        result["executed_commands"] = r.commands
        try:
            result["toc_entries"] = r.list_toc(info, manifest.get("toc_entries"))
            # First what a killed or failed earlier run left (docs/restore.md, "Interrupted restores").
            found, stages, clients = r.find_leftovers(db)
            steps = repair_plan(db, found, stages, clients)
            result["leftovers"] = leftover_report(db, found)
            if steps:
                result["plan"]["repair"] = steps
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
            state = r.inspect(db, newer_columns)
            expected = expected_counts(manifest, tables or None)
            if tables:
                observed = r.counts(db, list(expected))
                state["counts_match"] = not count_mismatches(expected, observed)
            decision = decide(db, backup, state, params.get("if_exists") or "fail", params.get("confirm"), force, tables)
            result["operation"] = decision["action"]
            result["reason"] = decision["reason"]
            if state.get("applied"):
                result["changes_since_restore"] = state.get("changes", [])
            if decision["action"] in ("none", "skip"):
                result["row_counts"] = r.counts(db, tables or canaries)
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
                "changed": bool(r.changes),
                "changes": list(r.changes),
                "leftovers": result.get("leftovers", []),
                "restored": result.get("restored", False),
                "executed_commands": r.commands,
            }
            raise
        finally:
            r.cleanup()


def _target(params, runner):
    from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgTarget

    return PgTarget(params, runner)


def _finish(result, started):
    import time

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
    try:
        result["sequences"] = r.restore_tables(info, db, tables, pre, post)
    except RestoreError as exc:
        if "held rows newer than the backup" in str(exc):
            raise Refused("%s; the transaction was rolled back, nothing was changed" % exc) from None
        raise RestoreError("%s; the transaction was rolled back, the tables are unchanged" % exc) from None
    result["restored"] = True
    result["row_counts"] = r.counts(db, tables)
    return result


def _full(r, params, info, manifest, db, state, expected, canaries, newer_columns, force, jobs, check_mode, now, result):
    temp = temp_db_name(db)
    old = old_db_name(db, now) if state["exists"] else None
    keep_old = bool(params.get("keep_old"))
    sessions = r.sessions(db) if state["exists"] else []
    estimate = []
    if state["exists"] and state["user_tables"] and not force:
        estimate = [
            {"table": t, "target_newest": _iso(v)}
            for t, v in sorted(state["newest"].items())
            if v is not None and v > epoch(manifest["created_at"])
        ]
    staged = r.target.container and (info["format"] == "directory" or (info["format"] == "custom" and jobs > 1))
    space = r.space_check(manifest, info, staged)
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
    result["globals"] = r.restore_globals(info, r.target.user)
    if result["globals"]["created"]:
        r.changes.append("created roles %s" % ", ".join(result["globals"]["created"]))
    r.create_db(temp)
    swapped = False
    try:
        r.restore_full(info, temp, jobs)
        counts = r.counts(temp, canaries)
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
        # The restore_log row and the state fingerprint, taken before anyone else can connect.
        r.psql_script(
            log_insert_sql(
                manifest["backup_id"],
                info["sha256"],
                "full",
                None,
                (manifest.get("source") or {}).get("db_name"),
                manifest["created_at"],
                force,
            ),
            temp,
        )
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
        else:
            # A database the collection created keeps a mark (scratch databases are dropped only when marked).
            r.psql_script(
                "BEGIN;\nALTER DATABASE %s RENAME TO %s;\nCOMMENT ON DATABASE %s IS %s;\nCOMMIT;\n"
                % (quote_ident(temp), quote_ident(db), quote_ident(db), quote_literal(created_comment(manifest["backup_id"]))),
                "postgres",
            )
            swapped = True
            r.changes.append("created database %s from backup %s" % (db, manifest["backup_id"]))
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
    result["row_counts"] = r.counts(db, canaries)
    return result


def _mb(n):
    return "%.1f MB" % (int(n or 0) / 1048576.0)


def _tail(text):
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:]) if lines else "no output"


__all__ = [
    "PgExecError",
    "Refused",
    "RestoreError",
    "Restorer",
    "decide",
    "dump_info",
    "filter_globals",
    "newer_tables",
    "resolve_backup",
    "select_latest",
]

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore planning (pure, no I/O): which backup, what the target's state means, names.

Part of ``pg_restore``'s core (overview in ``pgrestore.py``): which backup to restore
(``select_latest``, G9), whether it is usable (``dump_info``), what the target's state
means (``decide``), whether the target holds data newer than the backup
(``newer_tables``), which statements of ``globals.sql`` may run (``filter_globals``),
and the names of the temporary and replaced databases.
"""

from __future__ import annotations

import datetime
import gzip
import os
import re
import threading

from ansible_collections.ner11.ops.plugins.module_utils.catalog import (
    Catalog,
    CatalogError,
    choose_identity,
    isoformat,
    parse_time,
    utcnow,
    validate_backup_id,
)
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import IdentifierError, check_name, quote_table
from ansible_collections.ner11.ops.plugins.module_utils.pgbackup_formats import DEFAULT_CLIENT_IMAGE
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import split_table as _split_table

LOG_SCHEMA = "ner11_ops"
LOG_TABLE = "ner11_ops.restore_log"
TEMP_SUFFIX = "__ner11_restore"
OLD_INFIX = "__ner11_old_"
FORMATS = ("custom", "directory", "plain")
DEFAULT_NEWER_COLUMNS = ("created_at", "updated_at")
# Parses one statement of pg_dumpall's globals.sql (not a name rule: names are checked in identifiers.py).
_ROLE_STMT_RE = re.compile(r'^(CREATE|ALTER)\s+ROLE\s+("(?:[^"]|"")+"|[^\s;]+)', re.IGNORECASE)
_MAX_IDENT = 63


class RestoreError(Exception):
    """The restore cannot go on; the message names the cause and the fix."""


class Refused(RestoreError):
    """A guard refused the restore (nothing was touched)."""


# -- names (the rule: identifiers.py) --------------------------------------------------
def validate_db_name(name, what="db_name"):
    try:
        return check_name(name, what)
    except IdentifierError as exc:
        raise RestoreError(str(exc)) from None


def split_table(name):
    """``'public.t'`` or ``'t'`` -> ``('public', 't')`` (schema defaults to public)."""
    try:
        return _split_table(name, "public", "table")
    except IdentifierError as exc:
        raise RestoreError("%s; fix the tables option" % exc) from None


def qualified(name):
    split_table(name)
    return quote_table(name, "public")


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


def damaged(backup_id, problems):
    """The refusal of a backup whose files fail their checksums (names the backup and the files)."""
    return RestoreError(
        "backup %s fails verification (%s); it is damaged: restore another backup" % (backup_id, "; ".join(problems))
    )


class BackgroundVerify:
    """Every checksum of a named backup, computed in a thread while the restore reads the server (issue 16).

    ``Catalog.verify`` hashes the files (hashlib releases the GIL) while the main thread waits
    on ``pg_restore --list`` and the read-only inspection queries. ``check()`` joins it and
    raises ``damaged(...)``; ``run_restore`` calls it before its first change to the server
    (a repair, the roles, the temporary database) and before any return, and lets a checksum
    failure take precedence over any error raised meanwhile.
    """

    def __init__(self, catalog, backup_id):
        self.backup_id = backup_id
        self.problems = None
        self._thread = threading.Thread(target=self._run, args=(catalog,), name="ner11-verify", daemon=True)
        self._thread.start()

    def _run(self, catalog):
        try:
            self.problems = catalog.verify("database", self.backup_id)
        except (OSError, ValueError) as exc:  # a file vanished or is unreadable: as damaged as a bad checksum
            self.problems = ["cannot be read: %s" % exc]

    def check(self):
        """Wait for the hashing; raise ``damaged(...)`` when a file fails."""
        self._thread.join()
        if self.problems:
            raise damaged(self.backup_id, self.problems)


def resolve_backup(
    backup_dir=None, backup_id=None, path=None, latest=False, source_db=None, instance=None, source_host=None, verify=True
):
    """Find and verify the backup to restore; returns (catalog, manifest, backup_path, skipped).

    ``verify=False``: a named backup (``backup_id``/``path``) is not hashed here; the caller
    verifies it (``BackgroundVerify``) before it changes anything. ``latest`` always verifies
    here: the damaged candidates are skipped while choosing.
    """
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
            problems = catalog.verify("database", backup_id) if verify else []
            if problems:
                raise damaged(backup_id, problems)
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
        # A zstd directory dump (pg_dump >= 16) is read with the client image that made it.
        "client_image": (manifest.get("client_image") or DEFAULT_CLIENT_IMAGE)
        if fmt == "directory" and compression.startswith("zstd")
        else None,
    }


def backup_db_size(manifest):
    """The database's size at backup time in bytes (0 when unknown).

    pg_backup records it under ``source`` (with the server's version); a manifest may also
    carry it at the top level. Both are read: the free-space check needs it.
    """
    for value in (manifest.get("db_size_bytes"), (manifest.get("source") or {}).get("db_size_bytes")):
        try:
            if value is not None and int(value) > 0:
                return int(value)
        except (TypeError, ValueError):
            continue
    return 0


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

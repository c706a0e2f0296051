# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Dump formats of a database backup (pure): compression, artifact names, TOC, checks.

Shared by ``pgbackup`` (create) and ``pgbackup_verify`` (verify); no I/O except
``test_stream``, which reads a file (or runs ``zstd -t`` through the caller's runner).
"""

from __future__ import annotations

import gzip
import hashlib
import shlex
import shutil

from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line

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
            raise PgBackupError("%s is not a valid zstd stream: %s" % (path, last_line(err or out)))

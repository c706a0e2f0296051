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
    ("directory", "zstd"): "dump",
    ("custom", "gzip"): "dump.pgdump",
    ("custom", "none"): "dump.pgdump",
    ("plain", "none"): "dump.sql",
    ("plain", "gzip"): "dump.sql.gz",
    ("plain", "zstd"): "dump.sql.zst",
}


class PgBackupError(Exception):
    """The backup cannot be made; the message names the cause and the fix."""


# -- pure helpers (unit-tested) --------------------------------------------------
# The client image with pg_dump >= 16 (zstd built in) that the project builds (images/pgclient, make pgclient).
DEFAULT_CLIENT_IMAGE = "ner11/pgclient:ref"

# pg_restore >= 17 sends this to any server; a PostgreSQL 15/16 server rejects it. It is the one error a
# restore of a zstd dump accepts (docs/backup-catalog.md, "zstd dumps"); any other error fails the restore.
KNOWN_OLD_SERVER_ERROR = 'unrecognized configuration parameter "transaction_timeout"'
KNOWN_OLD_SERVER_COMMAND = "SET transaction_timeout = 0;"


def parse_compression(fmt, value):
    """``none`` | ``gzip:<0-9>`` | ``<0-9>`` (gzip level) | ``zstd:<1-19>`` (plain, directory) → (method, level).

    zstd for ``directory`` is pg_dump's own (``-Z zstd:<level>``, pg_dump >= 16: the client image);
    for ``plain`` the SQL is piped through ``zstd``.
    """
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
        if fmt not in ("plain", "directory"):
            raise PgBackupError(
                "compression %r: zstd is available for format=directory (pg_dump >= 16 from the client image) and "
                "format=plain (piped through zstd); use gzip:<level> with format=%s" % (value, fmt)
            )
        return "zstd", int(level)
    raise PgBackupError("unknown compression %r: use none, gzip:<1-9> or zstd:<1-19> (directory, plain)" % (value,))


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


def restore_commands(fmt, method, artifact, jobs, has_globals, pg_dump_version=None):
    """Stock-tool restore lines, run in the backup directory; ``{target_db}`` is a placeholder."""
    cmds = []
    if has_globals:
        cmds.append("psql -X -d postgres -f globals.sql")
    cmds.append("createdb -T template0 {target_db}")
    tools = None
    if fmt == "directory" and method == "zstd":
        # pg_restore >= 16 reads zstd; 17 sends SET transaction_timeout, which a 15/16 server rejects:
        # no --exit-on-error, then the log must show that one error only (per worker).
        cmds.append(
            "pg_restore -j %d -d {target_db} %s 2> restore.log; grep 'pg_restore: error' restore.log "
            "| grep -v 'transaction_timeout'; echo 'restore is good when the line above is empty'" % (max(jobs, 1), artifact)
        )
        tools = (
            "pg_restore of PostgreSQL 16 or later (the dump was made by %s with zstd): e.g. "
            "docker run --rm -it --network container:<db container> -v $PWD:$PWD -w $PWD ner11/pgclient:ref "
            "(images/pgclient, make pgclient) or Debian's postgresql-client-17" % (pg_dump_version or "pg_dump >= 16")
        )
    elif fmt in ("directory", "custom"):
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
    if tools:
        notes.append("Tools: " + tools)
    return {
        "workdir": "the backup directory (where manifest.json is)",
        "placeholders": {"{target_db}": "the database to restore into (must not exist yet)"},
        "commands": cmds,
        "notes": notes,
    }


def unexpected_restore_errors(stderr):
    """The errors in ``pg_restore``'s stderr other than the known old-server one (empty: the restore is good).

    pg_restore without ``--exit-on-error`` reports each failed statement as ``pg_restore: error: ...``
    followed by ``Command was: ...``, and ``errors ignored on restore: N`` at the end. Every error must
    be KNOWN_OLD_SERVER_ERROR for KNOWN_OLD_SERVER_COMMAND; anything else is returned.
    """
    lines = (stderr or "").splitlines()
    out = []
    for index, line in enumerate(lines):
        if "pg_restore: error:" not in line:
            continue
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if KNOWN_OLD_SERVER_ERROR in line and following == "Command was: " + KNOWN_OLD_SERVER_COMMAND:
            continue
        out.append(line.strip())
    return out


def judge_lenient_restore(rc, stderr):
    """None when a ``pg_restore`` run without ``--exit-on-error`` is good, else the reason (strict).

    rc 0, or rc 1 with only the known old-server error; any other error, or another exit code, fails.
    """
    unexpected = unexpected_restore_errors(stderr)
    if unexpected:
        return "; ".join(unexpected[:3]) + (" (and %d more)" % (len(unexpected) - 3) if len(unexpected) > 3 else "")
    if rc not in (0, 1):
        return "pg_restore exited with rc=%s: %s" % (rc, last_line(stderr))
    if rc == 1 and KNOWN_OLD_SERVER_ERROR not in (stderr or ""):
        return "pg_restore exited with rc=1: %s" % last_line(stderr)
    return None


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

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SQL text of a restore's steps (pure): inspection, restore log, sessions, swap, tables.

Part of ``pg_restore``'s core (overview in ``pgrestore.py``).
"""

from __future__ import annotations

# ruff: noqa: S608 -- every identifier goes through quote_name/quote_table and every value through quote_literal.

import json

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import quote_literal, quote_name, quote_table
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import create_database_statements
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_plan import LOG_SCHEMA, LOG_TABLE, qualified, split_table
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_repair import leftovers_sql
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_state import fingerprint_sql

quote_ident = quote_name

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


def log_insert_sql(backup_id, sha256, scope, tables, source_db, source_created_at, forced, returning=False):
    """The restore_log row, with the state fingerprint taken in the same statement.

    ``returning``: the statement also returns the row ``fp|<fingerprint>`` (``counts_from_fingerprint``).
    """
    tables_sql = "ARRAY[%s]::text[]" % ", ".join(quote_literal(t) for t in tables) if tables else "NULL"
    return (
        LOG_DDL + "INSERT INTO %s (backup_id, sha256, scope, tables, source_db, source_created_at, forced, tool, "
        "fingerprint) VALUES (%s, %s, %s, %s, %s, %s::timestamptz, %s, 'ner11.ops.pg_restore', (%s))%s;\n"
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
            " RETURNING 'fp', fingerprint" if returning else "",
        )
    )


def create_db_sql(db, comment=None):
    """CREATE DATABASE from template0 and its COMMENT (the mark), as a psql script (PgTarget's statements)."""
    return "".join(statement + "\n" for statement in create_database_statements(db, comment))


def canary_lookup_sql(tables):
    """One SELECT: a row ``canary|<table>|<key>`` per canary, in order ('' when there are none).

    ``key`` is the fingerprint's ``schema.table`` when the canary is a plain table without
    children (the fingerprint's ``FROM ONLY`` count is then its ``count(*)``), ``missing`` when
    it does not exist, else empty (partitioned or inherited: counted on its own).
    """
    if not tables:
        return ""
    values = ", ".join(
        "(%s, %s, %d)" % (quote_literal(t), quote_literal(quote_table(t, what="canary table")), index)
        for index, t in enumerate(tables)
    )
    return (
        "SELECT 'canary', x.t, CASE WHEN c.oid IS NULL THEN 'missing' WHEN c.relkind = 'r' AND NOT c.relhassubclass "
        "THEN n.nspname || '.' || c.relname ELSE '' END FROM (VALUES %s) x(t, ident, o) "
        "LEFT JOIN pg_class c ON c.oid = to_regclass(x.ident) LEFT JOIN pg_namespace n ON n.oid = c.relnamespace "
        "ORDER BY x.o;\n" % values
    )


def counts_from_fingerprint(rows, tables):
    """``{table: rows or None}`` of the canaries the fingerprint counted (rows of ``fp`` and ``canary_lookup_sql``).

    A canary the fingerprint did not count (no ``fp`` row, a partitioned or inherited table, an
    unreadable value) is left out: the caller counts it with ``count(*)``.
    """
    rels = {}
    for row in rows:
        if row[0] == "fp" and len(row) > 1:
            try:
                rels = json.loads(row[1]).get("rels") or {}
            except (ValueError, AttributeError):
                rels = {}
    counts = {}
    for row in rows:
        if row[0] != "canary" or len(row) < 3 or row[1] not in tables:
            continue
        if row[2] == "missing":
            counts[row[1]] = None
            continue
        entry = rels.get(row[2]) if row[2] else None
        value = str(entry[4]).split("/", maxsplit=1)[0] if isinstance(entry, list) and len(entry) > 4 and entry[0] == "r" else ""
        if value.isdigit():
            counts[row[1]] = int(value)
    return counts


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


def sessions_sql(db):
    return (
        "SELECT pid, coalesce(application_name, ''), coalesce(usename, ''), coalesce(state, '') "
        "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid;" % quote_literal(db)
    )


# Tags of the pre-flight rows that are not leftover databases (a database name never holds ':').
PREFLIGHT_DATADIR, PREFLIGHT_ROLE, PREFLIGHT_SESSION = "ner11:datadir", "ner11:role", "ner11:session"


def preflight_sql(db):
    """The server's side of a restore's first round, in ONE psql call on ``postgres`` (issue 16).

    Rows: the leftover databases as ``leftovers_sql`` returns them (which also tells whether
    ``db`` exists); ``ner11:datadir|<data_directory>`` always, the path empty when the login
    may not read it (pg_settings hides it without superuser or pg_read_all_settings, where
    SHOW would fail); ``ner11:role|<name>`` per role; ``ner11:session|<pid>|...`` per session
    on ``db`` (``sessions_sql``).
    """
    return (
        "%s\nSELECT %s, coalesce((SELECT setting FROM pg_settings WHERE name = 'data_directory'), '');\n"
        "SELECT %s, rolname FROM pg_roles ORDER BY 2;\nSELECT %s, s.* FROM (%s) s ORDER BY 2;\n"
        % (
            leftovers_sql(db),
            quote_literal(PREFLIGHT_DATADIR),
            quote_literal(PREFLIGHT_ROLE),
            quote_literal(PREFLIGHT_SESSION),
            sessions_sql(db).rstrip(";"),
        )
    )


def parse_preflight(rows):
    """``(leftover rows, facts)`` from ``preflight_sql``'s rows; ``facts`` None without its datadir row.

    ``facts``: ``datadir`` (None when unreadable), ``roles``, ``sessions`` (as ``Restorer.sessions``).
    """
    leftovers, facts = [], {"datadir": None, "roles": [], "sessions": []}
    seen = False
    for row in rows or []:
        tag = row[0]
        if tag == PREFLIGHT_DATADIR:
            seen = True
            facts["datadir"] = (row + [""])[1] or None
        elif tag == PREFLIGHT_ROLE:
            facts["roles"].append((row + [""])[1])
        elif tag == PREFLIGHT_SESSION and len(row) >= 5:
            facts["sessions"].append({"pid": int(row[1]), "application_name": row[2], "user": row[3], "state": row[4]})
        elif not tag.startswith("ner11:") and len(row) == 3:
            leftovers.append(row)
    return leftovers, (facts if seen else None)


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

# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VACUUM / ANALYZE / REINDEX with measurements: the pure core of ``pg_maintenance``.

The runbooks' maintenance window (spec section f; G43-G47, G50-G56) runs
``VACUUM FULL`` and ``REINDEX`` with the API writing, without a space check and
without a time limit. Here:

* every run measures first (per table: size, live and dead tuples, an estimate
  of the bloat; per index: size and estimated bloat), selects only the objects
  over the thresholds, and measures the same objects again afterwards, so a
  second run over a maintained database selects nothing (idempotent);
* ``vacuum_full`` and plain ``reindex`` take an ACCESS EXCLUSIVE lock: they are
  refused while any other client session is connected to the database (seen in
  ``pg_stat_activity``); ``reindex`` uses ``CONCURRENTLY`` by default;
* the space a rewrite needs (the table with its indexes, or the index) must be
  free on the filesystem of the data directory, plus a margin;
* ``lock_timeout`` and ``statement_timeout`` bound every statement, so a
  window cannot hang on a lock.

Bloat figures are estimates from the planner statistics (``pg_class.relpages``,
``reltuples`` and ``pg_stats.avg_width``), the same approach as the widely used
check_postgres/ioguix queries: good enough to decide, not an exact count.

Plain Python: the caller passes a ``PgTarget`` (pgexec.py) or any object with
``query(sql, db)`` and ``run(tool, args, check=...)``.
"""

from __future__ import annotations

# ruff: noqa: S608 -- SQL holds only quote_name()/quote_literal()ed names and integers.

import math
import time

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import (
    NAME_RULE,
    is_name,
    is_table,
    quote_literal,
    quote_name,
    split_table,
)
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgExecError
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_state import (
    FINGERPRINT_VERSION,
    fingerprint_diff,
    fingerprint_sql,
    parse_fingerprint,
)
from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line

OPERATIONS = ("analyze", "vacuum", "vacuum_full", "reindex")
EXCLUSIVE = ("vacuum_full", "reindex_plain")
PAGE = 8192

DEFAULTS = {
    "lock_timeout": 10,
    "statement_timeout": 3600,
    "min_dead_tuples": 1,
    "min_changed_rows": 1,
    "min_bloat_ratio": 0.3,
    "min_size_bytes": 8 * 1024 * 1024,
    "space_margin_bytes": 64 * 1024 * 1024,
    "concurrently": True,
    "force": False,
}


class MaintenanceError(Exception):
    """Invalid input, a refusal or a failed query; the message names the cause and the fix."""


def validate(params):
    """Check and complete the options; returns a new dict. Raises MaintenanceError."""
    p = dict(DEFAULTS)
    p.update({k: v for k, v in params.items() if v is not None})
    if not is_name(p.get("db_name")):
        raise MaintenanceError(
            "db_name %r is not a database name; set it to the stack's database (e.g. ner11_db)" % p.get("db_name")
        )
    if p.get("operation") not in OPERATIONS:
        raise MaintenanceError("operation %r is not one of %s" % (p.get("operation"), ", ".join(OPERATIONS)))
    tables = []
    for name in p.get("tables") or []:
        if not is_table(name):
            raise MaintenanceError("table %r is not a table name: use name or schema.name; each part must %s" % (name, NAME_RULE))
        tables.append(split_table(name, default_schema="public"))
    p["tables"] = tables
    for key in ("lock_timeout", "statement_timeout"):
        if int(p[key]) < 1:
            raise MaintenanceError("%s must be at least 1 second, got %r" % (key, p[key]))
    for key in ("min_dead_tuples", "min_changed_rows", "min_size_bytes", "space_margin_bytes"):
        if int(p[key]) < 0:
            raise MaintenanceError("%s must be 0 or more, got %r" % (key, p[key]))
    if not 0 <= float(p["min_bloat_ratio"]) < 1:
        raise MaintenanceError("min_bloat_ratio must be between 0 and 1 (e.g. 0.3 for 30 %%), got %r" % p["min_bloat_ratio"])
    return p


# -- measuring -------------------------------------------------------------------

TABLES_SQL = """
SELECT s.schemaname, s.relname, c.oid, c.relpages, c.reltuples::bigint,
       pg_relation_size(c.oid), pg_total_relation_size(c.oid),
       s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       COALESCE((SELECT sum(st.avg_width) FROM pg_stats st
                 WHERE st.schemaname = s.schemaname AND st.tablename = s.relname), -1),
       (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       COALESCE((SELECT (regexp_match(array_to_string(c.reloptions, ','), 'fillfactor=([0-9]+)'))[1]::int), 100)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
ORDER BY s.schemaname, s.relname
"""

INDEXES_SQL = """
SELECT n.nspname, ic.relname, t.relname, am.amname, ic.relpages, ic.reltuples::bigint,
       pg_relation_size(ic.oid), i.indisvalid,
       COALESCE((SELECT sum(st.avg_width) FROM pg_attribute a
                 JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = t.relname
                                  AND st.attname = a.attname
                 WHERE a.attrelid = t.oid AND a.attnum = ANY (i.indkey::int2[])), -1),
       array_length(i.indkey::int2[], 1), (0 = ANY (i.indkey::int2[])) OR i.indexprs IS NOT NULL
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = ic.relam
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY n.nspname, t.relname, ic.relname
"""

SESSIONS_SQL = """
SELECT count(*), COALESCE(string_agg(DISTINCT COALESCE(NULLIF(application_name, ''), usename::text, '?'), ', '), '')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
"""


def _align(n, to=8):
    return int(math.ceil(n / float(to)) * to)


def table_bloat(relpages, reltuples, width_sum, columns, fillfactor=100):
    """Estimated share of the heap that holds no live row (0..1), or None without statistics."""
    if relpages <= 0 or reltuples < 0 or width_sum < 0:
        return None
    header = _align(23 + int(math.ceil(columns / 8.0)))
    tuple_bytes = _align(header + width_sum) + 4  # + line pointer
    usable = (PAGE - 24) * fillfactor / 100.0
    expected = max(1, int(math.ceil(reltuples * tuple_bytes / usable)))
    return round(max(0.0, 1.0 - expected / float(relpages)), 3)


def index_bloat(relpages, reltuples, width_sum, amname, expression):
    """Estimated share of a btree index that holds no live entry (0..1), or None when unknown."""
    if amname != "btree" or expression or relpages <= 1 or reltuples < 0 or width_sum < 0:
        return None
    entry = _align(8 + width_sum) + 4  # IndexTupleData + key, + line pointer
    usable = (PAGE - 24 - 16) * 0.9  # page header, btree special space, default fillfactor 90
    expected = 1 + max(1, int(math.ceil(reltuples * entry / usable)))  # + metapage
    return round(max(0.0, 1.0 - expected / float(relpages)), 3)


def parse_tables(rows):
    out = []
    for r in rows or []:
        relpages, reltuples = int(r[3]), int(r[4])
        live, dead = int(r[7] or 0), int(r[8] or 0)
        entry = {
            "schema": r[0],
            "name": r[1],
            "table": "%s.%s" % (r[0], r[1]),
            "pages": relpages,
            "table_bytes": int(r[5]),
            "size_bytes": int(r[6]),
            "live_tuples": live,
            "dead_tuples": dead,
            "changed_since_analyze": int(r[9] or 0),
            "dead_ratio": round(dead / float(live + dead), 3) if live + dead else 0.0,
            "bloat_ratio": table_bloat(relpages, reltuples, int(float(r[10])), int(r[11]), int(r[12])),
        }
        out.append(entry)
    return out


def parse_indexes(rows):
    out = []
    for r in rows or []:
        out.append(
            {
                "schema": r[0],
                "name": r[1],
                "index": "%s.%s" % (r[0], r[1]),
                "table": "%s.%s" % (r[0], r[2]),
                "method": r[3],
                "size_bytes": int(r[6]),
                "valid": r[7] == "t",
                "bloat_ratio": index_bloat(int(r[4]), int(r[5]), int(float(r[8])), r[3], r[10] == "t"),
            }
        )
    return out


def measure(target, db):
    """Tables, indexes and the database size, one consistent read."""
    tables = parse_tables(target.query(TABLES_SQL, db))
    indexes = parse_indexes(target.query(INDEXES_SQL, db))
    size = int(target.scalar("SELECT pg_database_size(current_database())", db) or 0)
    return {"tables": tables, "indexes": indexes, "db_size_bytes": size}


# -- deciding --------------------------------------------------------------------


def _in_scope(table_key, params):
    if not params["tables"]:
        return True
    return table_key in {"%s.%s" % t for t in params["tables"]}


def select(state, params):
    """The objects ``operation`` would touch, each with the reason; pure."""
    op = params["operation"]
    force = bool(params["force"])
    bloat_min = float(params["min_bloat_ratio"])
    size_min = int(params["min_size_bytes"])
    chosen = []
    if op == "reindex":
        for idx in state["indexes"]:
            if not _in_scope(idx["table"], params):
                continue
            if not idx["valid"]:
                chosen.append(dict(idx, reason="invalid index (left by an interrupted build)"))
            elif force:
                chosen.append(dict(idx, reason="forced"))
            elif idx["bloat_ratio"] is not None and idx["bloat_ratio"] >= bloat_min and idx["size_bytes"] >= size_min:
                chosen.append(
                    dict(idx, reason="estimated bloat %.0f %% >= %.0f %%" % (idx["bloat_ratio"] * 100, bloat_min * 100))
                )
        return chosen
    for tbl in state["tables"]:
        if not _in_scope(tbl["table"], params):
            continue
        reason = None
        if force:
            reason = "forced"
        elif op == "analyze":
            if tbl["changed_since_analyze"] >= max(int(params["min_changed_rows"]), 1):
                reason = "%d row(s) changed since the last ANALYZE" % tbl["changed_since_analyze"]
        elif op == "vacuum":
            if tbl["dead_tuples"] >= max(int(params["min_dead_tuples"]), 1):
                reason = "%d dead tuple(s)" % tbl["dead_tuples"]
            elif tbl["changed_since_analyze"] >= max(int(params["min_changed_rows"]), 1):
                reason = "%d row(s) changed since the last ANALYZE" % tbl["changed_since_analyze"]
        elif op == "vacuum_full" and tbl["size_bytes"] >= size_min:
            if tbl["dead_ratio"] >= bloat_min and tbl["dead_tuples"] > 0:
                reason = "dead tuples %.0f %% >= %.0f %%" % (tbl["dead_ratio"] * 100, bloat_min * 100)
            elif tbl["bloat_ratio"] is not None and tbl["bloat_ratio"] >= bloat_min:
                reason = "estimated bloat %.0f %% >= %.0f %%" % (tbl["bloat_ratio"] * 100, bloat_min * 100)
        if reason:
            chosen.append(dict(tbl, reason=reason))
    if params["tables"]:
        known = {t["table"] for t in state["tables"]}
        missing = ["%s.%s" % t for t in params["tables"] if "%s.%s" % t not in known]
        if missing:
            raise MaintenanceError(
                "table(s) %s do not exist in %s; check the names (schema.table) or leave tables empty for every table"
                % (", ".join(missing), params["db_name"])
            )
    return chosen


def statement(op, obj, concurrently):
    if op == "reindex":
        return "REINDEX INDEX %s%s.%s" % (
            "CONCURRENTLY " if concurrently else "",
            quote_name(obj["schema"]),
            quote_name(obj["name"]),
        )
    target = "%s.%s" % (quote_name(obj["schema"]), quote_name(obj["name"]))
    if op == "analyze":
        return "ANALYZE %s" % target
    if op == "vacuum":
        return "VACUUM (ANALYZE) %s" % target
    return "VACUUM (FULL, ANALYZE) %s" % target


def exclusive(params):
    return params["operation"] == "vacuum_full" or (params["operation"] == "reindex" and not params["concurrently"])


def space_needed(op, chosen, margin):
    """Bytes that must be free: the largest single rewrite plus the margin (objects run one by one)."""
    if op in ("analyze", "vacuum") or not chosen:
        return 0
    return max(o["size_bytes"] for o in chosen) + int(margin)


def sessions_problem(count, apps, params):
    if not exclusive(params) or count == 0:
        return None
    what = "VACUUM FULL" if params["operation"] == "vacuum_full" else "REINDEX without CONCURRENTLY"
    return (
        "%s locks each table against every read and write, and %d other session(s) are connected to %s (%s). "
        "Stop the writers first (playbooks/service.yml -e ner11_service=api -e ner11_action=stop), or use "
        "operation=vacuum / reindex with concurrently=true, which do not block them."
        % (what, count, params["db_name"], apps or "unknown")
    )


def space_problem(free, needed, params):
    if free is None or needed == 0 or free >= needed:
        return None
    return (
        "not enough free space for %s: it needs %d MiB (the largest object rewritten plus a %d MiB margin) and the "
        "filesystem of the data directory has %d MiB free. Free space first (playbooks/incident_disk.yml, "
        "ner11.ops.disk_cleanup), or limit tables to smaller ones."
        % (params["operation"], needed // 1048576, int(params["space_margin_bytes"]) // 1048576, free // 1048576)
    )


# -- running ---------------------------------------------------------------------


def data_dir_free_bytes(target):
    """Free bytes on the data directory's filesystem (container mode), or None when it cannot be read."""
    if not getattr(target, "container", None):
        return None
    datadir = target.scalar("SHOW data_directory")
    if not datadir:
        return None
    rc, out, _err = target.run("df", ["-P", "-B1", datadir], check=False)
    lines = [line for line in (out or "").splitlines() if line.strip()]
    if rc != 0 or len(lines) < 2:
        return None
    try:
        return int(lines[-1].split()[3])
    except (IndexError, ValueError):
        return None


def _script(params, sql):
    return "SET lock_timeout = '%ds';\nSET statement_timeout = '%ds';\n%s;\n" % (
        int(params["lock_timeout"]),
        int(params["statement_timeout"]),
        sql,
    )


def _after(obj, state, op):
    key = "index" if op == "reindex" else "table"
    for entry in state["indexes" if op == "reindex" else "tables"]:
        if entry[key] == obj[key]:
            return entry
    return None


def _brief(entry, op):
    if entry is None:
        return None
    keys = (
        ("size_bytes", "bloat_ratio")
        if op == "reindex"
        else ("size_bytes", "live_tuples", "dead_tuples", "dead_ratio", "bloat_ratio", "changed_since_analyze")
    )
    return {k: entry[k] for k in keys}


# -- what was written since a fingerprint ------------------------------------------
# A maintenance window's rollback may restore its pinned backup only when nothing was
# written since the pin. The state fingerprint of pg_restore (pgrestore_state.py) is taken
# at the pin and compared by the same rule, data writes only: the rewrites of the window
# itself (VACUUM FULL, REINDEX) do not count.
def data_writes(recorded, current):
    """Why data may have been written between two fingerprints ([] = nothing was). Pure."""
    return fingerprint_diff(recorded, current, since="the pin", data_only=True)


def _fingerprints(target, params, db):
    """The ``fingerprint`` and ``writes_since`` parts of the result (only what was asked)."""
    out = {}
    if params.get("fingerprint"):
        out["fingerprint"] = parse_fingerprint(target.scalar(fingerprint_sql(None), db))
    recorded = params.get("writes_since")
    if recorded:
        current = None
        if isinstance(recorded, dict) and recorded.get("v") == FINGERPRINT_VERSION and recorded.get("h") is not None:
            current = parse_fingerprint(target.scalar(fingerprint_sql(recorded.get("h")), db))
        out["writes_since"] = data_writes(recorded, current)
    return out


def run(target, params, check_mode, clock=time.monotonic):
    """Measure, decide, act, measure again: the whole module result (``changed`` included)."""
    started = clock()
    params = validate(params)
    db = params["db_name"]
    op = params["operation"]
    if not target.scalar("SELECT 1 FROM pg_database WHERE datname = %s" % quote_literal(db)):
        raise MaintenanceError("database %s does not exist on %s; check db_name" % (db, target.describe()))
    before = measure(target, db)
    chosen = select(before, params)
    key = "index" if op == "reindex" else "table"
    result = {
        "operation": op,
        "db_name": db,
        "planned": [
            {
                key: o[key],
                "reason": o["reason"],
                "size_bytes": o["size_bytes"],
                "statement": statement(op, o, params["concurrently"]),
            }
            for o in chosen
        ],
        "objects": [],
        "db_size_before_bytes": before["db_size_bytes"],
        "db_size_after_bytes": before["db_size_bytes"],
        "freed_bytes": 0,
        "space_needed_bytes": space_needed(op, chosen, params["space_margin_bytes"]),
        "space_free_bytes": None,
        "queries": [],
        "changed": False,
    }
    result.update(_fingerprints(target, params, db))
    if chosen:
        if exclusive(params):
            rows = target.query(SESSIONS_SQL, db)
            count, apps = (int(rows[0][0]), rows[0][1]) if rows else (0, "")
            problem = sessions_problem(count, apps, params)
            if problem:
                raise MaintenanceError(problem)
        if result["space_needed_bytes"]:
            free = data_dir_free_bytes(target)
            result["space_free_bytes"] = free
            problem = space_problem(free, result["space_needed_bytes"], params)
            if problem:
                raise MaintenanceError(problem)
    if check_mode or not chosen:
        result["changed"] = bool(chosen)
        result["duration_s"] = round(clock() - started, 3)
        return result
    failures = []
    for obj in chosen:
        sql = statement(op, obj, params["concurrently"])
        result["queries"].append(sql)
        t0 = clock()
        rc, _out, err = target.run(
            "psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"], data=_script(params, sql), check=False
        )
        entry = {key: obj[key], "reason": obj["reason"], "statement": sql, "duration_s": round(clock() - t0, 3)}
        if rc == 0:
            entry["status"] = "done"
            result["changed"] = True
        else:
            entry["status"] = "failed"
            entry["error"] = last_line(err)
            failures.append("%s: %s" % (obj[key], entry["error"]))
        result["objects"].append(entry)
    try:
        after = measure(target, db)
    except PgExecError as exc:
        result["duration_s"] = round(clock() - started, 3)
        result["failed"] = True
        result["msg"] = (
            "the maintenance ran, but measuring the result failed: %s; run the module again in check mode to see the state" % exc
        )
        return result
    for position, entry in enumerate(result["objects"]):
        entry["before"] = _brief(chosen[position], op)
        entry["after"] = _brief(_after(chosen[position], after, op), op)
    result["db_size_after_bytes"] = after["db_size_bytes"]
    result["freed_bytes"] = max(0, before["db_size_bytes"] - after["db_size_bytes"])
    result["duration_s"] = round(clock() - started, 3)
    if failures:
        result["failed"] = True
        result["msg"] = (
            "%d of %d object(s) were not maintained: %s. A lock timeout means a session held the object: "
            "re-run in a quieter moment or raise lock_timeout; a statement timeout means the object needs a longer "
            "window (statement_timeout)." % (len(failures), len(chosen), "; ".join(failures))
        )
    return result

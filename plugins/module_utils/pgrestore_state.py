# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state fingerprint of a restored database (when is a re-run a no-op).

Part of ``pg_restore``'s core (overview in ``pgrestore.py``; docs/restore.md,
"When a re-run is a no-op").
"""

from __future__ import annotations

# ruff: noqa: S608 -- every identifier goes through quote_table and every value through quote_literal.

import json

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import quote_literal
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_plan import LOG_SCHEMA, qualified

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
#     "xmin at or after h" is the circular comparison ((xmin - h) mod 2^32) < 2^31 of the
#     32-bit ids. It is computed as ``age(xmin) BETWEEN age(h) - (2^31 - 1) AND age(h)``:
#     both ages count back from the same transaction id (age() is stable within the
#     statement), which makes it the same test for every normal xid (see
#     ``newer_than_horizon``), but two int4 compares per row instead of turning every xmin
#     into text and then a bigint (issue 16); age(h) is computed once per fingerprint.
#     Non-normal ids (a frozen id written by a pre-9.4 server, bootstrap rows) are
#     "infinitely old" to age() and never count as newer.
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
    count = "SELECT count(*)::text || '/' || (count(*) FILTER (WHERE age(xmin) BETWEEN %s AND %s))::text AS c FROM ONLY %I.%I"
    data = (
        "CASE WHEN c.relkind IN ('r', 'm') AND c.relispopulated THEN (xpath('/row/c/text()', query_to_xml(format(%s, "
        "hz.a::bigint - %d, hz.a, n.nspname, c.relname), false, true, '')))[1]::text "
        "WHEN c.relkind = 'S' THEN (xpath('/row/c/text()', query_to_xml(format("
        "'SELECT last_value::text || ''/'' || is_called::text AS c FROM %%I.%%I', n.nspname, c.relname), "
        "false, true, '')))[1]::text ELSE '' END" % (quote_literal(count), _XID_HALF - 1)
    )
    return (
        "WITH h0 AS (SELECT %s AS h), hz AS (SELECT h, age((h %% %d)::text::xid) AS a FROM h0) "
        "SELECT json_build_object('v', %d, 'h', hz.h, "
        "'next', txid_snapshot_xmax(txid_current_snapshot()), "
        "'db_oid', (SELECT oid FROM pg_database WHERE datname = current_database()), "
        "'rels', coalesce((SELECT json_object_agg(n.nspname || '.' || c.relname, json_build_array(c.relkind::text, "
        "c.oid, pg_relation_filenode(c.oid), c.xmin::text, %s) ORDER BY n.nspname, c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE %s), '{}'::json))::text FROM hz"
        % (h, _XID_SPACE, FINGERPRINT_VERSION, data, scope)
    )


def newer_than_horizon(xmin, horizon, now):
    """The fingerprint's per-row test, in Python: the SQL's age() form (see the comment above).

    ``xmin``, ``horizon``, ``now``: 32-bit transaction ids, ``now`` at most 2^31 - 1 after
    ``horizon`` (otherwise ``fingerprint_diff`` reports too many transactions). Equal to
    ``((xmin - horizon) % 2^32) < 2^31`` for every normal xid (tests/unit/test_pgrestore.py).
    """

    def age(xid):
        if xid < 3:  # not a normal xid: age() says "infinitely old"
            return _XID_HALF - 1
        diff = (now - xid) % _XID_SPACE
        return diff - _XID_SPACE if diff >= _XID_HALF else diff  # int4, as age() returns it

    a = age(horizon)
    return a - (_XID_HALF - 1) <= age(xmin) <= a


def fingerprint_diff(recorded, current, since="the restore", data_only=False):
    """Why ``current`` is not the recorded state: a list of reasons ([] = same state).

    Pure. ``recorded`` is the fingerprint taken at a point (a restore stores one; a maintenance
    window takes one at its pin), None when none was taken; ``current`` is the same query run
    now with the recorded horizon (None when it could not be read). ``since`` names that point
    in the reasons. ``data_only`` counts only what a data write changes (the set of tables, row
    counts, rows inserted or updated, sequence values), not the rewrites of VACUUM FULL or
    REINDEX (new file nodes, new pg_class rows). When the comparison cannot be trusted there
    is a reason: the safe direction.
    """
    if not recorded or not isinstance(recorded, dict) or recorded.get("v") != FINGERPRINT_VERSION:
        return ["no state fingerprint was taken at %s" % since]
    if not current or not isinstance(current, dict) or current.get("v") != FINGERPRINT_VERSION:
        return ["the state fingerprint could not be read now"]
    reasons = []
    if current.get("db_oid") != recorded.get("db_oid"):
        reasons.append("the database was dropped and created again")
    try:
        if int(current.get("next")) - int(recorded.get("h")) >= _XID_HALF:
            reasons.append("too many transactions since %s to compare row versions" % since)
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
        if not data_only:
            if list(a[:3]) != list(b[:3]):
                reasons.append("%s was rewritten or truncated" % name)
            elif a[3] != b[3]:
                reasons.append("%s: its definition or privileges changed" % name)
        if a[0] == "S":
            if str(a[4]) != str(b[4]):
                reasons.append("%s: sequence moved from %s to %s" % (name, a[4], b[4]))
            continue
        rows_a, _sep, newer_a = str(a[4]).partition("/")
        rows_b, _sep, newer_b = str(b[4]).partition("/")
        if rows_a != rows_b:
            reasons.append("%s: %s rows now, %s at %s" % (name, rows_b or "?", rows_a or "?", since))
        elif newer_a != newer_b:
            reasons.append("%s: rows inserted or updated since %s" % (name, since))
    return reasons


def parse_fingerprint(text):
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None

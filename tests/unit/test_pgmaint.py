"""Unit tests of the pg_maintenance core: estimates, selection, refusals, statements.

The end-to-end behaviour (real VACUUM/REINDEX on PostgreSQL, the four steps, the
session refusal) is in tests/integration/test_pg_maintenance.py.
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import pgmaint
from ansible_collections.ner11.ops.plugins.module_utils.pgmaint import MaintenanceError


def params(**kw):
    base = {"db_name": "ner11_db", "operation": "vacuum"}
    base.update(kw)
    return pgmaint.validate(base)


def table(name="t", **kw):
    entry = {
        "schema": "public",
        "name": name,
        "table": "public.%s" % name,
        "pages": 100,
        "table_bytes": 819200,
        "size_bytes": 16 * 1024 * 1024,
        "live_tuples": 1000,
        "dead_tuples": 0,
        "changed_since_analyze": 0,
        "dead_ratio": 0.0,
        "bloat_ratio": 0.0,
    }
    entry.update(kw)
    return entry


def index(name="t_pkey", **kw):
    entry = {"schema": "public", "name": name, "index": "public." + name, "table": "public.t", "method": "btree",
             "size_bytes": 16 * 1024 * 1024, "valid": True, "bloat_ratio": 0.0}  # fmt: skip
    entry.update(kw)
    return entry


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"db_name": "x;drop"}, "not a database name"),
        ({"operation": "cluster"}, "not one of"),
        ({"tables": ["a.b.c"]}, "not a table name"),
        ({"lock_timeout": 0}, "lock_timeout must be at least 1"),
        ({"min_bloat_ratio": 1.5}, "between 0 and 1"),
        ({"min_size_bytes": -1}, "0 or more"),
    ],
)
def test_validate_rejects_with_the_fix(bad, fragment):
    with pytest.raises(MaintenanceError, match=fragment):
        params(**bad)


def test_validate_splits_schema_and_defaults_public():
    assert params(tables=["documents", "audit.log"])["tables"] == [("public", "documents"), ("audit", "log")]


def test_table_bloat_estimate():
    # 1000 rows of 8-byte ints: about 40 bytes each -> one page; 100 pages means ~99 % free.
    assert pgmaint.table_bloat(100, 1000, 8, 1) > 0.9
    assert pgmaint.table_bloat(1, 1000, 8, 1) == 0.0
    assert pgmaint.table_bloat(0, 0, 8, 1) is None  # empty / never vacuumed
    assert pgmaint.table_bloat(10, -1, 8, 1) is None  # no statistics


def test_index_bloat_estimate_only_for_plain_btree():
    assert pgmaint.index_bloat(1000, 10000, 4, "btree", False) > 0.9
    assert pgmaint.index_bloat(1000, 10000, 4, "gin", False) is None
    assert pgmaint.index_bloat(1000, 10000, 4, "btree", True) is None
    assert pgmaint.index_bloat(29, 10000, 4, "btree", False) == 0.0


def test_select_vacuum_takes_dead_or_changed_tables_only():
    state = {"tables": [table("a", dead_tuples=5), table("b", changed_since_analyze=3), table("c")], "indexes": []}
    chosen = pgmaint.select(state, params())
    assert [c["name"] for c in chosen] == ["a", "b"]
    assert "dead tuple" in chosen[0]["reason"] and "changed" in chosen[1]["reason"]
    assert [c["name"] for c in pgmaint.select(state, params(force=True))] == ["a", "b", "c"]


def test_select_analyze_ignores_dead_tuples():
    state = {"tables": [table("a", dead_tuples=5), table("b", changed_since_analyze=3)], "indexes": []}
    assert [c["name"] for c in pgmaint.select(state, params(operation="analyze"))] == ["b"]


def test_select_vacuum_full_by_dead_share_or_estimate_and_size():
    state = {
        "tables": [
            table("dead", dead_tuples=800, dead_ratio=0.8),
            table("bloated", bloat_ratio=0.5),
            table("small", dead_tuples=800, dead_ratio=0.8, size_bytes=1024),
            table("fine", bloat_ratio=0.1),
            table("unknown", bloat_ratio=None),
        ],
        "indexes": [],
    }
    assert [c["name"] for c in pgmaint.select(state, params(operation="vacuum_full"))] == ["dead", "bloated"]


def test_select_reindex_bloated_and_invalid_indexes_in_scope():
    state = {
        "tables": [table()],
        "indexes": [
            index("bloated", bloat_ratio=0.6),
            index("fine", bloat_ratio=0.1),
            index("broken", valid=False),
            index("gin", bloat_ratio=None),
            index("other_table", bloat_ratio=0.9, table="public.u"),
        ],
    }
    chosen = pgmaint.select(state, params(operation="reindex", tables=["t"]))
    assert [c["name"] for c in chosen] == ["bloated", "broken"]


def test_select_names_missing_tables():
    with pytest.raises(MaintenanceError, match="public.nope do not exist"):
        pgmaint.select({"tables": [table()], "indexes": []}, params(tables=["nope"]))


def test_statements_quote_names():
    assert pgmaint.statement("vacuum", table('we"ird'), True) == 'VACUUM (ANALYZE) "public"."we""ird"'
    assert pgmaint.statement("vacuum_full", table(), True) == 'VACUUM (FULL, ANALYZE) "public"."t"'
    assert pgmaint.statement("analyze", table(), True) == 'ANALYZE "public"."t"'
    assert pgmaint.statement("reindex", index(), True) == 'REINDEX INDEX CONCURRENTLY "public"."t_pkey"'
    assert pgmaint.statement("reindex", index(), False) == 'REINDEX INDEX "public"."t_pkey"'


def test_exclusive_operations_refuse_connected_sessions():
    assert pgmaint.sessions_problem(2, "fastapi", params(operation="vacuum")) is None
    assert pgmaint.sessions_problem(2, "fastapi", params(operation="reindex")) is None
    assert pgmaint.sessions_problem(0, "", params(operation="vacuum_full")) is None
    msg = pgmaint.sessions_problem(2, "fastapi", params(operation="vacuum_full"))
    assert "2 other session(s)" in msg and "fastapi" in msg and "ner11_action=stop" in msg
    assert "REINDEX without CONCURRENTLY" in pgmaint.sessions_problem(1, "x", params(operation="reindex", concurrently=False))


def test_space_needed_is_the_largest_rewrite_plus_margin():
    chosen = [table("a", size_bytes=100), table("b", size_bytes=300)]
    assert pgmaint.space_needed("vacuum_full", chosen, 10) == 310
    assert pgmaint.space_needed("vacuum", chosen, 10) == 0
    assert pgmaint.space_needed("reindex", [], 10) == 0


def test_space_problem_names_the_numbers():
    p = params(operation="vacuum_full")
    assert pgmaint.space_problem(None, 10, p) is None
    assert pgmaint.space_problem(20, 10, p) is None
    msg = pgmaint.space_problem(5 * 1048576, 200 * 1048576, p)
    assert "needs 200 MiB" in msg and "5 MiB free" in msg and "incident_disk.yml" in msg


class ScriptedTarget:
    """A fake PgTarget for the refusal paths of run() (unit level; the real path is integration-tested)."""

    container = "pg"

    def __init__(self, tables, sessions=(0, ""), free=None):
        self.tables_rows = tables
        self.sessions = sessions
        self.free = free
        self.ran = []

    def describe(self):
        return "container pg"

    def scalar(self, sql, db="postgres"):
        if "FROM pg_database" in sql:
            return "1"
        if "pg_database_size" in sql:
            return "1000"
        return "/var/lib/postgresql/data"

    def query(self, sql, db="postgres"):
        if sql is pgmaint.TABLES_SQL:
            return self.tables_rows
        if sql is pgmaint.INDEXES_SQL:
            return []
        return [[str(self.sessions[0]), self.sessions[1]]]

    def run(self, tool, args, data=None, check=True):
        self.ran.append((tool, data))
        if tool == "df":
            return 0, "Filesystem 1B-blocks Used Available Use%% Mounted\n/dev/x 1 1 %d 1%% /\n" % self.free, ""
        return 0, "", ""


ROW = ["public", "t", "1", "100", "1000", "819200", "16777216", "200", "800", "0", "8", "1", "100"]


def test_run_refuses_vacuum_full_with_sessions_and_runs_nothing():
    target = ScriptedTarget([ROW], sessions=(3, "fastapi"))
    with pytest.raises(MaintenanceError, match="3 other session"):
        pgmaint.run(target, {"db_name": "ner11_db", "operation": "vacuum_full"}, check_mode=False)
    assert target.ran == []


def test_run_refuses_when_space_is_short_and_runs_nothing():
    target = ScriptedTarget([ROW], free=1024)
    with pytest.raises(MaintenanceError, match="not enough free space"):
        pgmaint.run(target, {"db_name": "ner11_db", "operation": "vacuum_full"}, check_mode=False)
    assert [tool for tool, _data in target.ran] == ["df"]


def test_run_check_mode_plans_without_statements():
    target = ScriptedTarget([ROW], free=10 * 1024**3)
    result = pgmaint.run(target, {"db_name": "ner11_db", "operation": "vacuum"}, check_mode=True)
    assert result["changed"] is True
    assert result["planned"][0]["statement"] == 'VACUUM (ANALYZE) "public"."t"'
    assert [tool for tool, _data in target.ran] == []


class FailingTarget(ScriptedTarget):
    """The scripted target whose statements end with ``rc`` and whose second measurement may fail."""

    def __init__(self, rc, fail_measure=False):
        super().__init__([ROW], free=10 * 1024**3)
        self.rc = rc
        self.fail_measure = fail_measure

    def query(self, sql, db="postgres"):
        if self.fail_measure and sql is pgmaint.TABLES_SQL and self.ran:
            raise pgmaint.PgExecError("psql failed: server closed the connection")
        return super().query(sql, db)

    def run(self, tool, args, data=None, check=True):
        self.ran.append((tool, data))
        return (self.rc, "", "ERROR:  canceling statement due to lock timeout\n") if tool == "psql" else (1, "", "")


def test_run_applies_and_measures_again():
    target = ScriptedTarget([ROW], free=10 * 1024**3)
    result = pgmaint.run(target, {"db_name": "ner11_db", "operation": "vacuum"}, check_mode=False)
    assert result["changed"] is True and result["objects"][0]["status"] == "done"
    assert "SET lock_timeout = '10s'" in target.ran[0][1] and result["objects"][0]["before"]["dead_tuples"] is not None


def test_a_failed_statement_is_named_with_the_fix():
    result = pgmaint.run(FailingTarget(1), {"db_name": "ner11_db", "operation": "vacuum"}, check_mode=False)
    assert result["failed"] and result["objects"][0]["error"] == "ERROR:  canceling statement due to lock timeout"
    assert "raise lock_timeout" in result["msg"] and result["changed"] is False


def test_a_failed_second_measurement_is_reported():
    result = pgmaint.run(FailingTarget(0, fail_measure=True), {"db_name": "ner11_db", "operation": "vacuum"}, check_mode=False)
    assert result["failed"] and "measuring the result failed" in result["msg"] and result["changed"] is True


def fp(rels, h=100, nxt=120, db_oid=5):
    return {"v": pgmaint.FINGERPRINT_VERSION, "h": h, "next": nxt, "db_oid": db_oid, "rels": rels}


PIN = {
    "public.t": ["r", 1, 1001, "700", "10/0"],
    "public.t_id_seq": ["S", 2, 1002, "701", "10/true"],
    "public.v": ["v", 3, 0, "702", ""],
}


def test_data_writes_ignores_the_rewrites_of_the_window():
    # VACUUM FULL / REINDEX: new file nodes and pg_class rows, same rows and sequence values.
    rewritten = {
        "public.t": ["r", 1, 2001, "900", "10/0"],
        "public.t_id_seq": ["S", 2, 1002, "701", "10/true"],
        "public.v": ["v", 3, 0, "702", ""],
    }
    assert pgmaint.data_writes(fp(PIN), fp(rewritten)) == []


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"public.t": ["r", 1, 1001, "700", "11/1"]}, "public.t: 11 rows now, 10 at the pin"),
        ({"public.t": ["r", 1, 1001, "700", "10/1"]}, "public.t: rows inserted or updated since the pin"),
        ({"public.t_id_seq": ["S", 2, 1002, "701", "11/true"]}, "sequence moved from 10/true to 11/true"),
        ({"public.new": ["r", 9, 9, "9", "0/0"]}, "public.new was created"),
    ],
)
def test_data_writes_names_each_write(change, fragment):
    assert fragment in "; ".join(pgmaint.data_writes(fp(PIN), fp(dict(PIN, **change))))


def test_data_writes_counts_an_unusable_comparison_as_written():
    dropped = {k: v for k, v in PIN.items() if k != "public.t"}
    assert pgmaint.data_writes(fp(PIN), fp(dropped)) == ["public.t was dropped"]
    assert pgmaint.data_writes(None, fp(PIN)) == ["no state fingerprint was taken at the pin"]
    assert pgmaint.data_writes(fp(PIN), None) == ["the state fingerprint could not be read now"]
    assert pgmaint.data_writes(fp(PIN), fp(PIN, db_oid=6)) == ["the database was dropped and created again"]
    assert pgmaint.data_writes(fp(PIN), fp(PIN, nxt=100 + 2**31)) == [
        "too many transactions since the pin to compare row versions"
    ]
    assert pgmaint.data_writes(fp(PIN), fp(PIN, nxt="x")) == ["the transaction horizon is unreadable"]


class FingerprintTarget(ScriptedTarget):
    """The scripted target answering the fingerprint query with ``now``."""

    def __init__(self, now):
        super().__init__([], free=10 * 1024**3)
        self.now = now
        self.horizons = []

    def scalar(self, sql, db="postgres"):
        if "json_build_object" in sql:
            self.horizons.append(sql.split("SELECT ", 2)[1].split(" AS h")[0])
            return json.dumps(self.now)
        return super().scalar(sql, db)


def test_run_returns_the_fingerprint_and_what_was_written_since_one():
    target = FingerprintTarget(fp(PIN, h=150))
    base = {"db_name": "ner11_db", "operation": "analyze"}
    result = pgmaint.run(target, dict(base, fingerprint=True), check_mode=True)
    assert result["fingerprint"]["rels"] == PIN and "writes_since" not in result
    target.now = fp(dict(PIN, **{"public.t": ["r", 1, 1001, "700", "12/2"]}))
    result = pgmaint.run(target, dict(base, writes_since=fp(PIN, h=150)), check_mode=True)
    assert result["writes_since"] == ["public.t: 12 rows now, 10 at the pin"]
    assert target.horizons[-1] == "150::bigint"  # compared with the horizon of the pin
    assert pgmaint.run(target, dict(base, writes_since={"v": 0}), check_mode=True)["writes_since"] == [
        "no state fingerprint was taken at the pin"
    ]

"""pg_maintenance against a real PostgreSQL (the reference image): real bloat, real VACUUM/REINDEX.

One PostgreSQL container for the module. Each test owns its table (autovacuum off on it, so
only the module maintains it) and proves the four steps: check -> apply -> check -> apply.
"""

from __future__ import annotations

import time

import psycopg2
import pytest
from conftest import StandalonePostgres, run_module

DB = "ner11_db"


class Postgres(StandalonePostgres):
    def __init__(self):
        super().__init__("itpm")

    def make_table(self, name, rows, keep_every):
        """A table of ``rows`` rows, autovacuum off, then all but every ``keep_every``-th row deleted."""
        self.sql(
            "CREATE TABLE %s (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false);"
            "INSERT INTO %s SELECT g, md5(g::text) FROM generate_series(1, %d) g;"
            "ANALYZE %s;" % (name, name, rows, name)
        )
        self.sql("DELETE FROM %s WHERE id %% %d <> 0" % (name, keep_every))

    def size(self, name):
        return int(self.sql("SELECT pg_total_relation_size('%s')" % name))


@pytest.fixture(scope="module")
def pg():
    server = Postgres()
    server.remove()
    server.start()
    yield server
    server.remove()


def maint(pg, check=False, **args):
    args.setdefault("container", pg.name)
    args.setdefault("db_name", DB)
    args.setdefault("min_size_bytes", 1024 * 1024)
    return run_module("ner11.ops.pg_maintenance", args, check=check)


def four_steps(pg, **args):
    first = maint(pg, check=True, **args)
    applied = maint(pg, **args)
    again = maint(pg, check=True, **args)
    last = maint(pg, **args)
    for res in (first, applied, again, last):
        assert not res.get("failed"), res.get("msg")
    assert first["changed"] is True and first["objects"] == []
    assert applied["changed"] is True
    assert again["changed"] is False and again["planned"] == []
    assert last["changed"] is False and last["queries"] == []
    return first, applied


def test_vacuum_analyze_four_steps(pg):
    pg.make_table("vac_t", 100000, 2)
    plan, applied = four_steps(pg, operation="vacuum", tables=["vac_t"])
    assert plan["planned"][0]["statement"] == 'VACUUM (ANALYZE) "public"."vac_t"'
    assert "dead tuple" in plan["planned"][0]["reason"]
    obj = applied["objects"][0]
    assert obj["status"] == "done"
    assert obj["before"]["dead_tuples"] >= 40000
    assert obj["after"]["dead_tuples"] == 0
    assert obj["after"]["live_tuples"] == 50000


def test_analyze_four_steps(pg):
    pg.sql("CREATE TABLE ana_t (id int) WITH (autovacuum_enabled = false); INSERT INTO ana_t SELECT generate_series(1, 5000)")
    _plan, applied = four_steps(pg, operation="analyze", tables=["ana_t"])
    assert applied["objects"][0]["before"]["changed_since_analyze"] == 5000
    assert applied["objects"][0]["after"]["changed_since_analyze"] == 0


def test_reindex_concurrently_four_steps(pg):
    pg.make_table("idx_t", 200000, 10)
    pg.sql("VACUUM idx_t")  # dead entries leave the index, its pages stay: the index is bloated
    before = int(pg.sql("SELECT pg_relation_size('idx_t_pkey')"))
    plan, applied = four_steps(pg, operation="reindex", tables=["idx_t"])
    assert plan["planned"][0]["index"] == "public.idx_t_pkey"
    assert plan["planned"][0]["statement"] == 'REINDEX INDEX CONCURRENTLY "public"."idx_t_pkey"'
    obj = applied["objects"][0]
    assert obj["before"]["bloat_ratio"] >= 0.3
    assert obj["after"]["size_bytes"] < before / 4
    assert int(pg.sql("SELECT pg_relation_size('idx_t_pkey')")) == obj["after"]["size_bytes"]


def test_vacuum_full_refused_while_a_session_is_connected_then_runs(pg):
    pg.make_table("full_t", 200000, 5)
    size = pg.size("full_t")
    conn = psycopg2.connect(
        host="127.0.0.1", port=pg.port, dbname=DB, user="postgres", password=pg.password, application_name="it-writer"
    )
    try:
        for check in (True, False):
            res = maint(pg, check=check, operation="vacuum_full", tables=["full_t"])
            assert res.get("failed") and res["changed"] is False
            assert "1 other session(s)" in res["msg"] and "it-writer" in res["msg"]
            assert "ner11_action=stop" in res["msg"]
        assert pg.size("full_t") == size, "a refused VACUUM FULL must touch nothing"
    finally:
        conn.close()
    time.sleep(0.5)  # the backend leaves pg_stat_activity a moment after the client closes
    plan, applied = four_steps(pg, operation="vacuum_full", tables=["full_t"])
    assert plan["space_needed_bytes"] > size and plan["space_free_bytes"] > plan["space_needed_bytes"]
    obj = applied["objects"][0]
    assert obj["after"]["size_bytes"] < obj["before"]["size_bytes"] / 2
    assert applied["freed_bytes"] > 0
    assert int(pg.sql("SELECT count(*) FROM full_t")) == 40000


def test_rewrite_refused_when_space_is_short(pg):
    pg.make_table("space_t", 50000, 2)
    size = pg.size("space_t")
    res = maint(pg, operation="vacuum_full", tables=["space_t"], space_margin_bytes=2**50)
    assert res.get("failed") and res["changed"] is False
    assert "not enough free space" in res["msg"] and "MiB free" in res["msg"]
    assert pg.size("space_t") == size


def test_bad_input_names_the_fix(pg):
    res = maint(pg, operation="vacuum", tables=["no_such_table"])
    assert res.get("failed") and "public.no_such_table do not exist" in res["msg"]
    res = maint(pg, operation="vacuum", container=pg.name + "-missing")
    assert res.get("failed") and "container does not exist: deploy the stack" in res["msg"] and not res["changed"]
    res = maint(pg, operation="vacuum", db_name="nope_db")
    assert res.get("failed") and "database nope_db does not exist" in res["msg"]

"""One identifier rule (issue 11): a database named ``my-db`` is backed up, verified and restored.

One standalone PostgreSQL container for the module; the canary table is given
schema-qualified (``public.t``), which every module accepts.
"""

from __future__ import annotations

import pytest
from conftest import StandalonePostgres, docker, run_module

DB = "my-db"
ROWS = 3


class Postgres(StandalonePostgres):
    def sql_in(self, db, sql):
        proc = docker("exec", "-u", "postgres", self.name, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", db, "-c", sql)
        return proc.stdout.strip()


@pytest.fixture(scope="module")
def pg():
    server = Postgres("itid")
    server.remove()
    try:
        server.start()
        server.sql('CREATE DATABASE "my-db";')
        server.sql_in(
            DB,
            "CREATE TABLE public.t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, %d) g;"
            % ROWS,
        )
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def backup(pg, tmp_path_factory):
    backup_dir = tmp_path_factory.mktemp("idbackups")
    args = {"container": pg.name, "db_name": DB, "backup_dir": str(backup_dir), "format": "custom", "canary_tables": ["public.t"]}
    result = run_module("ner11.ops.pg_backup", args)
    assert not result.get("failed"), result.get("msg")
    return backup_dir, result


def test_my_db_is_backed_up_with_a_qualified_canary(backup):
    _dir, result = backup
    assert result["changed"] is True
    assert result["backup_id"].startswith("my-db-")
    assert result["manifest"]["source"]["db_name"] == DB
    assert result["manifest"]["row_counts"] == {"public.t": ROWS}


def test_my_db_backup_verifies_and_test_restores(pg, backup):
    backup_dir, made = backup
    result = run_module(
        "ner11.ops.backup_verify",
        {"container": pg.name, "backup_dir": str(backup_dir), "backup_id": made["backup_id"], "test_restore": True},
    )
    assert not result.get("failed"), result.get("msg")
    assert result["status"] == "ok"
    assert result["test_restore"]["row_counts"] == {"public.t": ROWS}
    assert result["test_restore"]["errors"] == []


def test_my_db_is_restored_after_data_loss_then_a_rerun_is_a_no_op(pg, backup):
    backup_dir, made = backup
    pg.sql_in(DB, "DELETE FROM t WHERE id > 1;")
    assert pg.sql_in(DB, "SELECT count(*) FROM t;") == "1"
    args = {
        "container": pg.name,
        "db_name": DB,
        "backup_dir": str(backup_dir),
        "backup_id": made["backup_id"],
        "if_exists": "replace",
        "confirm": DB,
    }
    result = run_module("ner11.ops.pg_restore", args)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["restored"] is True
    assert result["row_counts"] == {"public.t": ROWS}
    assert pg.sql_in(DB, "SELECT count(*) FROM t;") == str(ROWS)
    # No temporary or replaced copy of my-db is left behind.
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname LIKE 'my-db\\_\\_%';") == "0"
    again = run_module("ner11.ops.pg_restore", args)
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["operation"] == "none"

"""pg_sessions against a real PostgreSQL (the reference image), sessions held by this test.

One PostgreSQL container for the module (no api/frontend needed); every session the test
opens is a real psycopg2 connection over the published 127.0.0.1 port.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
from conftest import StandalonePostgres, run_module

DB = "ner11_db"


class Postgres(StandalonePostgres):
    def __init__(self):
        super().__init__("itps")
        self.conns = []

    def start(self):
        super().start()
        conn = self.connect("it-setup", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")
            cur.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b') ON CONFLICT DO NOTHING")
        conn.close()

    def connect(self, app, autocommit=False):
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, dbname=DB, user="postgres", password=self.password,
            application_name=app, connect_timeout=5,
        )  # fmt: skip
        conn.autocommit = autocommit
        self.conns.append(conn)
        return conn

    def close_all(self):
        for conn in self.conns:
            try:
                conn.close()
            except psycopg2.Error:
                pass
        self.conns = []


def present(pg, pid):
    """The session exists (asked from another connection: probing it would reset its state age)."""
    conn = pg.connect("it-observer", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            return cur.fetchone()[0] == 1
    finally:
        conn.close()


def alive(conn):
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        return True
    except psycopg2.Error:
        return False


@pytest.fixture(scope="module")
def pg():
    server = Postgres()
    server.remove()
    try:
        server.start()
        yield server
    finally:
        server.close_all()
        server.remove()


def sessions(pg, check=False, **args):
    base = {"container": pg.name, "db_name": DB}
    base.update(args)
    return run_module("ner11.ops.pg_sessions", base, check=check)


def idle_in_transaction(pg, app, sql="SELECT 1"):
    conn = pg.connect(app)
    pid = conn.get_backend_pid()
    with conn.cursor() as cur:
        cur.execute(sql)
    return conn, pid


def test_four_steps_terminate_idle_in_transaction_only(pg):
    victim, victim_pid = idle_in_transaction(pg, "it-worker")
    dump, dump_pid = idle_in_transaction(pg, "pg_dump")  # a backup: never ended
    idle = pg.connect("it-worker", autocommit=True)
    idle_pid = idle.get_backend_pid()
    time.sleep(1.5)
    args = dict(select=["idle_in_transaction"], idle_in_transaction_seconds=1, action="terminate", confirm=DB)

    planned = sessions(pg, check=True, **args)
    assert planned.get("failed") is not True, planned.get("msg")
    assert planned["changed"] is True and planned["terminated"] == [victim_pid]
    assert present(pg, victim_pid), "check mode ended a session"
    listed = {s["pid"]: s for s in planned["sessions"]}
    assert listed[dump_pid]["protected"].startswith("maintenance or backup application")
    assert listed[dump_pid]["over_threshold"] == ["idle_in_transaction"]
    assert listed[idle_pid]["state"] == "idle" and listed[idle_pid]["over_threshold"] == []
    assert planned["counts"]["idle in transaction"] >= 2 and planned["counts"]["active"] >= 1
    assert planned["max_connections"] == 100 and 0 < planned["utilisation_percent"] < 80
    assert planned["pool_status"] == "pass"

    applied = sessions(pg, **args)
    assert applied["changed"] is True and applied["terminated"] == [victim_pid], {
        k: applied.get(k) for k in ("terminated", "left_alone", "selected", "queries", "msg")
    }
    assert not alive(victim)
    assert alive(dump) and alive(idle)

    again_check = sessions(pg, check=True, **args)
    assert again_check["changed"] is False and again_check["terminated"] == []
    again = sessions(pg, **args)
    assert again["changed"] is False and again["selected"] == [] and again["terminated"] == []
    dump.rollback()


def test_refuses_to_act_without_confirm_naming_the_database(pg):
    victim, victim_pid = idle_in_transaction(pg, "it-noconfirm")
    time.sleep(1.2)
    res = sessions(pg, select=["idle_in_transaction"], idle_in_transaction_seconds=1, action="terminate", confirm="ner11")
    assert res.get("failed") is True and "confirm=ner11_db" in res["msg"]
    assert alive(victim)
    victim.rollback()


def test_blocking_pair_masked_query_then_the_blocker_is_terminated(pg):
    holder, holder_pid = idle_in_transaction(pg, "it-holder", "UPDATE t SET v = 'hunter2-secret' WHERE id = 1")
    waiter = pg.connect("it-waiter")
    outcome = {}

    def wait_on_lock():
        try:
            with waiter.cursor() as cur:
                cur.execute("UPDATE t SET v = 'waiter' WHERE id = 1")
            waiter.commit()
            outcome["ok"] = True
        except psycopg2.Error as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=wait_on_lock)
    thread.start()
    time.sleep(1.5)

    report = sessions(pg)
    assert report["changed"] is False and report["selected"] == []
    pairs = [(b["blocked_pid"], b["blocking_pid"]) for b in report["blocking"]]
    assert (waiter.get_backend_pid(), holder_pid) in pairs
    pair = [b for b in report["blocking"] if b["blocking_pid"] == holder_pid][0]
    assert pair["blocking_query"] == "UPDATE t SET v = ? WHERE id = ?"
    assert "hunter2" not in report["_stdout"]
    assert any("waiting on a lock" in f for f in report["findings"])

    res = sessions(pg, select=["blocking"], blocked_seconds=1, action="terminate", confirm=DB)
    assert res["changed"] is True and res["terminated"] == [holder_pid], res
    thread.join(20)
    assert outcome == {"ok": True}, outcome
    assert not alive(holder)


def test_running_statement_is_cancelled_not_terminated(pg):
    runner = pg.connect("it-runner", autocommit=True)
    runner_pid = runner.get_backend_pid()
    outcome = {}

    def long_query():
        try:
            with runner.cursor() as cur:
                cur.execute("SELECT pg_sleep(60)")
        except psycopg2.Error as exc:
            outcome["error"] = exc.pgcode

    thread = threading.Thread(target=long_query)
    thread.start()
    time.sleep(1.5)
    res = sessions(pg, select=["running"], running_seconds=1, action="terminate", confirm=DB, application_names=["it-runner"])
    thread.join(20)
    assert res["cancelled"] == [runner_pid] and res["terminated"] == [], res
    assert outcome.get("error") == "57014"  # query_canceled
    assert alive(runner)  # the session survives a cancel


def test_deadlocks_and_pending_restart_are_reported(pg):
    a = pg.connect("it-dl-a")
    b = pg.connect("it-dl-b")
    with a.cursor() as cur:
        cur.execute("UPDATE t SET v = 'a' WHERE id = 1")
    with b.cursor() as cur:
        cur.execute("UPDATE t SET v = 'b' WHERE id = 2")
    errors = []

    def a_takes_2():
        try:
            with a.cursor() as cur:
                cur.execute("UPDATE t SET v = 'a' WHERE id = 2")
        except psycopg2.Error as exc:
            errors.append(exc.pgcode)

    thread = threading.Thread(target=a_takes_2)
    thread.start()
    time.sleep(0.5)
    try:
        with b.cursor() as cur:
            cur.execute("UPDATE t SET v = 'b' WHERE id = 1")
    except psycopg2.Error as exc:
        errors.append(exc.pgcode)
    thread.join(20)
    a.rollback()
    b.rollback()
    assert "40P01" in errors  # deadlock_detected, made for real

    setup = pg.connect("it-setup", autocommit=True)
    with setup.cursor() as cur:
        cur.execute("ALTER SYSTEM SET max_connections = 101")
        cur.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        res = sessions(pg)
        assert res["deadlocks_db"] >= 1 and res["deadlocks"][DB] >= 1
        assert "max_connections" in res["pending_restart"]
        assert any("deadlock" in f for f in res["findings"]) and any("restart" in f for f in res["findings"])
    finally:
        with setup.cursor() as cur:
            cur.execute("ALTER SYSTEM RESET max_connections")
            cur.execute("SELECT pg_reload_conf()")

"""Unit tests of plugins/module_utils/sessions.py (pg_sessions core), no database needed.

The FakeTarget stands in for psql: it answers the snapshot with a document built here and
records the signalling statements, answering them like PostgreSQL would for the pids given.
"""

from __future__ import annotations

import json
import re

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import sessions as S
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgExecError, db_error_hint


def session(pid, state="idle", age=10.0, app="fastapi", db="ner11_db", user="app", query="SELECT 1", **kw):
    doc = {
        "pid": pid,
        "datname": db,
        "usename": user,
        "application_name": app,
        "client_addr": "172.18.0.3",
        "backend_type": "client backend",
        "state": state,
        "wait_event_type": None,
        "wait_event": None,
        "backend_age_s": age + 5,
        "xact_age_s": age if state != "idle" else None,
        "query_age_s": age,
        "state_age_s": age,
        "state_change_us": 1700000000000000 + pid,
        "blocked_by": [],
        "query": query,
    }
    doc.update(kw)
    return doc


def snapshot(sessions, max_connections=100, deadlocks=None, pending=None):
    return {
        "self_pid": 1,
        "server_version": "15.8",
        "max_connections": max_connections,
        "reserved_connections": 3,
        "sessions": sessions,
        "deadlocks": deadlocks if deadlocks is not None else {"ner11_db": 0, "postgres": 0},
        "pending_restart": pending or [],
    }


class FakeTarget:
    def __init__(self, snap, moved=()):
        self.snap = snap
        self.moved = set(moved)
        self.alive = {s["pid"] for s in snap["sessions"]}
        self.statements = []

    def query(self, sql, db="postgres"):
        self.statements.append(sql)
        if "json_build_object" in sql:
            return [[json.dumps(self.snap)]]
        match = re.search(r"SELECT a\.pid, (pg_\w+_backend)", sql)
        if match:
            pids = [int(p) for p in re.findall(r"\((\d+), \d+::bigint\)", sql)]
            out = []
            for pid in pids:
                if pid in self.alive and pid not in self.moved:
                    out.append([str(pid), "t"])
                    if match.group(1) == "pg_terminate_backend":
                        self.alive.discard(pid)
            return out
        if "state_change" in sql:  # after a cancel: the statement ended (state_change moved)
            return [[str(p), "0"] for p in re.findall(r"(\d+)", sql.split("IN (")[1]) if int(p) in self.alive]
        if sql.startswith("SELECT pid FROM pg_stat_activity WHERE pid IN"):
            return [[str(p)] for p in re.findall(r"(\d+)", sql.split("IN (")[1]) if int(p) in self.alive]
        raise AssertionError("unexpected SQL %s" % sql)


def params(**kw):
    base = {"db_name": "ner11_db"}
    base.update(kw)
    return base


# -- masking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, expected",
    [
        ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD ?"),
        ("SELECT * FROM t WHERE a = 'it''s' AND b = 42 AND c = 1.5e3", "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"),
        ("SELECT E'x\\'y' , $$secret$$, $tag$more$tag$", "SELECT ? , ?, ?"),
        ("SELECT 1 -- password 'x'\n FROM t /* s3cret */ WHERE id = $1", "SELECT ? FROM t WHERE id = $1"),
        ('SELECT "col""x", t2.c3 FROM t2', 'SELECT "col""x", t2.c3 FROM t2'),
        ("INSERT INTO t VALUES ('unterminated secr", "INSERT INTO t VALUES (?"),
        ("SELECT X'1F', B'101', N'abc'", "SELECT ?, ?, ?"),
    ],
)
def test_mask_query_hides_every_literal(query, expected):
    assert S.mask_query(query) == expected


def test_mask_query_truncates_and_keeps_none():
    long = "SELECT " + ", ".join("col%d" % i for i in range(100))
    out = S.mask_query(long, 40)
    assert len(out) <= 40 and out.endswith("...")
    assert S.mask_query(None) is None


# -- input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"db_name": "bad name;"}, "db_name"),
        ({"db_name": "ner11_db", "select": ["everything"]}, "unknown rule"),
        ({"db_name": "ner11_db", "action": "terminate"}, "needs at least one rule"),
        ({"db_name": "ner11_db", "idle_seconds": -1}, "idle_seconds"),
        ({"db_name": "ner11_db", "utilisation_warn_percent": 0}, "utilisation_warn_percent"),
    ],
)
def test_validate_rejects_bad_input(bad, message):
    with pytest.raises(S.SessionsError, match=message):
        S.validate(bad)


def test_confirm_is_required_to_act_but_not_to_plan():
    p = S.validate(params(select=["idle"], action="terminate"))
    assert "confirm=ner11_db" in S.confirm_problem(p, check_mode=False)
    assert S.confirm_problem(p, check_mode=True) is None
    assert S.confirm_problem(dict(p, confirm="ner11_db"), check_mode=False) is None
    assert S.confirm_problem(S.validate(params()), check_mode=False) is None
    target = FakeTarget(snapshot([session(10, "idle", 4000)]))
    with pytest.raises(S.SessionsError, match="set confirm=ner11_db"):
        S.run(target, params(select=["idle"], action="terminate", confirm="other_db"), check_mode=False)
    assert target.statements == []


# -- analysis --------------------------------------------------------------------


def test_counts_utilisation_and_findings():
    sessions = [session(i, "idle", 20) for i in range(10, 90)] + [session(90, "idle in transaction", 400)]
    snap = snapshot(sessions, deadlocks={"ner11_db": 2}, pending=["max_connections"])
    out = S.analyse(snap, S.validate(params()))
    assert out["counts"] == {"active": 1, "idle": 80, "idle in transaction": 1}
    assert out["connections"] == 82 and out["utilisation_percent"] == 82.0 and out["pool_status"] == "warn"
    assert out["deadlocks_db"] == 2 and out["pending_restart"] == ["max_connections"]
    text = " | ".join(out["findings"])
    assert "82 of 100 connection slots" in text
    assert "1 session(s) over the idle in transaction threshold" in text
    assert "2 deadlock(s)" in text and "max_connections" in text
    assert out["selected"] == []  # no rule selected: diagnosis only


def test_rules_select_over_threshold_sessions_in_scope_only():
    sessions = [
        session(10, "idle in transaction", 400),
        session(11, "idle in transaction", 100),
        session(12, "idle", 2000),
        session(13, "active", 400, query="SELECT pg_sleep(1000)"),
        session(14, "idle in transaction", 400, db="other_db"),
        session(15, "idle in transaction", 400, app="psql"),
        session(16, "idle in transaction", 400, user="report"),
    ]
    p = S.validate(params(select=["idle_in_transaction", "running"], application_names=["fastapi", "psql"], users=["app"]))
    out = S.analyse(snapshot(sessions), p)
    assert [(e["pid"], e["rules"]) for e in out["selected"]] == [
        (10, ["idle_in_transaction"]),
        (13, ["running"]),
        (15, ["idle_in_transaction"]),
    ]
    listed = {e["pid"]: e for e in out["sessions"]}
    assert listed[12]["over_threshold"] == ["idle"]  # reported, not selected (idle not in select)
    assert listed[13]["query"] == "SELECT pg_sleep(?)"


def test_never_own_replication_maintenance_or_protected_sessions():
    sessions = [
        session(20, "active", 9999, backend_type="walsender", app="replica1"),
        session(21, "active", 9999, backend_type="autovacuum worker", app=""),
        session(22, "active", 9999, app="pg_dump", query="COPY public.t (a) TO stdout;"),
        session(23, "active", 9999, app="psql", query="VACUUM (VERBOSE) t"),
        session(24, "active", 9999, app="ner11.ops"),
        session(25, "active", 9999, app="grafana"),
        session(26, "active", 9999, app="psql", query="UPDATE t SET a = 1"),
    ]
    p = S.validate(params(select=["running"], protect_application_names=["grafana"]))
    out = S.analyse(snapshot(sessions), p)
    assert [e["pid"] for e in out["selected"]] == [26]
    protected = {e["pid"]: e["protected"] for e in out["sessions"]}
    assert set(protected) == {22, 23, 24, 25, 26}  # non-client backends are not listed as client sessions
    assert "maintenance" in protected[22] and "maintenance statement" in protected[23]
    assert protected[24] == "maintenance or backup application (ner11.ops)" and protected[26] is None


def test_blocking_pairs_and_root_blocker_rule():
    sessions = [
        session(30, "idle in transaction", 50, app="psql", query="UPDATE t SET v = 'x' WHERE id = 1"),
        session(
            31, "active", 70, blocked_by=[30], wait_event_type="Lock", wait_event="transactionid", query="UPDATE t SET v = 'y'"
        ),
        session(32, "active", 65, blocked_by=[31], wait_event_type="Lock", wait_event="tuple"),
    ]
    p = S.validate(params(select=["blocking"], blocked_seconds=60))
    out = S.analyse(snapshot(sessions), p)
    pairs = [(b["blocked_pid"], b["blocking_pid"]) for b in out["blocking"]]
    assert pairs == [(31, 30), (32, 31)]
    assert out["blocking"][0]["blocking_query"] == "UPDATE t SET v = ? WHERE id = ?"
    # 31 blocks 32 but is itself waiting: only the root blocker 30 is selected.
    assert [e["pid"] for e in out["selected"]] == [30]
    assert "2 session(s) waiting on a lock" in " ".join(out["findings"])
    # Not waited long enough: nothing selected.
    assert S.analyse(snapshot(sessions), S.validate(params(select=["blocking"], blocked_seconds=600)))["selected"] == []


# -- action ----------------------------------------------------------------------


def test_check_mode_plans_and_signals_nothing():
    snap = snapshot([session(40, "idle in transaction", 400), session(41, "active", 400)])
    target = FakeTarget(snap)
    out = S.run(target, params(select=["idle_in_transaction", "running"], action="terminate"), check_mode=True)
    assert out["changed"] is True and out["terminated"] == [40] and out["cancelled"] == [41]
    assert len(target.statements) == 1  # the snapshot only
    assert all("state_change_us" not in e for e in out["selected"])


def test_terminate_cancels_running_first_and_terminates_idle():
    snap = snapshot([session(40, "idle in transaction", 400), session(41, "active", 400)])
    target = FakeTarget(snap)
    out = S.run(
        target,
        params(select=["idle_in_transaction", "running"], action="terminate", confirm="ner11_db"),
        check_mode=False,
        sleep=lambda s: None,
    )
    assert out["changed"] is True
    assert out["cancelled"] == [41] and out["terminated"] == [40] and out["left_alone"] == []
    assert "pg_cancel_backend" in out["queries"][0] and "pg_terminate_backend" in out["queries"][1]
    assert "(40, 1700000000000040::bigint)" in out["queries"][1] and "'ner11_db'" in out["queries"][1]


def test_a_session_that_moved_on_is_left_alone_and_rerun_is_unchanged():
    snap = snapshot([session(50, "idle in transaction", 400), session(51, "idle in transaction", 400)])
    target = FakeTarget(snap, moved={51})
    p = params(select=["idle_in_transaction"], action="terminate", confirm="ner11_db")
    out = S.run(target, p, check_mode=False, sleep=lambda s: None)
    assert out["terminated"] == [50] and out["left_alone"] == [51]
    # Second run: the terminated session is gone from the snapshot.
    target2 = FakeTarget(snapshot([]))
    again = S.run(target2, p, check_mode=False)
    assert again["changed"] is False and again["selected"] == [] and again["terminated"] == []


def test_a_failure_after_a_signal_reports_what_was_changed():
    """A fake target (the error branch: the server goes away between the cancel and the
    terminate, which a real server cannot be made to do on cue)."""

    class GoesAway(FakeTarget):
        def query(self, sql, db="postgres"):
            if "pg_terminate_backend" in sql:
                raise PgExecError("psql failed on db (rc=2): server closed the connection unexpectedly")
            return super().query(sql, db)

    snap = snapshot([session(70, "idle in transaction", 400), session(71, "active", 400)])
    target = GoesAway(snap)  # 71 is cancelled, then 70 (idle in transaction) is to be terminated
    p = params(select=["idle_in_transaction", "running"], action="terminate", confirm="ner11_db")
    with pytest.raises(PgExecError) as err:
        S.run(target, p, check_mode=False, sleep=lambda s: None)
    assert err.value.changed is True and err.value.partial == {"cancelled": [71], "terminated": []}


def test_db_error_hint_names_the_fix_of_each_failure():
    assert "not running" in db_error_hint("Error response from daemon: container x is not running", "x", "d")
    assert "restore it" in db_error_hint('FATAL:  database "d" does not exist', "x", "d")
    assert db_error_hint("ERROR:  permission denied for table t", "x", "d").startswith("read the PostgreSQL logs")


def test_cancel_leaves_idle_sessions_alone():
    snap = snapshot([session(60, "idle in transaction", 400), session(61, "active", 400)])
    target = FakeTarget(snap)
    out = S.run(target, params(select=["idle_in_transaction", "running"], action="cancel", confirm="ner11_db"), check_mode=False)
    assert out["cancelled"] == [61] and out["terminated"] == [] and out["left_alone"] == [60]


def test_signal_sql_only_knows_two_functions_and_parse_errors():
    with pytest.raises(S.SessionsError):
        S.signal_sql("pg_drop_everything", [], "ner11_db")
    with pytest.raises(S.SessionsError, match="returned nothing"):
        S.parse_snapshot([])
    with pytest.raises(S.SessionsError, match="not JSON"):
        S.parse_snapshot([["oops"]])

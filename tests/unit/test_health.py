"""Unit tests of the health core (plugins/module_utils/health.py): every rule, the wait loop."""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest
from fake_clock import FakeClock

from ansible_collections.ner11.ops.plugins.module_utils import docker_cli as dc
from ansible_collections.ner11.ops.plugins.module_utils import health as h
from ansible_collections.ner11.ops.plugins.module_utils import health_db as hd
from ansible_collections.ner11.ops.plugins.module_utils import health_host as hho
from ansible_collections.ner11.ops.plugins.module_utils import health_http as hh
from ansible_collections.ner11.ops.plugins.module_utils import health_result as hr

TIMEOUT = 5.0


def resp(status=200, body=None, url="http://api/x", headers=None, latency=3.0, error=None, kind=None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    return hh.HttpResponse(url, None if error else status, body or b"", headers or {}, latency, error, kind)


def timeout_resp(url="http://api/x"):
    return resp(error="timed out", kind="timeout", url=url, latency=5000.0)


def refused_resp(url="http://api/x"):
    return resp(error="connection refused", kind="refused", url=url, latency=0.4)


def params(**over):
    p = dict(h.DEFAULTS)
    p.update(over)
    return p


# ---- results and aggregation ------------------------------------------------------------
def test_make_check_has_the_ietf_shape():
    c = hr.make_check("api", "http", "pass", "ok", "healthy", None, 1.234, at="2025-01-01T00:00:00.000Z")
    assert c == {
        "status": "pass",
        "component": "api",
        "measurement": "http",
        "observed_value": "healthy",
        "observed_unit": None,
        "latency_ms": 1.2,
        "output": "ok",
        "time": "2025-01-01T00:00:00.000Z",
    }
    with pytest.raises(ValueError):
        hr.make_check("api", "http", "ok", "bad status")


def test_check_names():
    assert hr.check_name("api", "http") == "api:http"
    assert hr.check_name("container", "ner11-api-1") == "container:ner11-api-1"
    assert hr.check_name("memory", "available") == "memory"


def test_aggregate_takes_the_worst_and_counts():
    checks = {
        "a:x": hr.make_check("a", "x", "pass", ""),
        "b:y": hr.make_check("b", "y", "warn", ""),
        "c:z": hr.make_check("c", "z", "fail", ""),
        "d:w": hr.make_check("d", "w", "fail", ""),
    }
    status, summary, failed = hr.aggregate(checks)
    assert status == "fail"
    assert summary == {"pass": 1, "warn": 1, "fail": 2}
    assert failed == ["c:z", "d:w"]
    assert hr.aggregate({"a:x": checks["a:x"], "b:y": checks["b:y"]})[0] == "warn"
    assert hr.aggregate({}) == ("pass", {"pass": 0, "warn": 0, "fail": 0}, [])


@pytest.mark.parametrize(
    "status,wait_for,ok",
    [
        ("pass", "pass", True),
        ("warn", "pass", False),
        ("fail", "pass", False),
        ("warn", "warn", True),
        ("fail", "warn", False),
        ("fail", "none", True),
    ],
)
def test_satisfies(status, wait_for, ok):
    assert hr.satisfies(status, wait_for) is ok


@pytest.mark.parametrize(
    "status,fail_on,fails",
    [
        ("fail", "fail", True),
        ("warn", "fail", False),
        ("pass", "fail", False),
        ("warn", "warn", True),
        ("fail", "warn", True),
        ("pass", "warn", False),
        ("fail", "never", False),
    ],
)
def test_should_fail(status, fail_on, fails):
    assert hr.should_fail(status, fail_on) is fails


def test_failure_message_lists_failing_checks_with_outputs():
    result = {
        "status": "fail",
        "attempts": 3,
        "checks": {
            "api:http": hr.make_check("api", "http", "fail", "connection refused"),
            "db:pool": hr.make_check("db", "pool", "warn", "87%"),
            "disk:/": hr.make_check("disk", "/", "pass", "ok"),
        },
    }
    msg = hr.failure_message(result, "fail")
    assert "api:http fail: connection refused" in msg
    assert "db:pool" not in msg
    assert "after 3 attempts" in msg and "1 of 3" in msg
    msg = hr.failure_message(result, "warn")
    assert "db:pool warn: 87%" in msg and "2 of 3" in msg


# ---- HTTP error classification ----------------------------------------------------------
def test_classify_error():
    import urllib.error

    assert hh.classify_error(urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")))[0] == "refused"
    assert hh.classify_error(urllib.error.URLError(TimeoutError("timed out")))[0] == "timeout"
    assert hh.classify_error(TimeoutError("timed out")) == ("timeout", "timed out")
    assert hh.classify_error(ConnectionResetError(104, "reset"))[0] == "closed"
    import http.client

    assert hh.classify_error(http.client.RemoteDisconnected("gone"))[0] == "closed"
    assert hh.classify_error(ValueError("unknown url type"))[0] == "other"


# ---- api:http ---------------------------------------------------------------------------
def test_api_http_healthy_passes():
    c = hh.eval_api_http(resp(body={"status": "healthy", "version": "1.0.0", "uptime_seconds": 3}), TIMEOUT)
    assert c["status"] == "pass" and c["observed_value"] == "healthy"
    assert "version 1.0.0" in c["output"] and c["latency_ms"] == 3.0


def test_api_http_unhealthy_is_not_healthy_g37():
    c = hh.eval_api_http(resp(status=200, body={"status": "unhealthy"}), TIMEOUT)
    assert c["status"] == "fail"
    assert "'healthy'" in c["output"] and '"unhealthy"' in c["output"]


def test_api_http_degraded_warns_with_sub_checks():
    body = {"status": "degraded", "checks": {"database": "disconnected", "models_loaded": True}}
    c = hh.eval_api_http(resp(body=body), TIMEOUT)
    assert c["status"] == "warn"
    assert 'database "disconnected"' in c["output"]


def test_api_http_healthy_word_in_text_is_not_enough():
    assert hh.eval_api_http(resp(body="status: healthy"), TIMEOUT)["status"] == "fail"
    assert hh.eval_api_http(resp(status=503, body={"status": "healthy"}), TIMEOUT)["status"] == "fail"


def test_api_http_refused_and_timeout_say_what_to_do():
    c = hh.eval_api_http(refused_resp(), TIMEOUT)
    assert c["status"] == "fail" and "connection refused" in c["output"] and "not running" in c["output"]
    c = hh.eval_api_http(timeout_resp(), TIMEOUT)
    assert c["status"] == "fail" and "no answer within 5s" in c["output"] and "paused" in c["output"]
    c = hh.eval_api_http(resp(error="connection closed by the server", kind="closed"), TIMEOUT)
    assert "crashed or restarting" in c["output"]


# ---- api:model --------------------------------------------------------------------------
def test_api_model_loaded():
    body = {"models_loaded": True, "available_models": ["ner11-gazetteer"], "load_time_seconds": 0.01}
    c = hh.eval_api_model(resp(body=body), TIMEOUT)
    assert c["status"] == "pass" and c["observed_value"] is True
    assert "ner11-gazetteer" in c["output"] and "0.01s" in c["output"]


@pytest.mark.parametrize("value", [False, "true", 1, None])
def test_api_model_anything_but_true_fails(value):
    c = hh.eval_api_model(resp(body={"models_loaded": value, "error": "sha256 mismatch"}), TIMEOUT)
    assert c["status"] == "fail"
    assert "sha256 mismatch" in c["output"] and "artifact_restore" in c["output"]


def test_api_model_missing_key_or_error():
    assert hh.eval_api_model(resp(body={"available_models": []}), TIMEOUT)["status"] == "fail"
    assert hh.eval_api_model(refused_resp(), TIMEOUT)["status"] == "fail"


# ---- api:db -----------------------------------------------------------------------------
def test_api_db_connected():
    c = hh.eval_api_db(resp(body={"database": "connected", "pool_size": 10, "active_connections": 2}), TIMEOUT)
    assert c["status"] == "pass" and c["observed_value"] == 2 and c["observed_unit"] == "connections"


def test_api_db_disconnected_is_not_connected_g37():
    c = hh.eval_api_db(resp(status=503, body={"database": "disconnected", "error": "connection refused"}), TIMEOUT)
    assert c["status"] == "fail"
    assert '"disconnected"' in c["output"] and "connection refused" in c["output"]
    assert hh.eval_api_db(resp(body={"database": "Connected"}), TIMEOUT)["status"] == "fail"
    assert hh.eval_api_db(resp(body={"db": "connected"}), TIMEOUT)["status"] == "fail"


# ---- api:modules ------------------------------------------------------------------------
def test_api_modules_all_healthy():
    responses = [(m, resp(body={"status": "healthy"})) for m in h.DEFAULT_MODULES]
    c = hh.eval_api_modules(responses, TIMEOUT)
    assert c["status"] == "pass" and c["observed_value"] == 6 and c["output"] == "6/6 modules healthy"


def test_api_modules_name_each_failing_module_with_the_runbook_meaning():
    responses = [
        ("vendor-equipment", resp(body={"status": "healthy"})),
        ("compliance", resp(status=404, body={"detail": "Not Found"})),
        ("economic-impact", resp(status=500, body="Internal Server Error")),
        ("demographics", timeout_resp()),
        ("prioritization", resp(body={"status": "unhealthy"})),
        ("threat-intelligence", refused_resp()),
    ]
    c = hh.eval_api_modules(responses, TIMEOUT)
    assert c["status"] == "fail" and c["observed_value"] == 1
    out = c["output"]
    assert out.startswith("1/6 modules healthy")
    assert "compliance: module not loaded (404" in out
    assert "economic-impact: server error (500): read the API logs" in out
    assert "demographics: API overloaded" in out
    assert 'prioritization: status "unhealthy"' in out
    assert "threat-intelligence: unreachable" in out
    assert "vendor-equipment" not in out


# ---- api:latency ------------------------------------------------------------------------
def test_api_latency_rules():
    assert hh.eval_api_latency(resp(latency=12.0, body={"items": []}), 200, TIMEOUT)["status"] == "pass"
    c = hh.eval_api_latency(resp(latency=250.0), 200, TIMEOUT)
    assert c["status"] == "warn" and c["observed_value"] == 250.0 and c["observed_unit"] == "ms"
    assert hh.eval_api_latency(resp(latency=200.0), 200, TIMEOUT)["status"] == "warn"
    assert hh.eval_api_latency(resp(status=404), 200, TIMEOUT)["status"] == "warn"
    c = hh.eval_api_latency(resp(status=503, body={"detail": "database unavailable"}), 200, TIMEOUT)
    assert c["status"] == "fail" and "database unavailable" in c["output"]
    assert hh.eval_api_latency(timeout_resp(), 200, TIMEOUT)["status"] == "fail"


def test_api_latency_judges_the_median_of_samples():
    c = hh.eval_api_latency([resp(latency=900.0), resp(latency=20.0), resp(latency=30.0)], 200, TIMEOUT)
    assert c["status"] == "pass" and c["observed_value"] == 30.0 and "median of 900/20/30" in c["output"]
    c = hh.eval_api_latency([resp(latency=250.0), resp(latency=20.0), resp(latency=300.0)], 200, TIMEOUT)
    assert c["status"] == "warn" and c["observed_value"] == 250.0
    c = hh.eval_api_latency([resp(latency=20.0), resp(status=500, body={"detail": "boom"})], 200, TIMEOUT)
    assert c["status"] == "fail" and "boom" in c["output"]


# ---- frontend:http ----------------------------------------------------------------------
PAGE = '<html><head><title>NER11 Gold Model</title></head><body><div id="root"></div><script src="/static/js/main.abc.js"></script></body></html>'
JS = {"content-type": "application/javascript"}


def fe(page=PAGE, page_status=200, bundle=None, proxy=None):
    bundle = bundle if bundle is not None else resp(body="x", headers=JS, url="http://fe/static/js/main.abc.js")
    proxy = proxy if proxy is not None else resp(body={"status": "healthy"}, url="http://fe/api/v1/health")
    return hh.eval_frontend(resp(status=page_status, body=page, url="http://fe/"), bundle, proxy, TIMEOUT)


def test_frontend_bundle_path_is_read_from_the_page():
    assert hh.frontend_bundle_path(PAGE) == "/static/js/main.abc.js"
    assert hh.frontend_bundle_path("<html></html>") == "/static/js/main.chunk.js"


def test_frontend_healthy():
    c = fe()
    assert c["status"] == "pass" and c["observed_value"] == 200


def test_frontend_title_and_root():
    c = fe(page=PAGE.replace("NER11 Gold Model", "Something else"))
    assert c["status"] == "warn" and "public/index.html" in c["output"]
    c = fe(page=PAGE.replace('<div id="root">', "<div>"))
    assert c["status"] == "fail" and 'id="root"' in c["output"]
    assert fe(page="<html></html>")["status"] == "fail"
    assert fe(page_status=502)["status"] == "fail"


def test_frontend_bundle_must_be_javascript_200():
    c = fe(bundle=resp(status=404, url="http://fe/static/js/main.abc.js"))
    assert c["status"] == "fail" and "restart the frontend" in c["output"]
    c = fe(bundle=resp(body="<html>", headers={"content-type": "text/html"}))
    assert c["status"] == "fail" and "text/html" in c["output"]


def test_frontend_proxy_must_answer_like_the_api():
    c = fe(proxy=resp(status=502, body="<html>Bad Gateway</html>"))
    assert c["status"] == "fail" and "proxy broken" in c["output"]
    assert fe(proxy=resp(body={"status": "degraded"}))["status"] == "warn"
    assert fe(proxy=resp(body={"status": "unhealthy"}))["status"] == "fail"


def test_frontend_down():
    c = hh.eval_frontend(refused_resp("http://fe/"), None, None, TIMEOUT)
    assert c["status"] == "fail" and "frontend not running" in c["output"]


# ---- db ---------------------------------------------------------------------------------
def db_out(states=None, canary=None, max_conn=100, recovery="false", query="1"):
    lines = []
    if query is not None:
        lines.append("query\x1f%s" % query)
    lines.append("server\x1f15.10 (Debian)\x1f%s\x1fner11_db\x1fpostgres" % recovery)
    lines.append("max\x1f%d\x1f3" % max_conn)
    for state, n in (states or {"active": 1, "idle": 2}).items():
        lines.append("state\x1f%s\x1f%d" % (state, n))
    for table, n in (canary or {"vendor_equipment": 5, "threat_intelligence": 0, "compliance_frameworks": 3}).items():
        lines.append("canary\x1f%s\x1f%s" % (table, "-" if n is None else n))
    return "\n".join(lines) + "\n"


def by_name(checks):
    return {c["measurement"]: c for c in checks}


def test_db_sql_is_read_only_and_quotes_tables():
    sql = hd.db_sql(["vendor_equipment", "public.my-t"], 4800)
    assert "SET statement_timeout = 4800;" in sql
    assert "('public.my-t', '\"public\".\"my-t\"')" in sql and "format('SELECT count(*) AS c FROM %s', t.q)" in sql
    assert "canary" not in hd.db_sql([], 4800)
    for word in ("INSERT", "UPDATE", "DELETE", "DROP", "CREATE"):
        assert word not in sql.upper().replace("CREATE_", "")


def test_parse_db_output():
    data = hd.parse_db_output(db_out(canary={"a": 1, "b": None}))
    assert data["query"] == "1"
    assert data["server"]["version"].startswith("15.10") and data["server"]["in_recovery"] is False
    assert data["max"] == {"max_connections": 100, "reserved": 3}
    assert data["states"] == {"active": 1, "idle": 2}
    assert data["canary"] == {"a": 1, "b": None}


def test_db_all_pass():
    checks = by_name(hd.eval_db(0, db_out(), "", 80.0, params(), "container pg"))
    assert [checks[n]["status"] for n in ("connect", "query", "pool", "canary")] == ["pass"] * 4
    assert "authenticated to ner11_db as postgres" in checks["connect"]["output"]
    assert checks["query"]["observed_value"].startswith("15.10")
    assert checks["pool"]["observed_value"] == 3.0 and checks["pool"]["observed_unit"] == "percent"
    assert checks["canary"]["observed_value"] == {"vendor_equipment": 5, "threat_intelligence": 0, "compliance_frameworks": 3}


@pytest.mark.parametrize(
    "err,hint",
    [
        ("Error: No such container: pg", "deploy the stack"),
        ("Error response from daemon: Container abc is not running", "start postgres"),
        ("Error response from daemon: Container abc is paused, unpause the container before exec", "unpause"),
        ('psql: error: connection to server at "h" failed: Connection refused', "not accepting connections"),
        ('psql: error: FATAL:  password authentication failed for user "postgres"', "login_password"),
        ('psql: error: FATAL:  database "ner11_db" does not exist', "restore it"),
        ("psql: error: FATAL:  sorry, too many clients already", "pg_sessions"),
        ("psql: error: FATAL:  the database system is starting up", "wait for it"),
    ],
)
def test_db_connect_failures_name_cause_and_fix(err, hint):
    checks = by_name(hd.eval_db(1 if "daemon" in err or "container" in err else 2, "", err, 30.0, params(), "container pg"))
    assert checks["connect"]["status"] == "fail"
    assert hint in checks["connect"]["output"]
    assert err.splitlines()[-1].strip() in checks["connect"]["output"]
    for name in ("query", "pool", "canary"):
        assert checks[name]["status"] == "fail" and "db:connect failed" in checks[name]["output"]


def test_db_timeout():
    checks = by_name(hd.eval_db(124, "", "", 5000.0, params(), "container pg", timed_out=True))
    assert checks["connect"]["status"] == "fail" and "no answer within 5s" in checks["connect"]["output"]
    assert "check the host load" in checks["connect"]["output"]


def test_db_run_that_stops_after_select_1_does_not_invent_results():
    out = "query\x1f1\nserver\x1f15.10\x1ffalse\x1fner11_db\x1fpostgres\n"
    checks = by_name(hd.eval_db(3, out, "ERROR:  canceling statement due to statement timeout", 10.0, params(), "c"))
    assert checks["connect"]["status"] == "pass" and checks["query"]["status"] == "pass"
    assert checks["pool"]["status"] == "fail" and "statement timeout" in checks["pool"]["output"]
    assert checks["canary"]["status"] == "fail" and checks["canary"]["output"].startswith("not checked: psql stopped")
    # killed by the timeout after the pool rows: pool is judged, canary is not
    out = db_out(canary={})
    checks = by_name(hd.eval_db(124, out, "", 5000.0, params(), "c", timed_out=True))
    assert checks["pool"]["status"] == "pass"
    assert checks["canary"]["status"] == "fail" and "did not finish within 5s" in checks["canary"]["output"]


def test_db_select_1_not_answered():
    checks = by_name(hd.eval_db(3, "query\x1f\n", "ERROR: boom", 10.0, params(), "c"))
    assert checks["query"]["status"] == "fail" and "boom" in checks["query"]["output"]


def test_db_recovery_warns():
    checks = by_name(hd.eval_db(0, db_out(recovery="true"), "", 10.0, params(), "c"))
    assert checks["query"]["status"] == "warn" and "recovery" in checks["query"]["output"]


@pytest.mark.parametrize(
    "total,max_conn,status",
    [
        (80, 100, "pass"),
        (81, 100, "warn"),
        (94, 100, "warn"),
        (95, 100, "fail"),
        (100, 100, "fail"),
        (161, 200, "warn"),
        (150, 200, "pass"),
    ],
)
def test_db_pool_is_relative_to_max_connections_g71(total, max_conn, status):
    c = hd.eval_db_pool({"idle": total - 1, "active": 1}, {"max_connections": max_conn, "reserved": 3}, params())
    assert c["status"] == status
    assert c["observed_value"] == round(100.0 * total / max_conn, 1)
    assert "%d/%d connections" % (total, max_conn) in c["output"]
    if status != "pass":
        assert "pg_sessions" in c["output"]


def test_db_pool_thresholds_are_options():
    c = hd.eval_db_pool({"idle": 50}, {"max_connections": 100, "reserved": 3}, params(pool_warn_percent=40, pool_fail_percent=60))
    assert c["status"] == "warn"


def test_db_canary_missing_table_fails_and_zero_rows_pass():
    c = hd.eval_db_canary(
        {"vendor_equipment": 0, "threat_intelligence": None}, ["vendor_equipment", "threat_intelligence"], "ner11_db"
    )
    assert c["status"] == "fail" and "threat_intelligence" in c["output"] and "migrations" in c["output"]
    assert c["observed_value"] == {"vendor_equipment": 0}
    c = hd.eval_db_canary({"vendor_equipment": 0}, ["vendor_equipment"], "ner11_db")
    assert c["status"] == "pass" and c["observed_value"] == {"vendor_equipment": 0}


# ---- containers -------------------------------------------------------------------------
def inspect(status="running", health="healthy", restarts=0, oom=False, exit_code=0, log_output="ok"):
    state = {
        "Status": status,
        "Running": status in ("running", "paused", "restarting"),
        "Paused": status == "paused",
        "Restarting": status == "restarting",
        "OOMKilled": oom,
        "ExitCode": exit_code,
    }
    if health:
        state["Health"] = {"Status": health, "Log": [{"Output": log_output}]}
    return {"Name": "/ner11-api-1", "State": state, "RestartCount": restarts}


@pytest.mark.parametrize(
    "info,status,text",
    [
        (inspect(), "pass", "running, healthy"),
        (inspect(health=None), "pass", "no healthcheck"),
        (inspect(health="starting"), "warn", "starting"),
        (inspect(health="unhealthy", log_output="HTTP 500\n"), "fail", "last probe: HTTP 500"),
        (inspect(status="paused"), "fail", "docker unpause ner11-api-1"),
        (inspect(status="restarting", restarts=7), "fail", "crash loop"),
        (inspect(status="exited", exit_code=137, oom=True), "fail", "OOM killer"),
        (inspect(status="exited", exit_code=0), "fail", "exited with code 0"),
        (inspect(status="created", health=None), "fail", "not running (created)"),
        (inspect(restarts=3), "warn", "3 restart(s)"),
        (inspect(restarts=2), "pass", "2 restart(s)"),
        (inspect(oom=True), "warn", "OOM-killed"),
        (None, "fail", "does not exist"),
    ],
)
def test_container_rules(info, status, text):
    c = hho.eval_container("ner11-api-1", info)
    assert c["status"] == status, c
    assert text in c["output"]


def test_parse_inspect():
    out = json.dumps([inspect(), {"Name": "/other", "State": {}}])
    assert sorted(dc.parse_inspect(out)) == ["ner11-api-1", "other"]
    assert dc.parse_inspect("") == {} and dc.parse_inspect("not json") == {}


# ---- disk -------------------------------------------------------------------------------
GB = 1024**3


def disk(used_pct, size_gb=100.0, reserved_pct=0.0):
    frsize = 4096
    blocks = int(size_gb * GB / frsize)
    used = int(blocks * used_pct / 100.0)
    bfree = blocks - used
    bavail = bfree - int(blocks * reserved_pct / 100.0)
    return (blocks, bfree, bavail, frsize)


@pytest.mark.parametrize(
    "used,status",
    [(10, "pass"), (79.9, "pass"), (80, "warn"), (89.9, "warn"), (90, "fail"), (99, "fail")],
)
def test_disk_percent_thresholds_g13(used, status):
    c = hho.eval_disk("/", disk(used, size_gb=1000), params())
    assert c["status"] == status
    assert c["observed_unit"] == "percent" and abs(c["observed_value"] - used) < 0.2


def test_disk_free_floor_fails_even_when_percent_is_low():
    c = hho.eval_disk("/small", disk(50, size_gb=8), params())  # 4 GiB free < 5 GiB
    assert c["status"] == "fail" and "below the 5 GiB floor" in c["output"]
    assert hho.eval_disk("/small", disk(50, size_gb=8), params(disk_min_free_gb=1))["status"] == "pass"


def test_disk_used_percent_counts_reserved_blocks_like_df():
    # 5 % reserved for root: df reports used / (used + avail).
    c = hho.eval_disk("/", disk(76, size_gb=1000, reserved_pct=5), params())
    assert c["observed_value"] == pytest.approx(80.0, abs=0.1) and c["status"] == "warn"


def test_disk_missing_path():
    c = hho.eval_disk("/nope", None, params())
    assert c["status"] == "fail" and "does not exist" in c["output"]


# ---- memory -----------------------------------------------------------------------------
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    %d kB\n"


def test_parse_meminfo():
    info = hho.parse_meminfo(MEMINFO % 5000000 + "HugePages_Total:       0\n")
    assert info["MemAvailable"] == 5000000 * 1024 and info["HugePages_Total"] == 0


def test_memory_floor_warns():
    c = hho.eval_memory(hho.parse_meminfo(MEMINFO % (8 * 1024 * 1024)), params())
    assert c["status"] == "pass" and c["observed_value"] == 8.0 and c["observed_unit"] == "GiB"
    c = hho.eval_memory(hho.parse_meminfo(MEMINFO % (3 * 1024 * 1024)), params())
    assert c["status"] == "warn" and "below 4 GiB" in c["output"]
    assert hho.eval_memory({}, params())["status"] == "warn"


# ---- option validation ------------------------------------------------------------------
def test_validate_selects_components_by_inputs():
    p = h.validate({"api_url": "http://127.0.0.1:18000/", "containers": []})
    assert p["components"] == ["api", "disk", "memory"]
    assert p["api_url"] == "http://127.0.0.1:18000"
    p = h.validate({"api_url": "http://a:1", "frontend_url": "http://b:2", "container": "pg", "containers": ["x"]})
    assert p["components"] == list(h.COMPONENTS)
    assert h.validate({"login_host": "db", "checks": ["db"]})["components"] == ["db"]


@pytest.mark.parametrize(
    "given,needle",
    [
        ({"checks": ["db"]}, "db needs container or login_host"),
        ({"checks": ["api", "frontend"]}, "api needs api_url"),
        ({"checks": ["nope"]}, "unknown component"),
        ({"api_url": "127.0.0.1:18000"}, "http(s) URL"),
        ({"disk_warn_percent": 95}, "must not exceed disk_fail_percent"),
        ({"pool_warn_percent": 0}, "percentage"),
        ({"check_timeout": 0}, "check_timeout"),
        ({"modules": ["../../etc"]}, "module path name"),
        ({"canary_tables": ["x; drop table y"]}, "is not a table name"),
        ({"disks": ["var"]}, "absolute path"),
        ({"wait_for": "ready"}, "wait_for"),
        ({"fail_on": "always"}, "fail_on"),
        ({"timeout": -1}, "timeout"),
        ({"latency_samples": 0}, "latency_samples must be a number of requests from 1 to 50"),
        ({"latency_samples": 51}, "latency_samples"),
    ],
)
def test_validate_rejects_bad_input_with_the_fix(given, needle):
    with pytest.raises(h.HealthError) as err:
        h.validate(given)
    assert needle in str(err.value)


# ---- the checker with injected observations ---------------------------------------------
class FakeApi:
    """An http_get serving canned answers; ``hang`` paths block until the timeout."""

    def __init__(self, answers=None, hang=(), delay=0.0):
        self.answers = answers or {}
        self.hang = hang
        self.delay = delay
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, url, timeout):
        with self.lock:
            self.calls.append((url, timeout))
        path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
        if any(path.startswith(p) for p in self.hang):
            time.sleep(timeout)
            return hh.HttpResponse(url, latency_ms=timeout * 1000, error="timed out", error_kind="timeout")
        if not path.endswith("/vendor-equipment/"):
            time.sleep(self.delay)
        for prefix, answer in self.answers.items():
            if path == prefix:
                status, body, headers = answer
                return resp(status, body, url=url, headers=headers, latency=1.0)
        if path.endswith("/health") and path.startswith("/api/v1/") and path != "/api/v1/health" and "/db/" not in path:
            return resp(200, {"status": "healthy"}, url=url)
        return resp(404, {"detail": "Not Found"}, url=url)


HEALTHY = {
    "/health": (200, {"status": "healthy"}, None),
    "/api/v1/health": (200, {"status": "healthy"}, None),
    "/api/v1/models/status": (200, {"models_loaded": True, "available_models": ["m"]}, None),
    "/api/v1/db/health": (200, {"database": "connected", "active_connections": 1}, None),
    "/api/v1/vendor-equipment/": (200, {"items": []}, None),
    "/": (200, PAGE, None),
    "/static/js/main.abc.js": (200, "js", JS),
}


class FakeTarget:
    def __init__(self, out="", rc=0, err=""):
        self.out, self.rc, self.err = out, rc, err
        self.closed = False
        self.calls = []

    def __call__(self, params, runner):
        self.params = params
        return self

    def run(self, tool, args, data=None, check=True):
        self.calls.append((tool, args, data))
        return self.rc, self.out, self.err

    def describe(self):
        return "container pg"

    def close(self):
        self.closed = True


class FakeStat:
    def __init__(self, values):
        self.f_blocks, self.f_bfree, self.f_bavail, self.f_frsize = values


def fake_statvfs(path):
    if path == "/missing":
        raise FileNotFoundError(path)
    return FakeStat(disk(30, size_gb=500))


def make_checker(tmp_path, api=None, target=None, docker_out=None, **over):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO % (8 * 1024 * 1024))
    given = {
        "api_url": "http://api:1",
        "frontend_url": "http://fe:2",
        "container": "pg",
        "containers": ["ner11-api-1", "gone"],
        "disks": ["/", "/missing"],
        "check_timeout": 1.0,
    }
    given.update(over)
    p = h.validate(given)
    docker_calls = []

    def runner(cmd, **kwargs):
        docker_calls.append(cmd)
        return (1, json.dumps([inspect()]), "Error: No such object: gone") if docker_out is None else docker_out

    checker = h.HealthChecker(
        p,
        http_get=api or FakeApi(HEALTHY),
        runner=runner,
        pg_target_factory=target or FakeTarget(db_out()),
        statvfs=fake_statvfs,
        meminfo_path=str(meminfo),
        timeout_bin="/usr/bin/timeout",
    )
    checker.docker_calls = docker_calls
    return checker


def test_checker_runs_every_check_once(tmp_path):
    target = FakeTarget(db_out())
    checker = make_checker(tmp_path, target=target)
    result = checker.run_once()
    names = set(result["checks"])
    assert names == {
        "api:http",
        "api:model",
        "api:db",
        "api:modules",
        "api:latency",
        "db:connect",
        "db:query",
        "db:pool",
        "db:canary",
        "frontend:http",
        "container:ner11-api-1",
        "container:gone",
        "disk:/",
        "disk:/missing",
        "memory",
    }
    assert result["status"] == "fail"
    assert result["failed_checks"] == ["container:gone", "disk:/missing"]
    assert result["summary"] == {"pass": 13, "warn": 0, "fail": 2}
    assert target.closed and target.calls[0][0] == "psql"
    assert "ON_ERROR_STOP=1" in target.calls[0][1] and "ner11_db" in target.calls[0][1]
    assert target.params["connect_timeout"] == 1  # bounded by check_timeout
    assert checker.docker_calls[0][:4] == ["/usr/bin/timeout", "-k", "1", "1"]
    assert checker.docker_calls[0][4:] == ["docker", "inspect", "--type", "container", "ner11-api-1", "gone"]


def test_checker_limits_components(tmp_path):
    checker = make_checker(tmp_path, checks=["disk", "memory"])
    assert set(checker.run_once()["checks"]) == {"disk:/", "disk:/missing", "memory"}


def test_checks_run_concurrently(tmp_path):
    api = FakeApi(HEALTHY, delay=0.2)
    checker = make_checker(tmp_path, api=api, checks=["api"], modules=["vendor-equipment"])
    started = time.monotonic()
    result = checker.run_once()
    elapsed = time.monotonic() - started
    assert result["status"] == "pass"
    # four API checks of 0.2 s each (modules: one path) would take 0.8 s one after another
    assert elapsed < 0.7, elapsed


def test_frozen_api_fails_within_check_timeout(tmp_path):
    api = FakeApi(HEALTHY, hang=("/health", "/api/", "/static/"))
    checker = make_checker(tmp_path, api=api, checks=["api"], check_timeout=0.5)
    started = time.monotonic()
    result = checker.run_once()
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, elapsed
    assert result["status"] == "fail"
    for name in ("api:http", "api:model", "api:db", "api:modules", "api:latency"):
        assert result["checks"][name]["status"] == "fail"
    assert "no answer within 0.5s" in result["checks"]["api:http"]["output"]
    # six module requests share one deadline: once the first hung, the others are not sent
    module_calls = [u for u, t in api.calls if "/api/v1/" in u and u.endswith("/health") and "/db/" not in u]
    assert len(module_calls) == 1
    assert result["checks"]["api:modules"]["output"].startswith("0/6 modules healthy")


def test_a_check_that_never_returns_fails_at_the_deadline(tmp_path):
    release = threading.Event()

    def stuck(url, timeout):
        release.wait(10)
        return resp(url=url)

    checker = make_checker(tmp_path, api=stuck, checks=["api"], modules=["vendor-equipment"], check_timeout=0.3)
    started = time.monotonic()
    try:
        result = checker.run_once()
    finally:
        release.set()
    assert time.monotonic() - started < 3.0
    assert result["checks"]["api:http"]["status"] == "fail"
    assert "did not finish within 0.3s" in result["checks"]["api:http"]["output"]


def test_a_check_that_raises_is_reported_not_raised(tmp_path):
    def broken(url, timeout):
        raise RuntimeError("boom")

    result = make_checker(tmp_path, api=broken, checks=["api"]).run_once()
    assert result["checks"]["api:http"]["status"] == "fail"
    assert "RuntimeError: boom" in result["checks"]["api:http"]["output"]


def test_docker_engine_down_fails_every_container(tmp_path):
    checker = make_checker(tmp_path, checks=["container"], docker_out=(1, "", "Cannot connect to the Docker daemon"))
    result = checker.run_once()
    assert result["failed_checks"] == ["container:gone", "container:ner11-api-1"]
    assert "Docker engine" in result["checks"]["container:gone"]["output"]


def test_memory_unreadable_warns(tmp_path):
    checker = make_checker(tmp_path, checks=["memory"])
    checker.meminfo_path = str(tmp_path / "absent")
    assert checker.run_once()["checks"]["memory"]["status"] == "warn"


def test_frontend_uses_the_bundle_the_page_references(tmp_path):
    api = FakeApi(HEALTHY)
    result = make_checker(tmp_path, api=api, checks=["frontend"]).run_once()
    assert result["checks"]["frontend:http"]["status"] == "pass"
    assert any(u == "http://fe:2/static/js/main.abc.js" for u, _timeout in api.calls)


def test_real_host_disk_and_memory(tmp_path):
    p = h.validate({"disks": ["/"], "checks": ["disk", "memory"], "disk_min_free_gb": 0, "memory_min_available_gb": 0})
    result = h.HealthChecker(p, http_get=None).run_once()
    assert set(result["checks"]) == {"disk:/", "memory"}
    st = os.statvfs("/")
    used = 100.0 * (st.f_blocks - st.f_bfree) / (st.f_blocks - st.f_bfree + st.f_bavail)
    assert result["checks"]["disk:/"]["observed_value"] == pytest.approx(used, abs=0.2)


# ---- the wait loop ----------------------------------------------------------------------
def sequence(statuses, clock, cost=0.1):
    it = iter(statuses)

    def run_once():
        clock.now += cost
        status = next(it)
        return {"status": status, "checks": {}, "summary": {}, "failed_checks": [], "duration_ms": cost * 1000}

    return run_once


def test_wait_none_runs_once():
    clock = FakeClock()
    result = h.wait_until(sequence(["fail"], clock), "none", 60, 2, clock, clock.sleep)
    assert result["attempts"] == 1 and result["status"] == "fail" and clock.sleeps == []


def test_wait_pass_polls_until_pass():
    clock = FakeClock()
    result = h.wait_until(sequence(["fail", "warn", "pass", "fail"], clock), "pass", 60, 2, clock, clock.sleep)
    assert result["status"] == "pass" and result["attempts"] == 3
    assert clock.sleeps == [2, 2]
    assert result["duration_ms"] == pytest.approx(4300.0)


def test_wait_warn_accepts_warn():
    clock = FakeClock()
    result = h.wait_until(sequence(["fail", "warn", "pass"], clock), "warn", 60, 2, clock, clock.sleep)
    assert result["status"] == "warn" and result["attempts"] == 2


def test_wait_gives_up_at_the_deadline_with_the_last_result():
    clock = FakeClock()
    result = h.wait_until(sequence(["fail"] * 100, clock), "pass", 5, 2, clock, clock.sleep)
    assert result["status"] == "fail"
    # attempts at 0, 2.1, 4.2, then the last sleep is cut to the remaining 0.7 s; one final attempt
    assert clock.sleeps == pytest.approx([2, 2, 0.7])
    assert result["attempts"] == 4
    assert clock.now - 1000.0 <= 5 + 0.1 + 1e-9


def test_wait_with_zero_timeout_checks_once():
    clock = FakeClock()
    result = h.wait_until(sequence(["fail", "pass"], clock), "pass", 0, 2, clock, clock.sleep)
    assert result["attempts"] == 1 and clock.sleeps == []


def test_latency_is_measured_after_the_other_api_requests(tmp_path):
    api = FakeApi(HEALTHY, delay=0.05)
    result = make_checker(tmp_path, api=api, checks=["api"]).run_once()
    assert result["checks"]["api:latency"]["status"] == "pass"
    urls = [u for u, _timeout in api.calls]
    assert urls[-3:] == ["http://api:1/api/v1/vendor-equipment/"] * 3 and urls.count(urls[-1]) == 3


def test_latency_samples_sets_how_many_listing_requests_the_median_is_of(tmp_path):
    api = FakeApi(HEALTHY)
    result = make_checker(tmp_path, api=api, checks=["api"], modules=[], latency_samples=7).run_once()
    urls = [u for u, _timeout in api.calls]
    assert urls.count("http://api:1/api/v1/vendor-equipment/") == 7
    assert re.search(r"\(median of (\d+/){6}\d+\)$", result["checks"]["api:latency"]["output"])


def test_latency_is_not_measured_when_the_api_is_frozen(tmp_path):
    api = FakeApi(HEALTHY, hang=("/health",))
    result = make_checker(tmp_path, api=api, checks=["api"], modules=[], check_timeout=0.3).run_once()
    assert result["checks"]["api:http"]["status"] == "fail"
    assert result["checks"]["api:latency"]["output"] == "not measured: the API did not answer (see api:http)"
    assert not any(u.endswith("/vendor-equipment/") for u, _timeout in api.calls)


@pytest.mark.parametrize(("table", "ok"), [("public.t", True), ("my-t", True), ("o'x", False), ("1t", False), ("a.b.c", False)])
def test_canary_tables_follow_the_one_name_rule(table, ok):
    params = {"container": "pg", "canary_tables": [table]}
    if ok:
        assert h.validate(params)["canary_tables"] == [table]
    else:
        with pytest.raises(h.HealthError, match="not a table name"):
            h.validate(params)

"""ner11.ops.ner_health and playbooks/health.yml against real stacks (issue 3).

Read-only tests use the session's shared stack; every scenario that breaks a stack
(pause, stop, too many connections, corrupt model) runs on one own_stack, in an order
that restores the stack between scenarios.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import uuid

import pytest
from conftest import docker, ledger_lines, run_module, run_playbook, unique_project

MODULE = "ner11.ops.ner_health"
API_CHECKS = ("api:http", "api:model", "api:db", "api:modules", "api:latency")
DB_CHECKS = ("db:connect", "db:query", "db:pool", "db:canary")


def health_args(stack, **over):
    args = {
        "api_url": stack.api_url,
        "frontend_url": stack.frontend_url,
        "container": stack.container("postgres"),
        "containers": [stack.container(s) for s in ("postgres", "api", "frontend")],
        "fail_on": "never",
    }
    args.update(over)
    return args


def explain(res):
    checks = res.get("checks") or {}
    lines = ["%s %s: %s" % (n, c["status"], c["output"]) for n, c in sorted(checks.items())]
    return "%s\n%s\n%s" % (res.get("msg"), "\n".join(lines), res.get("_stderr", "")[-1500:])


def statuses(res, names):
    return {n: res["checks"][n]["status"] for n in names}


# ---- healthy stack ------------------------------------------------------------------------
def test_healthy_stack_passes_fast_and_never_changes_anything(shared_stack, record_property):
    # api:latency measures real latency; on this shared 2-core machine other suites run in
    # parallel (load averages of 8-10 were seen), so the 200 ms goal is relaxed here to 2 s.
    # The 200 ms rule itself is unit-tested and forced to warn in the next test. For the same
    # reason docker exec may take seconds here: check_timeout is raised from 5 to 15 s.
    args = health_args(shared_stack, latency_warn_ms=2000, check_timeout=15)
    runs = [run_module(MODULE, args, check=c) for c in (True, False, True, False)]  # check, apply, check, apply
    names = None
    for res in runs:
        assert not res.get("failed"), explain(res)
        assert res["changed"] is False
        assert res["status"] == "pass", explain(res)
        assert res["summary"] == {"pass": len(res["checks"]), "warn": 0, "fail": 0}
        assert res["failed_checks"] == [] and res["attempts"] == 1
        names = names or set(res["checks"])
        assert set(res["checks"]) == names  # check mode runs the very same checks
    expected = set(API_CHECKS + DB_CHECKS) | {"frontend:http", "disk:/", "memory"}
    expected |= {"container:%s" % shared_stack.container(s) for s in ("postgres", "api", "frontend")}
    assert names == expected
    res = runs[-1]
    for check in res["checks"].values():
        assert set(check) == {
            "status",
            "component",
            "measurement",
            "observed_value",
            "observed_unit",
            "latency_ms",
            "output",
            "time",
        }
        assert check["time"].endswith("Z")
    assert res["checks"]["api:http"]["observed_value"] == "healthy"
    assert res["checks"]["api:model"]["observed_value"] is True
    assert set(res["checks"]["db:canary"]["observed_value"]) == {
        "vendor_equipment",
        "threat_intelligence",
        "compliance_frameworks",
    }
    assert res["checks"]["db:query"]["observed_value"].startswith("15.")
    durations = [r["duration_ms"] for r in runs]
    record_property("health_duration_ms", durations)
    print("ner_health full check duration_ms (4 runs):", durations)
    # Goal: well under a second on an idle machine (bench/RESULTS.md). Other suites share this
    # machine's 2 cores (load averages up to 24 were seen, docker exec then takes seconds), so
    # the generous bound applies to the best of the four runs.
    assert min(durations) < 3000, durations


def test_stack_mode_discovers_as_stack_info_does_and_checks_the_same(shared_stack):
    # One module run: ner_health with the stack model finds the containers itself (health.yml and
    # startup.yml rely on it) - the same names stack_info finds, the same checks as with explicit
    # targets, container checks read from the Engine API.
    vars_ = shared_stack.vars["ner11_stack"]
    # stack_info's four steps (it reads only): check, apply, check, apply - the same answer, no change.
    runs = [run_module("ner11.ops.stack_info", {"stack": vars_}, check=check) for check in (True, False, True, False)]
    assert not any(r.get("failed") or r["changed"] for r in runs), [r.get("msg") for r in runs]
    assert len({json.dumps({k: r[k] for k in ("containers", "running", "missing")}, sort_keys=True) for r in runs}) == 1
    info = runs[-1]
    res = run_module(MODULE, {"stack": vars_, "check_timeout": 15, "latency_warn_ms": 2000, "fail_on": "never"})
    assert not res.get("failed"), explain(res)
    found = res["discovered"]["found"]
    assert found["containers"] == info["containers"] and found["running"] == info["running"] == list(info["running"])
    assert res["discovered"]["to_start"] == [] and res["discovered"]["order"] == ["postgres", "api", "frontend"]
    explicit = run_module(MODULE, health_args(shared_stack, check_timeout=15, latency_warn_ms=2000))
    assert set(res["checks"]) == set(explicit["checks"]), (sorted(res["checks"]), sorted(explicit["checks"]))
    assert res["status"] == "pass", explain(res)
    assert res["report"][0].split() == ["CHECK", "STATUS", "VALUE", "LATENCY", "OUTPUT"]
    assert res["report"][-1].startswith("PASS: ")

    # A host in the api group checks only the api: its URL, its container, no db exec.
    api_only = run_module(MODULE, {"stack": vars_, "groups": ["ner11_api"], "check_timeout": 15, "fail_on": "never"})
    assert api_only["discovered"]["services"] == ["api"]
    assert not any(c.startswith(("db:", "frontend:")) for c in api_only["checks"]), sorted(api_only["checks"])
    assert "container:%s" % shared_stack.container("api") in api_only["checks"]

    # A stack with no containers: named missing, from the derived names, and the checks fail.
    gone = dict(vars_, project=unique_project("itgone"))
    gone.pop("services", None)
    missing = run_module(MODULE, {"stack": gone, "services": ["postgres"], "check_timeout": 3, "fail_on": "never"})
    assert missing["discovered"]["found"]["missing"] == ["postgres"]
    assert missing["checks"]["container:%s-postgres-1" % gone["project"]]["status"] == "fail"


def test_thresholds_turn_into_warn_and_fail_on_decides(shared_stack):
    # memory floor above any real host: memory warns, the rest passes
    res = run_module(MODULE, health_args(shared_stack, checks=["memory", "disk"], memory_min_available_gb=100000))
    assert res["status"] == "warn" and not res.get("failed"), explain(res)
    assert res["checks"]["memory"]["status"] == "warn" and "below 100000 GiB" in res["checks"]["memory"]["output"]
    res = run_module(MODULE, health_args(shared_stack, checks=["memory"], memory_min_available_gb=100000, fail_on="fail"))
    assert not res.get("failed"), explain(res)
    res = run_module(MODULE, health_args(shared_stack, checks=["memory"], memory_min_available_gb=100000, fail_on="warn"))
    assert res.get("failed") and res["status"] == "warn"
    assert "memory warn:" in res["msg"] and "below 100000 GiB" in res["msg"]
    assert res["checks"]["memory"]["status"] == "warn"  # the result comes back with the failure

    # a path that is not there fails; fail_on=fail fails the task and names the check and its output
    res = run_module(MODULE, health_args(shared_stack, checks=["disk"], disks=["/", "/nonexistent-ner11"], fail_on="fail"))
    assert res.get("failed") and res["status"] == "fail"
    assert res["failed_checks"] == ["disk:/nonexistent-ner11"]
    assert "disk:/nonexistent-ner11 fail: /nonexistent-ner11 does not exist" in res["msg"]
    assert "disk:/ " not in res["msg"]

    # a latency goal no API meets: api:latency warns with the measured value
    res = run_module(MODULE, health_args(shared_stack, checks=["api"], latency_warn_ms=0.001))
    assert res["checks"]["api:latency"]["status"] == "warn" and res["checks"]["api:latency"]["observed_value"] > 0


def test_bad_input_is_refused_with_the_fix(shared_stack):
    res = run_module(MODULE, {"checks": ["db"]})
    assert res.get("failed") and "checks includes db but its input is not set" in res["msg"]
    res = run_module(MODULE, {"api_url": "127.0.0.1:18000"})
    assert res.get("failed") and "http(s) URL" in res["msg"]
    res = run_module(MODULE, {"container": "x", "login_host": "y"})
    assert res.get("failed") and "mutually exclusive" in res["msg"]
    res = run_module(MODULE, {"disks": ["/"], "disk_warn_percent": 95})
    assert res.get("failed") and "disk_warn_percent" in res["msg"]


def test_missing_stack_fails_with_clear_outputs():
    project = unique_project("itnone")
    res = run_module(
        MODULE,
        {
            "api_url": "http://127.0.0.1:1",
            "frontend_url": "http://127.0.0.1:2",
            "container": "%s-postgres-1" % project,
            "containers": ["%s-api-1" % project],
            "check_timeout": 2,
        },
    )
    assert res.get("failed") and res["status"] == "fail"
    assert "connection refused" in res["checks"]["api:http"]["output"]
    assert "does not exist" in res["checks"]["container:%s-api-1" % project]["output"]
    assert "deploy the stack" in res["checks"]["db:connect"]["output"]
    assert res["duration_ms"] < 5000


def test_the_ledger_option_records_the_run_and_says_when_it_cannot(tmp_path):
    # No stack: a host check only; fail_on never, so the line's status is the module's outcome (ok).
    secret = "it-secret-%s" % uuid.uuid4().hex
    path = str(tmp_path / "cfg" / "ledger.jsonl")
    args = {
        "checks": ["disk"],
        "disks": ["/"],
        "fail_on": "never",
        "ledger": {"playbook": "health", "host": "node9", "path": path, "secret_values": [secret]},
    }
    res = run_module(MODULE, args, check=True)
    assert not res.get("failed") and res["ledger"]["bytes"] == 0 and res["ledger"]["line"]["host"] == "node9", res
    assert not os.path.exists(path), "check mode wrote the ledger"
    res = run_module(MODULE, args)
    assert not res.get("failed") and not res["changed"] and res["ledger"]["bytes"] > 0, res
    (line,) = ledger_lines(path)
    assert line == res["ledger"]["line"] and line["status"] == "ok" and line["results"]["health"] == res["status"]
    assert secret not in json.dumps(res) and mode(path) == 0o600
    # Check again after the apply: no change, nothing appended (the last of the four steps, an apply
    # again, is the only_if_final run below: no change, its own line).
    res = run_module(MODULE, args, check=True)
    assert not res.get("failed") and not res["changed"] and len(ledger_lines(path)) == 1, res
    # only_if_final (startup.yml's pre-flight): a check that is not the host's whole run - here it
    # fails (every disk over its floor) - writes nothing and returns no line; one that is, writes.
    final = dict(args["ledger"], only_if_final=True)
    res = run_module(MODULE, dict(args, disk_warn_percent=1, disk_fail_percent=2, ledger=final))
    assert not res.get("failed") and res["status"] == "fail" and res["final"] is False and "ledger" not in res, res
    assert len(ledger_lines(path)) == 1
    res = run_module(MODULE, dict(args, ledger=final))
    assert res["status"] != "fail" and res["final"] is True and not res["changed"], res
    assert res["ledger"]["bytes"] > 0 and len(ledger_lines(path)) == 2, res
    # A place it cannot write: the host fails with the ledger's cause and fix, the health result kept.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_module(MODULE, dict(args, ledger=dict(args["ledger"], path=str(blocker / "ledger.jsonl"))))
    assert res.get("failed") and "cannot append to the run ledger" in res["msg"] and "free space" in res["msg"], res
    assert res["status"] in ("pass", "warn", "fail") and "disk:/" in res["checks"]
    # An invalid stack model: its own message only (the line has no place without the model).
    res = run_module(MODULE, dict(args, stack={"project": "Bad Name!"}, ledger=dict(args["ledger"], path=None)))
    assert res.get("failed") and res["msg"].startswith("invalid ner11_stack: ") and "ledger" not in res["msg"], res
    # The play's password and job id reach the line though the task names neither (the action
    # plugin): a host name holding the password is redacted, the job id is the play's tower_job_id.
    ledger = {"playbook": "health", "host": "node9-" + secret, "path": str(tmp_path / "ctx" / "ledger.jsonl")}
    res = run_module(MODULE, dict(args, ledger=ledger), play_vars={"ner11_db_password": secret, "tower_job_id": 61})
    line = res["ledger"]["line"]
    assert line["host"] == "node9-(redacted)" and line["awx_job_id"] == "61", line
    assert secret not in json.dumps(res) and secret not in open(ledger["path"]).read()


# ---- breaking one stack, scenario by scenario ---------------------------------------------
class PsqlSessions:
    """Hold idle client sessions open: psql processes sleeping inside the postgres container."""

    def __init__(self, stack, count):
        self.stack = stack
        self.count = count
        self.tag = "ner11_health_it_%s" % stack.project

    def __enter__(self):
        container = self.stack.container("postgres")
        for _session in range(self.count):
            docker(
                "exec", "-d", "-u", "postgres", "-e", "PGAPPNAME=%s" % self.tag, container,
                "psql", "-X", "-d", self.stack.model["db_name"], "-c", "SELECT pg_sleep(120)",
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = int(self.stack.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'" % self.tag))
            if n >= self.count:
                return self
            time.sleep(0.5)
        raise AssertionError("only %s of %s sessions opened" % (n, self.count))

    def __exit__(self, *exc):
        self.stack.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s'" % self.tag)
        return False


def wait_pass(stack, checks, timeout=120):
    res = run_module(MODULE, health_args(stack, checks=checks, wait_for="pass", timeout=timeout, interval=1, fail_on="fail"))
    assert res["status"] == "pass" and not res.get("failed"), explain(res)
    return res


@pytest.mark.slow
def test_broken_stack_scenarios(own_stack, record_property):
    stack = own_stack()
    api = stack.container("api")
    pg = stack.container("postgres")
    wait_pass(stack, ["api", "db", "frontend", "container"])

    # 1. API frozen (docker pause): its checks fail within check_timeout instead of hanging.
    docker("pause", api)
    try:
        started = time.monotonic()
        res = run_module(MODULE, health_args(stack, checks=["api", "container"], check_timeout=2))
        wall = time.monotonic() - started
    finally:
        docker("unpause", api)
    record_property("paused_api_duration_ms", res["duration_ms"])
    assert res["status"] == "fail"
    assert statuses(res, API_CHECKS) == {n: "fail" for n in API_CHECKS}, explain(res)
    assert "no answer within 2s" in res["checks"]["api:http"]["output"]
    assert "paused" in res["checks"]["api:http"]["output"]
    assert "API overloaded" in res["checks"]["api:modules"]["output"]
    assert res["checks"]["container:%s" % api]["status"] == "fail"
    assert "docker unpause" in res["checks"]["container:%s" % api]["output"]
    # check_timeout + margin: docker inspect may take its full (bounded) time on this loaded machine
    assert res["duration_ms"] < 2000 + 3000, res["duration_ms"]
    assert wall < 2 + 10  # + ansible-playbook start-up
    wait_pass(stack, ["api"])

    # 2. API stopped: api:* and container:<api> fail and say so; the frontend proxy fails too.
    docker("stop", "-t", "60", api)
    res = run_module(MODULE, health_args(stack, fail_on="fail"))
    assert res.get("failed") and res["status"] == "fail"
    for name in API_CHECKS[:-1]:
        assert res["checks"][name]["status"] == "fail"
        assert "connection refused" in res["checks"][name]["output"], explain(res)
    assert res["checks"]["api:latency"]["status"] == "fail"
    assert "not running" in res["checks"]["container:%s" % api]["output"]
    assert res["checks"]["frontend:http"]["status"] == "fail"
    assert statuses(res, DB_CHECKS) == {n: "pass" for n in DB_CHECKS}  # the database is fine
    assert "api:http fail: " in res["msg"] and "container:%s fail: not running" % api in res["msg"]

    # 3. wait_for=pass while the API starts: polls (no fixed sleep) and returns pass once ready.
    box = {}
    waiter = threading.Thread(
        target=lambda: box.update(
            res=run_module(MODULE, health_args(stack, checks=["api"], wait_for="pass", timeout=120, interval=1, fail_on="fail"))
        )
    )
    waiter.start()
    time.sleep(4)  # let the first attempts see the API down
    docker("start", api)
    waiter.join(180)
    res = box["res"]
    record_property("wait_for_pass_attempts", res["attempts"])
    assert res["status"] == "pass" and not res.get("failed"), explain(res)
    assert res["attempts"] >= 2 and res["duration_ms"] > 3000

    # 4. PostgreSQL stopped: db:* and api:db fail.
    docker("stop", "-t", "120", pg)
    try:
        res = run_module(MODULE, health_args(stack, checks=["api", "db", "container"], check_timeout=3))
        assert res["status"] == "fail"
        assert statuses(res, DB_CHECKS) == {n: "fail" for n in DB_CHECKS}, explain(res)
        assert "not running" in res["checks"]["db:connect"]["output"]
        assert res["checks"]["api:db"]["status"] == "fail"
        assert "disconnected" in res["checks"]["api:db"]["output"], explain(res)
        assert res["checks"]["container:%s" % pg]["status"] == "fail"
    finally:
        docker("start", pg)
    wait_pass(stack, ["api", "db"])

    # 5. Many open connections: db:pool warns above 80 % of max_connections (G71).
    with PsqlSessions(stack, 85):
        res = run_module(MODULE, health_args(stack, checks=["db"]))
        pool = res["checks"]["db:pool"]
        assert pool["status"] == "warn", explain(res)
        assert 85 < pool["observed_value"] < 95 and pool["observed_unit"] == "percent"
        assert "/100 connections" in pool["output"] and "pg_sessions" in pool["output"]
        assert res["status"] == "warn"
    res = wait_pass(stack, ["db"])  # the 85 backends take a moment to go away
    assert res["checks"]["db:pool"]["observed_value"] < 80

    # 6. A corrupted model file: the API restarts with models_loaded false -> api:model fails.
    manifest = json.loads(docker("exec", api, "cat", "/app/models/manifest.json").stdout)
    model_file = manifest["models"][0]["files"][0]["path"]
    docker("exec", "-u", "0", api, "sh", "-c", "printf 'corrupt' >> /app/models/%s" % model_file)
    docker("restart", "-t", "60", api)
    # The container turns healthy again (its probe only needs HTTP 200; the body says 'degraded').
    wait_pass(stack, ["container"])
    res = run_module(MODULE, health_args(stack, checks=["api"]))
    assert res["checks"]["api:model"]["status"] == "fail", explain(res)
    assert "models_loaded is false" in res["checks"]["api:model"]["output"]
    assert res["checks"]["api:http"]["status"] in ("warn", "fail")
    assert res["status"] == "fail"


# ---- the playbook --------------------------------------------------------------------------
SHOW_STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}


def test_health_playbook_on_a_healthy_stack(shared_stack):
    # shared, loaded machine: see test_healthy_stack_passes_fast_and_never_changes_anything
    extra = {
        "ner11_stack": shared_stack.vars["ner11_stack"],
        "ner11_health_check_timeout": 15,
        "ner11_health_latency_warn_ms": 2000,
        # As an AWX job passes them: the line takes the job id from the play, and the password is
        # redacted, though the role passes neither to the check.
        "awx_job_id": 4242,
        "ner11_db_password": shared_stack.password,
    }
    ledger = os.path.join(shared_stack.model["config_dir"], "ledger.jsonl")
    before = ledger_lines(ledger)
    result = run_playbook("playbooks/health.yml", extra, env=SHOW_STATS)
    assert result.rc == 0, result.explain()
    assert result.changed() == 0
    # One task per host: the check itself appended the run's ledger line (no ledger play after it).
    names = [name for name, _res in result.tasks()]
    assert len([n for n in names if n.endswith(" : Check the stack")]) == 1, names
    assert not [n for n in names if "Append the run to the ledger" in n], names
    (line,) = ledger_lines(ledger)[len(before) :]
    assert line["playbook"] == "health" and line["host"] == "localhost" and line["status"] == "ok", line
    assert line["awx_job_id"] == "4242", line
    assert line["results"] == {"health": "pass", "failed_checks": []} and line["duration_s"] is not None, line
    assert mode(ledger) == 0o600 and mode(os.path.dirname(ledger)) == 0o700
    assert shared_stack.password not in open(ledger).read()
    assert result.custom_stats["ner11_run"]["status"] == "ok"
    assert result.custom_stats["ner11_run"]["hosts"] == {"localhost": "ok"}
    # One report task for the whole batch: host -> its table (run_once, not one task per host).
    table = result.task("Report the health of every host")["msg"]["localhost"]
    assert table[0].split() == ["CHECK", "STATUS", "VALUE", "LATENCY", "OUTPUT"]
    rows = {line.split()[0]: line for line in table[1:-1]}
    assert rows["api:http"].split()[1] == "pass" and "ms" in rows["api:http"]
    assert "container:%s" % shared_stack.container("api") in rows
    assert table[-1].startswith("PASS: ")
    stats = result.custom_stats["ner11_health"]["localhost"]
    assert stats["status"] == "pass" and stats["failed_checks"] == []

    # check mode: the same report, nothing changed
    result = run_playbook("playbooks/health.yml", extra, check=True, env=SHOW_STATS)
    assert result.rc == 0 and result.changed() == 0, result.explain()
    assert result.custom_stats["ner11_health"]["localhost"]["status"] == "pass"
    assert len(ledger_lines(ledger)) == len(before) + 1, "check mode wrote a ledger line"


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_health_playbook_fails_when_the_stack_is_down(tmp_path):
    stack = {
        "project": unique_project("itdown"),
        "config_dir": str(tmp_path / "cfg"),
        "services": {
            "postgres": {"ports": [{"host": 1, "container": 5432}]},
            "api": {"ports": [{"host": 2, "container": 8000}]},
            "frontend": {"ports": [{"host": 3, "container": 3000}]},
        },
    }
    result = run_playbook("playbooks/health.yml", {"ner11_stack": stack, "ner11_health_check_timeout": 2}, env=SHOW_STATS)
    assert result.rc != 0
    # The health module fails the host with its own failure text (not one rebuilt by the playbook)...
    failure = result.task("Check the stack")
    assert failure.get("failed") and "api:http fail: " in failure["msg"], failure["msg"]
    assert "connection refused" in failure["msg"]
    # ...and the failed host is still in the batch's report and summary (the `always` part): the
    # failure text, then the table.
    report = result.task("Report the health of every host")["msg"]["localhost"]
    assert report[0] == failure["msg"], report
    assert report[1].split() == ["CHECK", "STATUS", "VALUE", "LATENCY", "OUTPUT"], report
    stats = result.custom_stats["ner11_health"]["localhost"]
    assert stats["status"] == "fail" and "api:http" in stats["failed_checks"]
    # The failed host's run is in the ledger too (a ledger play after it never ran for a failed host).
    (line,) = ledger_lines(str(tmp_path / "cfg" / "ledger.jsonl"))
    assert line["status"] == "failed" and line["results"]["health"] == "fail", line
    assert "api:http" in line["results"]["failed_checks"], line
    assert result.custom_stats["ner11_run"]["status"] == "failed"
    assert result.custom_stats["ner11_run"]["failed_hosts"] == ["localhost"]

    # A bad role option is refused on the host by the module's own argument spec (health.yml skips
    # the role's per-host argument check): it names the option and the allowed values.
    result = run_playbook("playbooks/health.yml", {"ner11_stack": stack, "health_fail_on": "sometimes"})
    assert result.rc != 0
    refused = result.task("Check the stack")
    assert "fail_on" in refused["msg"] and "sometimes" in refused["msg"] and "never" in refused["msg"], refused["msg"]

    # ner11_health_fail_on=never only reports
    result = run_playbook(
        "playbooks/health.yml",
        {"ner11_stack": stack, "ner11_health_fail_on": "never", "ner11_health_checks": ["api"]},
        env=SHOW_STATS,
    )
    assert result.rc == 0, result.explain()
    assert result.custom_stats["ner11_health"]["localhost"]["status"] == "fail"

"""module_utils/startup_summary.py: the startup role's summary and report for a batch (issue 14)."""

from ansible_collections.ner11.ops.plugins.module_utils.startup_summary import batch_summary, host_summary, report_lines

ORDER = ["postgres", "api", "frontend"]
CONTAINERS = {s: "p-%s-1" % s for s in ORDER}


def first(status="pass", running=None, started_epoch=1000.0, checks=None):
    running = ORDER if running is None else running
    return {
        "status": status,
        "started_epoch": started_epoch,
        "failed_checks": [k for k, v in (checks or {}).items() if v["status"] == "fail"],
        "checks": checks
        or {
            "disk:/": {"status": "pass", "output": "free"},
            "memory": {"status": "pass", "output": "ok"},
            "api:http": {"status": "warn", "output": "slow"},
        },
        "discovered": {
            "model": {"project": "p"},
            "order": list(ORDER),
            "found": {"containers": dict(CONTAINERS), "running": list(running), "missing": []},
            "to_start": [s for s in ORDER if s not in running],
        },
    }


def step(service, started=True, duration=3.0, expected_max=5):
    return {
        "service": service,
        "container": CONTAINERS[service],
        "started": started,
        "was_running": not started,
        "health": "pass",
        "duration_s": duration,
        "expected": "1-%s s" % expected_max,
        "expected_max_s": expected_max,
        "deadline_s": 60,
    }


def test_a_running_stack_reports_every_service_already_running_from_the_preflight():
    s = host_summary(first(), {}, [], check_mode=False, now=1012.34)
    assert s["status"] == "pass" and s["started"] == [] and s["already_running"] == ORDER
    assert [x["service"] for x in s["steps"]] == ORDER and all(x["gated"] is False and x["health"] == "pass" for x in s["steps"])
    assert set(s["preflight"]) == {"disk:/", "memory"}
    assert s["warnings"] == ["api:http"] and s["failed_checks"] == []
    assert s["total_s"] == 12.3 and s["project"] == "p" and s["check_mode"] is False
    lines = report_lines(s)
    assert lines[0] == "startup of p: pass in 12.3 s (runbook: 3-5 min; escalate after 10 min)"
    assert lines[1] == "postgres: already running, pass in the final check (nothing to start, no gate)"


def test_a_gated_start_reports_its_steps_and_the_verify_over_the_preflight():
    verified = {"status": "warn", "failed_checks": [], "checks": {"api:latency": {"status": "warn"}}}
    steps = [step("postgres"), step("api", duration=9.5), step("frontend", started=False)]
    s = host_summary(first(status="fail", running=["frontend"]), verified, steps, now=1030.0)
    assert s["status"] == "warn" and s["warnings"] == ["api:latency"]  # the verify, not the pre-flight
    assert s["started"] == ["postgres", "api"] and s["already_running"] == ["frontend"] and s["steps"] == steps
    lines = report_lines(s)
    assert lines[1] == "postgres: started, pass in 3.0 s (runbook: 1-5 s)"
    assert lines[2] == "api: started, pass in 9.5 s (runbook: 1-5 s); SLOWER than the runbook maximum of 5 s"
    assert lines[3] == "frontend: already running, pass in 3.0 s (runbook: 1-5 s)"


def test_a_skipped_verify_is_not_the_report():
    s = host_summary(first(status="warn"), {"skipped": True, "changed": False}, [], now=1001.0)
    assert s["status"] == "warn"


def test_check_mode_plans_and_says_would_start():
    steps = [step("postgres", started=False), step("api", started=False)]
    steps[0]["was_running"] = False
    s = host_summary(first(running=["api"]), {"skipped": True}, steps, check_mode=True, now=1001.0)
    assert s["status"] == "planned" and s["check_mode"] is True and s["failed_checks"] == []
    lines = report_lines(s, check_mode=True)
    assert lines[1].startswith("postgres: would start,") and lines[2].startswith("api: already running,")


def test_batch_keys_every_host_and_adds_its_report():
    out = batch_summary(["db", "api1"], [first(), first(running=[])], [{}, {}], [[], [step("api")]], False, 1005.0)
    assert list(out) == ["db", "api1"]
    assert out["db"]["started"] == [] and out["api1"]["started"] == ["api"]
    assert out["api1"]["report"] == report_lines(out["api1"])
    # a host without a pre-flight result (it never ran it) still gets an entry, not an error
    assert batch_summary(["x"], [{}], None, None, False, None)["x"]["status"] == "unknown"


def test_the_filter_reads_each_hosts_registered_results_from_its_variables():
    # The filter gets each host's variables once (hostvars[host] of the batch, in its order) and
    # reads the three registered results from them; a missing one counts as not run.
    from ansible_collections.ner11.ops.plugins.filter.startup_summary import FilterModule

    summarise = FilterModule().filters()["startup_summary"]
    results = [
        {"__startup_first": first(), "unrelated": 1},
        {"__startup_first": first(running=[]), "__startup_verified": {}, "__startup_steps": [step("api")]},
        {},
    ]
    out = summarise(["db", "api1", "gone"], results, False, 1005.0)
    assert out == batch_summary(
        ["db", "api1", "gone"], [first(), first(running=[]), {}], [{}, {}, {}], [[], [step("api")], []], False, 1005.0
    )
    assert out["api1"]["started"] == ["api"] and out["gone"]["status"] == "unknown"

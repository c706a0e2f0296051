"""startup.yml against a real stack (issue 3: ordered startup with health gates).

One stack reused across ordered steps: stopped stack -> pre-flight refusal -> check ->
apply -> check -> apply (no change, timed) -> a service that never becomes healthy.
"""

from __future__ import annotations

import json
import os
import socket
import time

from conftest import docker, ledger_lines, run_playbook, stack_vars, unique_project

STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}
# CI machines are small: the runbook's floors (10 GB disk, 4 GB memory) are role defaults,
# lowered here on purpose (and proven to gate with an impossible floor below).
SMALL = {"startup_min_free_disk_gb": 1, "startup_min_available_memory_gb": 0.25, "startup_disk_fail_percent": 99}
SERVICES = ("postgres", "api", "frontend")
# One task refuses both: containers that do not exist, disk or memory below the floor.
PREFLIGHT_FAILED = "Fail the pre-flight when containers of the stack do not exist or disk or memory is below the floor"
CANARY = ("vendor_equipment", "threat_intelligence", "compliance_frameworks")


def running(stack):
    return {
        s: json.loads(docker("inspect", stack.container(s)).stdout)[0]["State"]["Running"]
        for s in ("postgres", "api", "frontend")
    }


def counts(stack):
    return {t: int(stack.psql("SELECT count(*) FROM %s" % t)) for t in CANARY}


def startup(stack, check=False, **extra):
    ev = dict(stack.vars, **SMALL)
    ev.update(extra)
    return run_playbook("playbooks/startup.yml", ev, check=check, env=STATS)


def summary(result):
    return result.custom_stats["ner11_startup"]["localhost"]  # global set_stats, keyed by host


def test_startup_from_a_stopped_stack_is_ordered_gated_and_idempotent(own_stack, tmp_path):
    stack = own_stack()
    stack.psql("INSERT INTO vendor_equipment (vendor, model) VALUES ('acme', 'rtu-7')")
    before = counts(stack)
    down = run_playbook("playbooks/shutdown.yml", dict(stack.vars, service_log_dir=str(tmp_path)))
    assert down.rc == 0, down.explain()
    assert running(stack) == {"postgres": False, "api": False, "frontend": False}

    # Pre-flight gates really gate: an impossible disk floor stops before anything starts.
    refused = startup(stack, startup_min_free_disk_gb=10**7)
    assert refused.rc != 0
    msg = refused.task(PREFLIGHT_FAILED)["msg"]
    assert "Pre-flight failed, nothing was started" in msg and "disk:/" in msg
    assert running(stack) == {"postgres": False, "api": False, "frontend": False}

    # 1. check: the plan, nothing started.
    check = startup(stack, check=True)
    assert check.rc == 0, check.explain()
    assert check.changed() > 0
    assert check.task("Report the plan")["msg"]["would_start"] == ["postgres", "api", "frontend"]
    assert running(stack) == {"postgres": False, "api": False, "frontend": False}

    # 2. apply: postgres -> api -> frontend, each gated, then a full health report.
    apply = startup(stack)
    assert apply.rc == 0, apply.explain()
    assert apply.changed() > 0
    done = summary(apply)
    assert done["status"] in ("pass", "warn"), done
    assert done["started"] == ["postgres", "api", "frontend"]
    assert [s["service"] for s in done["steps"]] == ["postgres", "api", "frontend"]
    for step in done["steps"]:
        assert step["health"] in ("pass", "warn") and step["duration_s"] >= 0 and step["expected"]
    # One report for the batch (run_once), keyed by host; the same lines are in the summary.
    lines = apply.task("Report each step next to the runbook's expected time")["msg"]["localhost"]
    assert any(line.startswith("api: started") and "runbook: 45-90 s" in line for line in lines)
    assert lines[0].startswith("startup of %s: %s in " % (stack.project, done["status"])) and lines == done["report"], lines
    assert 0 < done["total_s"] < 900, done["total_s"]
    health = apply.task("Check the whole stack, module endpoints and canary tables")
    assert health["checks"]["api:modules"]["status"] == "pass"
    assert health["checks"]["db:canary"]["status"] == "pass"
    assert health["checks"]["api:model"]["status"] == "pass"
    assert running(stack) == {"postgres": True, "api": True, "frontend": True}
    assert counts(stack) == before
    # The run ledger: the gated start wrote the host's line (changed: it started services), and the
    # role published the run's summary (no ledger play after it).
    ledger = os.path.join(stack.model["config_dir"], "ledger.jsonl")
    line = ledger_lines(ledger)[-1]
    assert line["playbook"] == "startup" and line["status"] == "changed", line
    assert [(s["name"], s["changed"], s["status"]) for s in line["steps"]] == [
        ("postgres", True, "started"),
        ("api", True, "started"),
        ("frontend", True, "started"),
    ], line["steps"]
    assert apply.task("Discover and check the stack, free disk and available memory (a.11)")["final"] is False
    assert line["results"]["health"] in ("pass", "warn") and 0 < line["duration_s"] <= done["total_s"] + 0.1, line
    assert apply.custom_stats["ner11_run"]["hosts"] == {"localhost": "changed"}, apply.custom_stats["ner11_run"]
    assert not [name for name, _r in apply.tasks("localhost") if "Append the run to the ledger" in name]
    recorded = len(ledger_lines(ledger))

    # 3. check again and 4. apply again: nothing to do, no container touched.
    again = startup(stack, check=True)
    assert again.rc == 0, again.explain()
    assert again.changed() == 0, again.changed_tasks()
    assert len(ledger_lines(ledger)) == recorded, "check mode wrote the ledger"
    started = time.monotonic()
    again = startup(stack)
    wall = time.monotonic() - started
    assert again.rc == 0, again.explain()
    assert again.changed() == 0, again.changed_tasks()
    assert summary(again)["started"] == []
    print("idempotent startup.yml on a running healthy stack: %.1f s" % wall)
    # A running stack takes ONE module run: the pre-flight discovers the containers and checks them,
    # disk and memory (no stack_info run, no second health check, no gate).
    assert "memory" in summary(again)["preflight"] and "disk:/" in summary(again)["preflight"], summary(again)
    first = again.task("Discover and check the stack, free disk and available memory (a.11)")
    assert first["status"] in ("pass", "warn") and first["discovered"]["to_start"] == [], first.get("failed_checks")
    assert first["final"] is True
    assert first["checks"]["api:modules"]["status"] == "pass" and first["checks"]["db:canary"]["status"] == "pass"
    # ... which also wrote the host's ledger line (ner_health's ledger.only_if_final: the host is done).
    assert first["ledger"]["bytes"] > 0 and ledger_lines(ledger)[recorded:] == [first["ledger"]["line"]], first["ledger"]
    assert first["ledger"]["line"]["status"] == "ok" and first["ledger"]["line"]["playbook"] == "startup"
    assert again.custom_stats["ner11_run"]["hosts"] == {"localhost": "ok"}, again.custom_stats["ner11_run"]
    # The gated path (three starts, the verify and its failure gate) does not even reach the host:
    # no host of the batch has anything to gate, so the role ends for every host after the summary
    # (a `meta` task in the controller's process, no worker per host).
    ran = [name for name, _r in again.tasks("localhost")]
    assert not any("Start the services behind their health gates" in name for name in ran), ran
    assert any("Summarise the startup of every host of the batch" in name for name in ran), ran
    assert not any("Check the whole stack, module endpoints" in name for name in ran), ran
    assert not any("Find the stack's containers" in name for name in ran), ran

    # The floor still gates a running stack: refused, no gate runs, no container is restarted.
    started_at = {s: docker("inspect", "-f", "{{.State.StartedAt}}", stack.container(s)).stdout for s in SERVICES}
    refused = startup(stack, startup_min_free_disk_gb=10**7)
    assert refused.rc != 0
    msg = refused.task(PREFLIGHT_FAILED)["msg"]
    assert "Pre-flight failed, nothing was started" in msg and "disk:/" in msg, msg
    assert {s: docker("inspect", "-f", "{{.State.StartedAt}}", stack.container(s)).stdout for s in SERVICES} == started_at

    # A start the engine refuses (another process holds the frontend's host port): the run fails
    # with the engine's own words after its retries, the services already running are not touched,
    # and once the port is free the next run starts the frontend.
    frontend = stack.container("frontend")
    docker("stop", "-t", "5", frontend)
    port = stack.vars["ner11_stack"]["services"]["frontend"]["ports"][0]["host"]
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the probes' TIME_WAIT sockets
        holder.bind(("127.0.0.1", port))
        holder.listen()
        recorded = len(ledger_lines(ledger))
        held = startup(stack)
    assert held.rc != 0
    msg = held.task("Fail when the engine did not start the container: frontend")["msg"]
    assert msg.startswith("frontend: the Docker engine did not start container %s (" % frontend), msg
    assert "address already in use" in msg, msg
    assert running(stack) == {"postgres": True, "api": True, "frontend": False}
    # A host that fails inside its gated start has no ledger line; the run's summary is published
    # all the same and lists it as failed, without a record.
    assert len(ledger_lines(ledger)) == recorded, ledger_lines(ledger)[-1]
    run = held.custom_stats["ner11_run"]
    assert run["status"] == "failed" and run["hosts_without_record"] == ["localhost"] == run["failed_hosts"], run
    freed = startup(stack)
    assert freed.rc == 0, freed.explain()
    assert summary(freed)["started"] == ["frontend"] and running(stack)["frontend"] is True

    # A service that cannot become healthy: corrupt the model, the api never passes api:model.
    # The failure names the service, shows the failed checks with their output and the logs.
    api = stack.container("api")
    docker("exec", api, "sh", "-c", "echo '{not json' > /app/models/manifest.json")
    docker("restart", "-t", "10", api)
    # An application that logs its connection string (an error line: always shown among the error
    # lines): the failure shows the line, not the password.
    docker("exec", api, "sh", "-c", "echo 'ERROR could not reach postgresql://ner11:it-pw-0423@db:5432/ner11_db' > /proc/1/fd/1")
    broken = startup(stack, startup_start_timeout=8)
    assert broken.rc != 0
    msg = broken.task("Fail with the last health output and log lines: api")["msg"]
    assert msg.startswith("api (%s) did not become healthy within 8 s" % api)
    assert "api:model fail: " in msg  # the health module's own failure text
    assert "Last 30 log lines of %s" % api in msg
    assert "Model loading failed" in msg  # a real log line of the api
    assert "postgresql://ner11:(redacted)@db:5432" in msg and "it-pw-0423" not in msg
    assert running(stack)["api"] is True  # reported, not torn down


def test_startup_without_the_containers_names_deploy():
    project = unique_project("itnone")
    result = run_playbook("playbooks/startup.yml", dict(stack_vars(project), **SMALL))
    assert result.rc != 0
    msg = result.task(PREFLIGHT_FAILED)["msg"]
    assert "%s-postgres-1" % project in msg and "playbooks/deploy.yml" in msg
    assert docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % project).stdout.strip() == ""

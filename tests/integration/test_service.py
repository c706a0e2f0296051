"""service.yml and shutdown.yml against a real stack (issue 3: service control).

One stack per test, reused across ordered steps to keep the runtime low.
"""

from __future__ import annotations

import json
import os
import stat
import time

from conftest import docker, run_playbook

STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}
CANARY = ("vendor_equipment", "threat_intelligence", "compliance_frameworks")


def running(stack):
    out = {}
    for service in ("postgres", "api", "frontend"):
        info = json.loads(docker("inspect", stack.container(service)).stdout)[0]
        out[service] = info["State"]["Running"]
    return out


def counts(stack):
    return {t: int(stack.psql("SELECT count(*) FROM %s" % t)) for t in CANARY}


def seed(stack):
    stack.psql(
        "INSERT INTO vendor_equipment (vendor, model) VALUES ('acme', 'plc-1'), ('acme', 'plc-2');"
        "INSERT INTO threat_intelligence (indicator, kind) VALUES ('198.51.100.7', 'ip');"
        "INSERT INTO compliance_frameworks (name) VALUES ('IEC 62443')"
    )


def summary(result):
    return result.custom_stats["ner11_service"]["localhost"]


def service(stack, name, action, check=False, **extra):
    ev = dict(stack.vars, ner11_service=name, ner11_action=action, **extra)
    return run_playbook("playbooks/service.yml", ev, check=check, env=STATS)


def test_stop_start_restart_keep_data_in_dependency_order(own_stack, tmp_path):
    stack = own_stack()
    logs = tmp_path / "logs"
    seed(stack)
    before = counts(stack)
    assert before["vendor_equipment"] >= 2

    # --- nonsense input: the first task names the variable and the choices, nothing touched --
    for name, action, bad in (("nonsense", "stop", "ner11_service"), ("postgres", "explode", "ner11_action")):
        result = service(stack, name, action)
        assert result.rc != 0
        msg = result.task("Check the job's inputs (playbooks/vars/service.yml)")["msg"]
        assert bad in msg and (name if bad == "ner11_service" else action) in msg, msg
        assert result.changed() == 0
    assert running(stack) == {"postgres": True, "api": True, "frontend": True}

    # --- stop postgres while api and frontend run: four steps ----------------------------
    extra = {"service_log_dir": str(logs)}
    check = service(stack, "postgres", "stop", check=True, **extra)
    assert check.rc == 0, check.explain()
    assert check.changed() > 0
    plan = check.task("Report the plan")["msg"]
    assert plan["would_stop"] == ["frontend", "api", "postgres"]
    assert plan["stops_first_because_they_depend_on_it"] == ["frontend", "api"]
    assert running(stack) == {"postgres": True, "api": True, "frontend": True}
    assert not logs.exists()

    apply = service(stack, "postgres", "stop", **extra)
    assert apply.rc == 0, apply.explain()
    assert apply.changed() > 0
    done = summary(apply)
    assert done["stopped"] == ["frontend", "api", "postgres"]  # reverse dependency order
    assert done["cascade"] == ["frontend", "api"]
    assert "frontend, api stopped first" in " ".join(apply.task("Report the run")["msg"])
    stops = {s["service"]: s for s in done["stops"]}
    assert stops["postgres"]["checkpoint"] == "ok"  # CHECKPOINT ran before the stop
    assert stops["postgres"]["exit_code"] == 0 and not stops["postgres"]["killed"]
    assert stops["api"]["sessions"]["fastapi_sessions_remaining"] == 0
    assert [s["stop_timeout_s"] for s in done["stops"]] == [30, 60, 120]  # G8
    for name in ("frontend", "api", "postgres"):
        path = logs / ("%s_last_session.log" % name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path.read_text().strip()
    assert stat.S_IMODE(os.stat(logs).st_mode) == 0o700
    assert "database system is shut down" in (logs / "postgres_last_session.log").read_text()
    assert running(stack) == {"postgres": False, "api": False, "frontend": False}

    for check_mode in (True, False):
        again = service(stack, "postgres", "stop", check=check_mode, **extra)
        assert again.rc == 0, again.explain()
        assert again.changed() == 0, again.changed_tasks()

    # --- start api while postgres is down: its dependency starts first; four steps -------
    check = service(stack, "api", "start", check=True)
    assert check.rc == 0, check.explain()
    assert check.changed() > 0
    assert check.task("Report the plan")["msg"]["would_start"] == ["postgres", "api"]
    assert running(stack) == {"postgres": False, "api": False, "frontend": False}

    apply = service(stack, "api", "start")
    assert apply.rc == 0, apply.explain()
    done = summary(apply)
    assert done["started"] == ["postgres", "api"]
    assert all(step["health"] in ("pass", "warn") for step in done["starts"])
    assert running(stack) == {"postgres": True, "api": True, "frontend": False}
    for check_mode in (True, False):
        again = service(stack, "api", "start", check=check_mode)
        assert again.rc == 0, again.explain()
        assert again.changed() == 0, again.changed_tasks()
    assert counts(stack) == before

    # --- stop api: a leftover fastapi session is terminated, an unrelated one is not (G48)
    pg = stack.container("postgres")
    db = stack.model["db_name"]
    docker("exec", "-d", "-u", "postgres", pg, "psql", "-X", "-d", "dbname=%s application_name=fastapi" % db,
           "-c", "SELECT pg_sleep(600)")  # fmt: skip
    docker("exec", "-d", "-u", "postgres", pg, "psql", "-X", "-d", "dbname=%s application_name=other_tool" % db,
           "-c", "SELECT pg_sleep(600)")  # fmt: skip
    count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '%s'"
    for _attempt in range(50):
        if stack.psql(count % "other_tool") == "1" and int(stack.psql(count % "fastapi")) >= 1:
            break
        time.sleep(0.2)
    apply = service(stack, "api", "stop", service_log_dir=str(logs))
    assert apply.rc == 0, apply.explain()
    sessions = {s["service"]: s for s in summary(apply)["stops"]}["api"]["sessions"]
    assert sessions["fastapi_sessions_terminated"] >= 1
    assert sessions["fastapi_sessions_remaining"] == 0
    assert "leftover fastapi session" in " ".join(apply.task("Report the run")["msg"])
    assert stack.psql(count % "fastapi") == "0"
    assert stack.psql(count % "other_tool") == "1"  # not ours: left alone
    stack.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'other_tool'")

    # --- restart postgres while the api runs: api stops first and comes back ------------
    assert service(stack, "api", "start").rc == 0
    apply = service(stack, "postgres", "restart", service_log_dir=str(logs))
    assert apply.rc == 0, apply.explain()
    done = summary(apply)
    assert done["stopped"] == ["api", "postgres"]
    assert done["started"] == ["postgres", "api"]
    assert running(stack) == {"postgres": True, "api": True, "frontend": False}
    assert counts(stack) == before

    # --- status is read-only; shutdown stops everything in reverse order ----------------
    status = service(stack, "all", "status", service_status_fail_on="never")
    assert status.rc == 0 and status.changed() == 0
    assert summary(status)["health"] == "fail"  # the frontend is stopped
    status = service(stack, "api", "status")
    assert status.rc == 0 and summary(status)["health"] in ("pass", "warn")

    down = run_playbook("playbooks/shutdown.yml", dict(stack.vars, service_log_dir=str(logs)), env=STATS)
    assert down.rc == 0, down.explain()
    assert summary(down)["stopped"] == ["api", "postgres"]
    assert running(stack) == {"postgres": False, "api": False, "frontend": False}
    again = run_playbook("playbooks/shutdown.yml", dict(stack.vars, service_log_dir=str(logs)))
    assert again.rc == 0 and again.changed() == 0

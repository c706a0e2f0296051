"""playbooks/incident_db.yml and incident_api.yml on one real stack: each fault injected for real, the same
command line for every fault (the branch comes from measurements only), health restored between tests.
"""

from __future__ import annotations

import glob
import json
import os
import stat
import subprocess
import threading
import time
import uuid

import psycopg2
import pytest
from conftest import Stack, docker, run_module, run_playbook, unique_project, unmount, wait_http

# The one command line of every fault test (thresholds short enough for a test).
COMMON = {
    "ner11_incident_mode": "remediate",
    "ner11_confirm": "ner11_db",
    "ner11_incident_idle_in_transaction_seconds": 2,
    "ner11_incident_blocked_seconds": 2,
    "ner11_incident_running_seconds": 120,
}


@pytest.fixture(scope="module")
def stack():
    st = Stack(unique_project("itid"))
    st.remove()
    result = st.deploy()
    if result.rc != 0:
        st.remove()
        pytest.fail("deploying the stack failed: %s" % result.explain())
    st.psql(
        "CREATE TABLE it_canary (id int PRIMARY KEY, v text); INSERT INTO it_canary SELECT g, 'row' FROM generate_series(1, 50) g"
    )
    st.conns = []
    yield st
    for conn in st.conns:
        try:
            conn.close()
        except psycopg2.Error:
            pass
    st.remove()


def connect(stack, app):
    conn = psycopg2.connect(
        host="127.0.0.1", port=stack.model["db_port"], dbname="ner11_db", user="postgres",
        password=stack.password, application_name=app, connect_timeout=5,
    )  # fmt: skip
    stack.conns.append(conn)
    return conn


def canary(stack):
    return stack.psql(
        "SELECT (SELECT count(*) FROM it_canary) || '/' || (SELECT count(*) FROM vendor_equipment)"
        " || '/' || (SELECT count(*) FROM threat_intelligence)"
    )


def incident(stack, **extra):
    ev = dict(stack.vars)
    ev.update(COMMON)
    ev.update(extra)
    return run_playbook("playbooks/incident_db.yml", ev, env={"ANSIBLE_SHOW_CUSTOM_STATS": "1"})


def summary(result):
    # Global stats (set_stats per_host false); the service role adds per-host ones beside them.
    stats = result.data.get("global_custom_stats", {}).get("ner11_incident", {})
    assert "localhost" in stats, result.explain()
    return stats["localhost"]


def record_of(stack, summ):
    path = summ["record"]
    assert path.startswith(stack.model["config_dir"] + "/incidents/")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    with open(path) as fh:
        rec = json.load(fh)
    folder = os.path.dirname(path)
    for name in glob.glob(folder + "/*"):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
        with open(name, errors="replace") as fh:
            assert stack.password not in fh.read(), "secret in %s" % name
    assert os.path.exists(os.path.join(folder, "incident.md"))
    for path in rec["evidence"].values():
        assert os.path.exists(path), path
    return rec


def ledger(stack):
    path = os.path.join(stack.model["config_dir"], "ledger.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def client_count(stack):
    return int(stack.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))


def test_the_record_line_takes_the_play_context_and_is_redacted(tmp_path):
    # No stack: ner11.ops.incident_record alone, through its action plugin. The task names neither
    # the job id nor the password; the play's reach the line, and a result holding it is redacted.
    secret = "it-secret-%s" % uuid.uuid4().hex
    path = str(tmp_path / "ledger.jsonl")
    args = {
        "dir": str(tmp_path / "incidents" / "db-1"),
        "files": {"incident.md": "# db-1\n", "api.log": "login failed for %s\n" % secret},
        "ledger": path,
        "ledger_line": {"playbook": "incident_db", "host": "node1", "results": {"note": "dsn with " + secret}},
    }
    play = {"ner11_db_password": secret, "awx_job_id": 808}
    res = run_module("ner11.ops.incident_record", args, check=True, play_vars=play)
    assert not res.get("failed") and res["ledger_line"]["awx_job_id"] == "808" and not os.path.exists(path), res
    res = run_module("ner11.ops.incident_record", args, play_vars=play)
    assert not res.get("failed") and not res["changed"], res
    with open(path) as fh:
        (line,) = [json.loads(text) for text in fh]
    assert line == res["ledger_line"] and line["awx_job_id"] == "808" and line["status"] == "ok", line
    assert line["results"]["note"] == "dsn with (redacted)" and secret not in json.dumps(res), line
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # The record's files are redacted with the play's password the action plugin added.
    assert open(os.path.join(args["dir"], "api.log")).read() == "login failed for (redacted)\n"
    # The four steps of an audit record: check again writes nothing, apply again adds its own line,
    # neither is a change.
    res = run_module("ner11.ops.incident_record", args, check=True, play_vars=play)
    assert not res.get("failed") and not res["changed"] and len(open(path).read().splitlines()) == 1, res
    res = run_module("ner11.ops.incident_record", args, play_vars=play)
    assert not res.get("failed") and not res["changed"] and len(open(path).read().splitlines()) == 2, res


def test_remediate_without_confirm_is_refused(stack):
    res = incident(stack, ner11_confirm="ner11")
    assert res.rc != 0
    assert "ner11_confirm=ner11_db" in res.stdout and res.changed() == 0


def test_pool_exhausted_by_idle_in_transaction_sessions(stack):
    before = canary(stack)
    holders = []
    need = 84 - client_count(stack)
    for number in range(need):
        conn = connect(stack, "it-leak-%d" % number)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM it_canary")
        holders.append(conn)
    time.sleep(2.5)
    held = client_count(stack)
    assert held >= 84

    # diagnose: the branch and the plan, nothing ended.
    diag = incident(stack, ner11_incident_mode="diagnose", awx_job_id=5151)
    assert diag.rc == 0, diag.explain()
    assert diag.changed() == 0, diag.changed_tasks()
    dsum = summary(diag)
    assert dsum["branch"] == "pool_exhausted" and dsum["plan"] == ["terminate_idle_sessions", "restart_api"]
    assert dsum["actions"] == []
    assert client_count(stack) >= held - 2, "diagnose ended sessions"
    drec = record_of(stack, dsum)
    assert drec["mode"] == "diagnose" and drec["health_before"]["checks"]["db:pool"]["status"] == "warn"
    assert drec["timeline"][0]["event"].startswith("incident run started")
    line = ledger(stack)[-1]
    assert line["playbook"] == "incident_db" and line["status"] == "ok" and line["schema"] == 1, line
    assert line["results"]["incident_id"] == drec["id"] and line["results"]["branch"] == "pool_exhausted", line
    # The job id comes from the play (an AWX job's awx_job_id), not from the role.
    assert line["awx_job_id"] == "5151", line
    run = diag.data["global_custom_stats"]["ner11_run"]
    assert run["playbook"] == "incident_db" and run["status"] == "ok" and run["hosts"] == {"localhost": "ok"}, run
    assert run["awx_job_id"] == "5151", run

    res = incident(stack)
    assert res.rc == 0, res.explain()
    summ = summary(res)
    assert summ["branch"] == "pool_exhausted" and summ["resolved"] is True
    assert summ["actions"] == ["terminate_idle_sessions"]  # the pool came back: the API was not restarted
    rec = record_of(stack, summ)
    ended = rec["actions"][0]["result"]["terminated"]
    assert len(ended) >= need - 1
    assert rec["health_before"]["sessions"]["utilisation_percent"] > 80
    assert rec["health_after"]["sessions"]["utilisation_percent"] < 80
    assert rec["health_after"]["status"] != "fail"
    assert os.path.exists(rec["evidence"]["pg_stat_activity_before"])
    line = ledger(stack)[-1]
    assert line["status"] == "changed" and line["results"]["actions"] == ["terminate_idle_sessions"], line
    assert line["results"]["record"].endswith("/incident.json") and line.get("awx_job_id") is None, line
    assert stack.password not in json.dumps(ledger(stack))
    assert sum(1 for c in holders if c.closed or _dead(c)) >= need - 1
    assert canary(stack) == before


def _dead(conn):
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return False
    except psycopg2.Error:
        return True


def test_blocking_lock(stack):
    before = canary(stack)
    holder = connect(stack, "it-holder")
    with holder.cursor() as cur:
        cur.execute("UPDATE it_canary SET v = 'held' WHERE id = 1")
    waiter = connect(stack, "it-waiter")
    outcome = {}

    def wait():
        try:
            with waiter.cursor() as cur:
                cur.execute("UPDATE it_canary SET v = 'row' WHERE id = 1")
            waiter.commit()
            outcome["ok"] = True
        except psycopg2.Error as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(2.5)
    res = incident(stack)
    thread.join(30)
    assert res.rc == 0, res.explain()
    summ = summary(res)
    assert summ["branch"] == "blocked_queries" and summ["actions"] == ["end_blockers"] and summ["resolved"] is True
    rec = record_of(stack, summ)
    assert rec["actions"][0]["result"]["terminated"] == [holder.get_backend_pid()] or rec["actions"][0]["result"]["terminated"]
    pair = rec["health_before"]["sessions"]["blocking"][0]
    assert pair["blocking_query"] == "UPDATE it_canary SET v = ? WHERE id = ?"
    assert outcome == {"ok": True}, outcome
    assert canary(stack) == before


def test_postgres_stopped(stack):
    before = canary(stack)
    docker("stop", stack.container("postgres"))
    records = os.path.join(stack.model["config_dir"], "incidents")
    known = set(os.listdir(records)) if os.path.isdir(records) else set()

    # check mode: measures and plans, writes nothing (no record), starts nothing
    ev = dict(stack.vars)
    ev.update(COMMON)
    planned = run_playbook("playbooks/incident_db.yml", ev, check=True, env={"ANSIBLE_SHOW_CUSTOM_STATS": "1"})
    assert planned.rc == 0, planned.explain()
    psum = summary(planned)
    assert psum["mode"] == "check" and psum["branch"] == "postgres_down" and psum["plan"] == ["start_postgres"]
    assert psum["actions"] == [] and psum["record"] == ""
    # The run's summary of a check-mode remediate: nothing applied, nothing failed (the play passed).
    run = planned.data["global_custom_stats"]["ner11_run"]
    assert run["status"] == "ok" and run["hosts"] == {"localhost": "ok"} and run["failed_hosts"] == [], run
    lines_before = len(ledger(stack))
    assert (set(os.listdir(records)) if os.path.isdir(records) else set()) == known
    assert docker("inspect", "-f", "{{.State.Running}}", stack.container("postgres")).stdout.strip() == "false"

    res = incident(stack)
    assert res.rc == 0, res.explain()
    assert len(ledger(stack)) == lines_before + 1, "check mode wrote a ledger line"
    summ = summary(res)
    assert summ["branch"] == "postgres_down" and summ["actions"] == ["start_postgres"] and summ["resolved"] is True
    assert summ["health_after"] in ("pass", "warn")
    rec = record_of(stack, summ)
    assert "exited" in rec["reason"]
    assert rec["health_before"]["checks"]["db:connect"]["status"] == "fail"
    assert rec["health_after"]["checks"]["api:db"]["status"] == "pass"
    assert canary(stack) == before


# -- API incidents (runbook b.6) on the same stack ---------------------------------------------

API_COMMON = {"ner11_incident_mode": "remediate"}


def api_incident(stack, **extra):
    ev = dict(stack.vars)
    ev.update(API_COMMON)
    ev.update({"ner11_confirm": stack.project, "ner11_backup_dir": stack.model["config_dir"] + "/it-backups"})
    ev.update(extra)
    return run_playbook("playbooks/incident_api.yml", ev, env={"ANSIBLE_SHOW_CUSTOM_STATS": "1"})


def test_api_stopped(stack):
    before = canary(stack)
    docker("stop", stack.container("api"))
    res = api_incident(stack)
    assert res.rc == 0, res.explain()
    summ = summary(res)
    assert summ["kind"] == "api" and summ["branch"] == "api_not_running"
    assert summ["actions"] == ["start_api"] and summ["resolved"] is True
    rec = record_of(stack, summ)
    assert rec["health_before"]["checks"]["api:http"]["status"] == "fail"
    assert rec["health_after"]["checks"]["api:http"]["status"] == "pass"
    assert canary(stack) == before


def pause(container):
    """docker pause; the cgroup v1 freezer can refuse a container that is busy starting: retry."""
    deadline = time.monotonic() + 15
    while docker("pause", container, check=False).returncode != 0:
        assert time.monotonic() < deadline, "docker pause %s keeps failing" % container
        time.sleep(1)


def test_api_paused_hangs(stack):
    pause(stack.container("api"))
    res = api_incident(stack)
    assert res.rc == 0, res.explain()
    summ = summary(res)
    assert summ["branch"] == "api_frozen" and summ["actions"] == ["hard_restart_api"] and summ["resolved"] is True
    rec = record_of(stack, summ)
    crash = rec["evidence"]["api_crash_log"]
    assert os.path.basename(crash).startswith("api_crash_") and os.path.getsize(crash) > 0
    assert rec["actions"][0]["result"]["stack_dump"].startswith("not offered")
    assert "paused" not in docker("inspect", "-f", "{{.State.Status}}", stack.container("api")).stdout


def test_model_corrupted_is_restored_from_the_catalog(stack):
    backup_dir = stack.model["config_dir"] + "/it-backups"
    made = run_module(
        "ner11.ops.artifact_backup", {"kind": "models", "container": stack.container("api"), "backup_dir": backup_dir}
    )
    assert not made.get("failed"), made.get("msg")
    path = "/app/models/ner11-gazetteer/model.json"
    good = docker("exec", stack.container("api"), "sha256sum", path).stdout.split()[0]
    docker("exec", stack.container("api"), "sh", "-c", "printf 'corrupt' >> %s" % path)
    docker("restart", "-t", "30", stack.container("api"))
    wait_http(stack.api_url + "/health", deadline_s=90)

    # diagnose: the branch and the plan; nothing restored or restarted.
    started = docker("inspect", "-f", "{{.State.StartedAt}}", stack.container("api")).stdout
    diag = api_incident(stack, ner11_incident_mode="diagnose", ner11_confirm="")
    assert diag.rc == 0 and diag.changed() == 0, diag.explain()
    assert summary(diag)["branch"] == "model_load_failure"
    assert docker("inspect", "-f", "{{.State.StartedAt}}", stack.container("api")).stdout == started

    res = api_incident(stack)
    assert res.rc == 0, res.explain()
    summ = summary(res)
    assert summ["branch"] == "model_load_failure" and summ["resolved"] is True
    assert summ["actions"] == ["restore_models", "graceful_restart_api"]
    rec = record_of(stack, summ)
    assert rec["actions"][0]["result"]["backup_id"] == made["backup_id"]
    assert any("Model loading failed" in line for line in rec["error_signatures"]["api"])
    assert rec["health_after"]["checks"]["api:model"]["status"] == "pass"
    assert docker("exec", stack.container("api"), "sha256sum", path).stdout.split()[0] == good


# -- disk incident (runbook b.8) on the same stack: a small tmpfs where the stack writes its logs ---


def test_disk_filled_where_the_stack_writes(stack):
    before = canary(stack)
    volumes = sorted(docker("volume", "ls", "-q", "--filter", "label=io.ner11.project=%s" % stack.project).stdout.split())
    logdir = "/var/log/ner11/%s" % stack.project
    os.makedirs(logdir, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", logdir], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, "cannot mount a tmpfs (needs root): %s" % proc.stderr
    try:
        old = time.time() - 40 * 86400
        for i in range(1, 8):
            path = "%s/api_last_session.log.%d.gz" % (logdir, i)
            with open(path, "wb") as fh:
                fh.write(os.urandom(2 * 1024 * 1024))
            os.utime(path, (old - i, old - i))
        with open(logdir + "/api_last_session.log", "wb") as fh:
            fh.write(os.urandom(512 * 1024))
        ev = dict(stack.vars)
        ev.update(
            {
                "ner11_incident_mode": "remediate",
                "ner11_confirm": stack.project,
                "ner11_incident_disks": [logdir],
                # a 16 MiB filesystem is always under the 5 GiB production floor
                "ner11_incident_disk_min_free_gb": 0,
            }
        )
        res = run_playbook("playbooks/incident_disk.yml", ev, env={"ANSIBLE_SHOW_CUSTOM_STATS": "1"})
        assert res.rc == 0, res.explain()
        summ = summary(res)
        assert summ["branch"] == "disk_critical" and summ["actions"] == ["cleanup_disk"] and summ["resolved"] is True
        rec = record_of(stack, summ)
        fs = rec["actions"][0]["result"]["filesystems"][logdir]
        assert fs["before_used_percent"] >= 90 and fs["target_met"] is True and fs["after_free_percent"] >= 20
        # oldest rotated logs first, only as many as the target needs; the active log stays
        # (14.5 MiB of 16 used: one 2 MiB file brings 20 % free)
        assert fs["removed"] == ["%s/api_last_session.log.7.gz" % logdir]
        assert rec["plan_detail"]["filesystems"][logdir]["removed"] == fs["removed"]
        assert os.path.exists(logdir + "/api_last_session.log")
        assert rec["health_after"]["checks"]["disk:" + logdir]["status"] == "pass"
    finally:
        unmount(logdir)
    assert sorted(docker("volume", "ls", "-q", "--filter", "label=io.ner11.project=%s" % stack.project).stdout.split()) == volumes
    assert canary(stack) == before

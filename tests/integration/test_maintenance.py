"""playbooks/maintenance.yml against one real stack (shared by the whole module).

Order matters and is the story of a window: the guard refuses outside the window, check mode
plans and writes nothing, a weekly window runs end to end and again (the idempotent steps
change nothing; a time budget too short for the backup verify skips it and says so), a
quarterly window (the monthly list plus the DR drill) runs with a writer loop through the API
while it stops the writers, VACUUM FULLs, REINDEXes and updates the api to a new image (no
acknowledged write is lost), then two monthly windows whose post-check is forced to fail (test
variable maintenance_test_fail_postcheck): with nothing written since the pin the rollback
restores the pinned backup and runs the api on its previous image ID; with a writer loop
writing after the pin it keeps the data: no restore. The stack model's shm_size and log limits
are read from the engine, and a parallel index build runs in the postgres container (small:
200 000 rows). Costly runs are made once each: the rollback windows skip the backup verify
through the time budget (estimates as extra vars), and the second one, which tests only the
decision on the data, also skips VACUUM FULL and REINDEX and updates no image.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import Stack, docker, run_module, run_playbook, unique_project

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat

STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}
DB = "ner11_db"
PLAYBOOK = "playbooks/maintenance.yml"
# Test hook of the time budget: step estimates (role variable maintenance_step_estimates_s as
# an extra var) under which only the backup verify does not fit a 20-minute budget.
SHORT_BUDGET = {
    "maintenance_step_estimates_s": {
        "vacuum_analyze": 60, "disk_cleanup": 60, "backup_verify": 3600,
        "vacuum_full": 60, "reindex": 60, "image_update": 60, "dr_drill": 60,
    },
}  # fmt: skip


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def build_api_image(tag, generation):
    """A new api image (the reference one plus a label): what an image update brings."""
    # Labelled with the project (the tag's name) so teardown removes every tag of it, also the
    # <repo>:failed-<window> tag a rollback leaves.
    project = tag.split(":")[-1]
    dockerfile = "FROM ner11/ner-api:ref\nLABEL io.ner11.test=1 io.ner11.project=%s io.ner11.generation=%s\n" % (
        project,
        generation,
    )
    proc = subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"], input=dockerfile, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return image_id(tag)


def image_id(ref):
    return docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()


def running_image(container):
    return docker("inspect", "-f", "{{.Image}}", container).stdout.strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    project = unique_project("itm")
    api_tag = "ner11/ner-api:%s" % project
    docker("tag", "ner11/ner-api:ref", api_tag)
    stack = Stack(project)
    stack.vars["ner11_stack"]["services"]["api"]["image"] = api_tag
    from ansible_collections.ner11.ops.plugins.module_utils.stack_model import normalize

    stack.model = normalize(stack.vars["ner11_stack"])
    stack.remove()
    backup_dir = str(tmp_path_factory.mktemp("maint-backups"))
    scratch = str(tmp_path_factory.mktemp("maint-tmp"))
    try:
        res = stack.deploy()
    except BaseException:  # e.g. a deploy timeout on an overloaded machine: leave nothing behind
        stack.remove()
        docker("rmi", api_tag, check=False)
        raise
    if res.rc != 0:
        stack.remove()
        docker("rmi", api_tag, check=False)
        pytest.fail("deploy failed: %s" % res.explain())
    ev = dict(
        stack.vars,
        ner11_backup_dir=backup_dir,
        ner11_force_window=True,
        # Clean a scratch directory only: the test never frees space on the shared machine.
        maintenance_disk_cleanup={"path": scratch, "target_free_percent": 1, "actions": ["tmp_files"], "tmp_paths": [scratch]},
        maintenance_baseline_samples=5,
    )
    yield {"stack": stack, "ev": ev, "backup_dir": backup_dir, "api_tag": api_tag, "project": project}
    stack.remove()
    for ref in set(docker("images", "-q", "--filter", "label=io.ner11.project=%s" % project, check=False).stdout.split()):
        docker("rmi", "-f", ref, check=False)
    docker("rmi", api_tag, check=False)


def state_dir(stack):
    return "%s/maintenance" % stack.model["config_dir"]


def ledger_lines(stack):
    path = "%s/ledger.jsonl" % stack.model["config_dir"]
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path)]


def maint_stats_key(res, key):
    stats = res.custom_stats.get("_run", res.custom_stats)
    return stats[key]


def maint_stats(res):
    return maint_stats_key(res, "ner11_maintenance")


def steps_of(report):
    return {s["name"]: s for s in report["steps"]}


def test_window_guard_refuses_outside_the_window(env):
    stack = env["stack"]
    today = time.strftime("%a", time.gmtime()).lower()
    other = [d for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if d != today][0]
    ev = dict(env["ev"], ner11_force_window=False, ner11_maintenance_window={"weekday": other, "start": "02:00", "end": "06:00"})
    res = run_playbook(PLAYBOOK, ev)
    assert res.rc != 0
    assert "Refused: now" in res.explain() and "outside the maintenance window" in res.explain()
    assert "ner11_force_window=true" in res.explain()
    assert not os.path.exists(state_dir(stack))  # no report, no backup, nothing stopped
    assert os.listdir(env["backup_dir"]) == []
    assert ledger_lines(stack)[-1]["status"] == "refused"


def test_check_mode_plans_every_tier_and_writes_nothing(env):
    stack = env["stack"]
    res = run_playbook(PLAYBOOK, dict(env["ev"], ner11_maintenance_tier="quarterly", ner11_confirm=DB), check=True)
    assert res.rc == 0, res.explain()
    plan = res.task("Show the plan")["msg"]
    assert plan.rstrip().split("Steps in order: ")[1].startswith("stop_writers, pin_backup, vacuum_full, reindex")
    assert "dr_drill" in plan
    assert not os.path.exists(state_dir(stack))
    assert os.listdir(env["backup_dir"]) == []
    # monthly without the confirmation is refused before anything happens
    res = run_playbook(PLAYBOOK, dict(env["ev"], ner11_maintenance_tier="monthly"))
    assert res.rc != 0 and "ner11_confirm=ner11_db" in res.explain()


def test_weekly_window_end_to_end_and_again(env):
    stack = env["stack"]
    t0 = time.monotonic()
    res = run_playbook(PLAYBOOK, env["ev"], env=STATS)
    assert res.rc == 0, res.explain()
    first_s = time.monotonic() - t0
    summary = maint_stats(res)
    assert summary["status"] == "ok" and summary["hosts"] == {"localhost": "ok"}, summary
    window = summary["window"]
    assert window.startswith("weekly-forced-")
    pin = summary["backup_ids"]["localhost"][0]

    report_json = "%s/reports/%s.json" % (state_dir(stack), window)
    report = json.load(open(report_json))
    assert mode(report_json) == 0o600 and mode(os.path.dirname(report_json)) == 0o700
    assert mode("%s/reports/%s.md" % (state_dir(stack), window)) == 0o600
    steps = steps_of(report)
    assert [s["name"] for s in report["steps"]] == ["pin_backup", "vacuum_analyze", "disk_cleanup", "backup_verify"]
    assert all(s["status"] == "ok" for s in report["steps"]), report["steps"]
    assert steps["backup_verify"]["detail"] == "%s: ok" % pin
    assert report["baseline"]["latency_ms_median"] > 0 and report["after"]["db_size_bytes"] > 0
    assert [p["reason"] for p in cat.Catalog(env["backup_dir"]).pins("database", pin)] == ["maintenance window %s" % window]
    line = ledger_lines(stack)[-1]
    assert line["playbook"] == "maintenance" and line["status"] == "ok" and line["window"] == window
    assert line["backup_ids"] == [pin] and line["duration_s"] > 0
    assert stack.password not in open("%s/ledger.jsonl" % stack.model["config_dir"]).read()

    # Again: VACUUM ANALYZE and disk cleanup find nothing to do (changed=false); the pinned
    # backup and the report are per window by design; the first window's pin is released.
    # The time budget: 20 min left is too short for a backup verify estimated at 1 h, so it is
    # not started, and the report and the ledger say so.
    res = run_playbook(PLAYBOOK, dict(env["ev"], ner11_maintenance_budget_s=1200, **SHORT_BUDGET), env=STATS)
    assert res.rc == 0, res.explain()
    again = json.load(open("%s/reports/%s.json" % (state_dir(stack), maint_stats(res)["window"])))
    assert steps_of(again)["vacuum_analyze"]["changed"] is False, again["steps"]
    assert steps_of(again)["disk_cleanup"]["changed"] is False
    assert again["skipped"] == ["backup_verify"] and steps_of(again)["backup_verify"]["status"] == "skipped"
    assert "not started: it would not end 300 s before the end of the window" in steps_of(again)["backup_verify"]["detail"]
    assert ledger_lines(stack)[-1]["results"]["skipped"] == ["backup_verify"]
    state = json.load(open("%s/state.json" % state_dir(stack)))
    assert state["pinned_backup"] == again["pinned_backup"] != pin
    assert cat.Catalog(env["backup_dir"]).pins("database", pin) == []  # released by the next successful window
    print("weekly window: %.1f s (first run)" % first_s)


class Writer(threading.Thread):
    """POST /api/v1/ner in a loop; remembers every acknowledged (HTTP 200) text."""

    def __init__(self, api_url):
        super().__init__(daemon=True)
        self.api_url = api_url
        self.acked = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            text = "Siemens S7 maintenance writer %s-%d" % (uuid.uuid4().hex[:6], n)
            req = urllib.request.Request(
                self.api_url + "/api/v1/ner", data=json.dumps({"text": text}).encode(),
                headers={"Content-Type": "application/json"}, method="POST",
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - 127.0.0.1 only
                    if resp.status == 200:
                        self.acked.append(text)
            except (urllib.error.URLError, OSError):
                self.errors += 1
                time.sleep(0.2)
            time.sleep(0.3)


def assert_no_acked_write_lost(stack, writer):
    quoted = ",".join("'%s'" % t for t in writer.acked)
    stored = int(stack.psql("SELECT count(DISTINCT text) FROM ner_documents WHERE text IN (%s)" % quoted))
    assert stored == len(writer.acked), "acknowledged writes lost: %d of %d stored" % (stored, len(writer.acked))


def run_with_writer(stack, ev):
    writer = Writer(stack.api_url)
    writer.start()
    try:
        res = run_playbook(PLAYBOOK, ev, env=STATS)
    finally:
        time.sleep(2)
        writer.stop.set()
        writer.join(20)
    return res, writer


def test_quarterly_window_with_a_writer_loses_no_acknowledged_write_updates_the_image_and_drills(env):
    # The quarterly tier is the monthly list plus the DR drill: one run covers both.
    stack = env["stack"]
    before = running_image(stack.container("api"))
    new_id = build_api_image(env["api_tag"], "2")
    assert new_id != before
    res, writer = run_with_writer(stack, dict(env["ev"], ner11_maintenance_tier="quarterly", ner11_confirm=DB))
    assert res.rc == 0, res.explain()
    report = json.load(open("%s/reports/%s.json" % (state_dir(stack), maint_stats(res)["window"])))
    assert [s["name"] for s in report["steps"]] == [
        "stop_writers", "pin_backup", "vacuum_full", "reindex", "start_writers",
        "image_update", "disk_cleanup", "backup_verify", "dr_drill",
    ]  # fmt: skip
    assert all(s["status"] == "ok" for s in report["steps"]) and report["skipped"] == [], report["steps"]
    assert report["images_changed"] == ["api"] and report["images_before"]["api"] == before
    assert running_image(stack.container("api")) == new_id
    assert len(writer.acked) > 0 and writer.errors > 0  # the writers were really stopped for a while
    assert_no_acked_write_lost(stack, writer)


def restore_log_backup(stack):
    return stack.psql("SELECT backup_id FROM ner11_ops.restore_log ORDER BY applied_at DESC, id DESC LIMIT 1")


def failing_monthly(env, generation=None, budget=None):
    """A monthly window whose post-check is forced to fail; with ``generation`` a new api image is
    built first (the window updates to it and the rollback must bring the previous one back)."""
    stack = env["stack"]
    previous = running_image(stack.container("api"))
    failing = None
    if generation:
        failing = build_api_image(env["api_tag"], generation)
        assert failing != previous
    ev = dict(
        env["ev"], ner11_maintenance_tier="monthly", ner11_confirm=DB, maintenance_test_fail_postcheck=True,
        ner11_maintenance_budget_s=1200, **(budget or SHORT_BUDGET),
    )  # fmt: skip
    return stack, previous, failing, ev


def assert_rolled_back(env, res, previous, failing, skipped=("backup_verify",)):
    stack = env["stack"]
    assert res.rc != 0
    text = res.explain()
    assert "forced by the test variable" in text
    assert running_image(stack.container("api")) == previous
    if failing:
        assert "api run again on their previous image IDs" in text and previous != failing
        assert image_id(env["api_tag"]) == previous  # the model's reference points back at it
        assert image_id("%s:failed-%s" % (env["api_tag"].rsplit(":", 1)[0], maint_stats(res)["window"])) == failing
    else:
        assert "no image had changed" in text, text
    assert re.search(r"health after the rollback: (pass|ok|warn)\.", text), text
    assert maint_stats(res)["status"] == "rolled_back"
    report = json.load(open("%s/reports/%s.json" % (state_dir(stack), maint_stats(res)["window"])))
    assert report["status"] == "rolled_back" and report["skipped"] == list(skipped), report["skipped"]
    return text, report


def test_rollback_restores_the_pin_when_nothing_was_written_since(env):
    # The writers are stopped at the pin; the api runs again only for the post-check, which
    # writes nothing: the fingerprint taken at the pin still matches, so the pin is restored.
    stack, previous, failing, ev = failing_monthly(env, "3")
    docs = stack.psql("SELECT count(*) FROM ner_documents")
    res = run_playbook(PLAYBOOK, ev, env=STATS)
    text, report = assert_rolled_back(env, res, previous, failing)
    pin = report["pinned_backup"]
    assert "the pinned backup %s was restored" % pin in text, text
    assert report["restored_pin"] is True and report["written_since_pin"] == []
    assert restore_log_backup(stack) == pin  # pg_restore applied this window's pin
    # The data is the pin's: its manifest's canary row counts, and the documents as before.
    counts = {t: int(n) for t, n in cat.Catalog(env["backup_dir"]).read_manifest("database", pin)["row_counts"].items()}
    assert counts and {t: int(stack.psql("SELECT count(*) FROM %s" % t)) for t in counts} == counts
    assert stack.psql("SELECT count(*) FROM ner_documents") == docs
    line = ledger_lines(stack)[-1]
    assert line["status"] == "rolled_back" and line["results"]["restored_pin"] is True


def test_rollback_keeps_the_data_when_a_write_happened_after_the_pin(env):
    # A writer loop through the API writes after start_writers, so after the pin: the rollback
    # does not restore (it would destroy those writes) and says what was written. The image
    # rollback is proven above; here no image changes, and the time budget skips the database
    # steps too (the decision on the data is what this window tests).
    budget = dict(SHORT_BUDGET["maintenance_step_estimates_s"], vacuum_full=3600, reindex=3600)
    stack, previous, failing, ev = failing_monthly(env, budget={"maintenance_step_estimates_s": budget})
    applied = restore_log_backup(stack)
    res, writer = run_with_writer(stack, ev)
    text, report = assert_rolled_back(env, res, previous, failing, skipped=("vacuum_full", "reindex", "backup_verify"))
    assert "the data was left as it is, writes kept" in text and "was restored" not in text, text
    assert report["restored_pin"] is False
    assert any("public.ner_documents" in reason for reason in report["written_since_pin"]), report["written_since_pin"]
    assert restore_log_backup(stack) == applied  # no restore ran
    assert len(writer.acked) > 0
    assert_no_acked_write_lost(stack, writer)
    assert ledger_lines(stack)[-1]["results"]["restored_pin"] is False


def test_log_limits_and_shm_size_reach_the_containers_and_a_parallel_index_build_passes(env):
    stack = env["stack"]
    pg = json.loads(docker("inspect", stack.container("postgres")).stdout)[0]["HostConfig"]
    assert pg["ShmSize"] == 256 * 1024**2
    assert pg["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "100m", "max-file": "5"}}
    api = json.loads(docker("inspect", stack.container("api")).stdout)[0]["HostConfig"]
    assert api["LogConfig"]["Config"] == {"max-size": "50m", "max-file": "3"}
    # Small on purpose (200 000 rows): the parallel build must get its workers' shared memory.
    out = stack.psql(
        "DROP TABLE IF EXISTS it_shm; CREATE TABLE it_shm AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g;"
        " SET max_parallel_maintenance_workers = 2; SET min_parallel_table_scan_size = 0; SET maintenance_work_mem = '64MB';"
        " CREATE INDEX it_shm_h ON it_shm (h); SELECT count(*) FROM it_shm; DROP TABLE it_shm;"
    )
    assert out.splitlines()[-1] in ("200000", "DROP TABLE") or "200000" in out


def test_run_ledger_four_steps(tmp_path):
    # An audit record, not managed state: never a change; check mode writes nothing; every apply
    # records its own run (one line each).
    path = str(tmp_path / "led" / "ledger.jsonl")
    args = {"path": path, "playbook": "backup", "host": "localhost", "status": "changed", "backup_ids": ["db-1"]}
    for check, lines in ((True, 0), (False, 1), (True, 1), (False, 2)):
        res = run_module("ner11.ops.run_ledger", args, check=check)
        assert not res.get("failed") and res["changed"] is False and res["line"]["backup_ids"] == ["db-1"], res
        assert (res["bytes"] > 0) is not check, res
        assert (len(open(path).read().splitlines()) if os.path.exists(path) else 0) == lines, (check, lines)


def test_run_ledger_module_fallback_gets_the_same_play_context(tmp_path):
    # A host where the one-command append cannot run (here an interpreter wrapper that refuses the
    # command's -S; modules still run): the action plugin hands the line to the module, with the
    # options it completed from the play (the job id, the password to redact).
    secret = "it-secret-" + uuid.uuid4().hex
    path = str(tmp_path / "ledger.jsonl")
    wrapper = tmp_path / "python"
    wrapper.write_text('#!/bin/sh\n[ "$1" = -S ] && exit 3\nexec %s "$@"\n' % sys.executable)
    wrapper.chmod(0o755)
    args = {"path": path, "playbook": "health", "host": "localhost", "results": {"note": "dsn with " + secret}}
    play = {"ansible_python_interpreter": str(wrapper), "ner11_db_password": secret, "tower_job_id": 52}
    res = run_module("ner11.ops.run_ledger", args, play_vars=play)
    assert not res.get("failed") and res["ledger_writer"] == "module", res
    line = json.loads(open(path).read().splitlines()[-1])
    assert line["awx_job_id"] == "52" and line["results"]["note"] == "dsn with (redacted)", line
    assert secret not in open(path).read() and secret not in json.dumps(res)


def test_the_ledger_play_every_playbook_imports_writes_a_redacted_line_and_a_global_summary(tmp_path):
    # No stack needed: the play only reads the stack model for the ledger's place.
    ev = {
        "ner11_stack": {"project": "itledger", "config_dir": str(tmp_path / "cfg")},
        "ner11_ledger_playbook": "health",
        "ner11_db_password": "it-secret-" + uuid.uuid4().hex,
        "ner11_ledger_results": {"note": "a careless message"},
        "awx_job_id": 77,
    }
    ev["ner11_ledger_results"]["note"] += " with " + ev["ner11_db_password"]
    res = run_playbook("playbooks/parts/run_ledger.yml", ev, env=STATS)
    assert res.rc == 0, res.explain()
    path = tmp_path / "cfg" / "ledger.jsonl"
    assert mode(str(path)) == 0o600 and mode(str(tmp_path / "cfg")) == 0o700
    line = json.loads(path.read_text().splitlines()[-1])
    assert line["playbook"] == "health" and line["host"] == "localhost" and line["awx_job_id"] == "77"
    assert ev["ner11_db_password"] not in path.read_text() and "(redacted)" in line["results"]["note"]
    # Written by the action plugin's one command on the host, not by the module fallback.
    assert res.task("Append the run to the ledger")["ledger_writer"] == "command"
    summary = maint_stats_key(res, "ner11_run")
    assert summary["status"] == "ok" and summary["hosts"] == {"localhost": "ok"} and summary["awx_job_id"] == "77"
    # Every playbook of the collection ends with it (maintenance and the dr playbooks write their own line).
    root = os.path.join(os.path.dirname(__file__), "..", "..", "playbooks")
    for name in sorted(os.listdir(root)):
        if name.endswith(".yml") and name not in ("maintenance.yml", "dr_restore.yml", "dr_drill.yml", "awx_configure.yml"):
            if name.startswith("incident_"):
                continue  # the incident role writes its record's ledger line
            if name in ("health.yml", "startup.yml"):
                continue  # the health check writes the line itself (test_health); the startup role (test_startup)
            assert "import_playbook: parts/run_ledger.yml" in open(os.path.join(root, name)).read(), name

"""restore.yml killed (kill -9 of the whole job) at every phase, then run again (issue 9).

The module's test-only hook (NER11_OPS_TEST_PAUSE_AT=<phase>, docs/restore.md
"Interrupted restores") pauses the run at a named phase; the test kills the
ansible-playbook process group there, checks what was left, and runs restore.yml
again: it repairs first, then completes. One stack for the module; a bulk table
(pg_restore phase) makes pg_restore run long enough to be killed while it works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import BIN, LOCAL_INVENTORY, ROOT, Stack, ansible_env, docker, run_playbook, unique_project
from test_restore import DB, counts, databases, raw_backup

STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}


@pytest.fixture(scope="module")
def stack():
    made = Stack(unique_project("itki"))
    made.remove()
    result = made.deploy()
    assert result.rc == 0, result.explain()
    yield made
    made.remove()


def in_container(stack, script):
    return docker("exec", "-u", "0", stack.container("postgres"), "sh", "-c", script, check=False).stdout


def stage_dirs(stack):
    return in_container(stack, "ls -d /tmp/ner11-restore-* 2>/dev/null").split()


def restore_clients(stack):
    return in_container(stack, "pgrep -f '^pg_restore' || true").split()


def allow_conn(stack, db=DB):
    return stack.psql("SELECT datallowconn FROM pg_database WHERE datname = '%s'" % db, db="postgres")


def killed_run(stack, ev, phase, pause_dir):
    """Start restore.yml paused at ``phase``; kill -9 its whole process group once it is there."""
    marker = os.path.join(pause_dir, phase)
    if os.path.exists(marker):
        os.unlink(marker)
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", LOCAL_INVENTORY, os.path.join(ROOT, "playbooks/restore.yml")]
    env = ansible_env({"NER11_OPS_TEST_PAUSE_AT": phase, "NER11_OPS_TEST_PAUSE_DIR": pause_dir})
    proc = subprocess.Popen(
        cmd + ["-e", json.dumps(ev)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while not os.path.exists(marker):
            assert proc.poll() is None, "restore.yml ended before reaching phase %s" % phase
            assert time.monotonic() < deadline, "phase %s not reached" % phase
            time.sleep(0.05)
        running = restore_clients(stack) if phase == "pg_restore" else []
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # The whole job is gone: no process of its group survived on this machine.
    deadline = time.monotonic() + 10
    while True:
        survivors = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == proc.pid]
        if not survivors or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert survivors == [], survivors
    return running


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.parametrize("phase", ["copy", "connections", "drop", "pg_restore"])
def test_killed_at_each_phase_the_next_run_repairs_and_completes(stack, tmp_path_factory, phase):
    backup_dir = str(tmp_path_factory.mktemp("catalog"))
    pause_dir = str(tmp_path_factory.mktemp("pause"))
    if phase == "pg_restore":
        # A bulk table keeps pg_restore busy for a few seconds, so it is killed at work (last phase:
        # the other phases restore without it).
        stack.psql("CREATE TABLE it_bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 400000) g")
        stack.psql("ALTER TABLE it_bulk ADD PRIMARY KEY (id)")
    backup = raw_backup(stack, backup_dir, fmt="directory")
    before = counts(stack)
    stack.psql("DELETE FROM vendor_equipment WHERE id = (SELECT max(id) FROM vendor_equipment)")
    ev = dict(stack.vars, ner11_backup_dir=backup_dir, ner11_backup_id=backup, ner11_confirm=DB, ner11_restore_backup_first=False)

    running = killed_run(stack, ev, phase, pause_dir)
    left = databases(stack)
    if phase in ("copy", "pg_restore"):
        assert stage_dirs(stack) and "ner11_db__ner11_restore" in left
        if phase == "pg_restore":
            assert running, "pg_restore had already finished: the bulk table is too small to kill it at work"
    if phase == "connections":
        assert allow_conn(stack) == "f" and "ner11_db__ner11_restore" in left
    if phase == "drop":
        assert any(d.startswith("ner11_db__ner11_old_") for d in left), left
        assert counts(stack) == before  # already the new content

    res = run_playbook("playbooks/restore.yml", ev, env=STATS)
    assert res.rc == 0, res.explain()
    summary = res.custom_stats.get("localhost", res.custom_stats)["ner11_restore"]
    summary = summary.get("localhost", summary)  # the global summary is keyed by host
    assert summary["repaired"], summary
    assert summary["leftovers"] == []
    assert allow_conn(stack) == "t"
    assert counts(stack) == before
    assert not any("__ner11" in d for d in databases(stack)), databases(stack)
    assert stage_dirs(stack) == [] and restore_clients(stack) == []
    assert summary["health"] == "pass"

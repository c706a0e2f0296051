"""disk_cleanup on a real filled filesystem: a small tmpfs (this machine's root may mount one)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
from conftest import run_module, unmount

MB = 1024 * 1024


@pytest.fixture
def tmpfs():
    path = "/tmp/ner11-it-disk-%s" % uuid.uuid4().hex[:8]
    os.makedirs(path)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        os.rmdir(path)
        pytest.fail("cannot mount a tmpfs for the test (needs root): %s" % proc.stderr)
    try:
        yield path
    finally:
        unmount(path)
        os.rmdir(path)


def fill(path, name, size, age_days):
    full = os.path.join(path, name)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as fh:
        fh.write(os.urandom(size))
    then = time.time() - age_days * 86400
    os.utime(full, (then, then))
    return full


def test_docker_actions_never_touch_another_filesystem(tmpfs):
    fill(tmpfs, "big.bin", 7 * MB, 0)
    res = run_module("ner11.ops.disk_cleanup", {"path": tmpfs, "actions": ["stopped_containers", "dangling_images"]})
    assert res["changed"] is False and res["freed_bytes"] == 0
    assert all("another filesystem" in a["skipped"] for a in res["actions"].values())


def test_four_steps_on_a_full_tmpfs(tmpfs):
    for i in range(1, 4):
        fill(tmpfs, "logs/app.log.%d.gz" % i, 2 * MB, 40 + i)  # rotated, old
    fill(tmpfs, "logs/app.log", 1 * MB, 60)  # the active log: never
    fill(tmpfs, "tmp/old.bin", 512 * 1024, 30)  # an old temporary file
    fill(tmpfs, "tmp/app.pid", 4096, 30)  # never
    args = {
        "path": tmpfs,
        "target_free_percent": 40,
        "actions": ["tmp_files", "rotated_logs", "stopped_containers"],
        "tmp_paths": [tmpfs + "/tmp"],
        "log_paths": [tmpfs + "/logs"],
    }
    plan = run_module("ner11.ops.disk_cleanup", args, check=True)
    assert not plan.get("failed"), plan.get("msg")
    assert plan["changed"] is True and plan["before"]["used_percent"] > 85
    items = [c["item"] for action in args["actions"] for c in plan["actions"][action].get("candidates", [])]
    # in the order of the actions, oldest first, and no more than the target needs
    assert items == [tmpfs + "/tmp/old.bin", tmpfs + "/logs/app.log.3.gz", tmpfs + "/logs/app.log.2.gz"]
    assert all(os.path.exists(p) for p in items), "check mode removed a file"
    assert plan["actions"]["stopped_containers"]["skipped"] == "target already met"

    done = run_module("ner11.ops.disk_cleanup", args)
    assert done["changed"] is True and done["target_met"] is True
    assert done["freed_bytes"] == plan["freed_bytes"] and done["after"]["free_percent"] >= 40
    assert sorted(os.listdir(tmpfs + "/logs")) == ["app.log", "app.log.1.gz"]
    assert os.listdir(tmpfs + "/tmp") == ["app.pid"]

    again_plan = run_module("ner11.ops.disk_cleanup", args, check=True)
    again = run_module("ner11.ops.disk_cleanup", args)
    assert again_plan["changed"] is False and again["changed"] is False and again["freed_bytes"] == 0

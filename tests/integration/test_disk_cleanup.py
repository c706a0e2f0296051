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


def data_trees(base):
    """A PostgreSQL data directory, a published backup and a backup being written under ``base``,
    old files named like rotated logs in each (1.5 MiB in all); the trees' paths."""
    fill(base, "pgdata/PG_VERSION", 3, 400)
    fill(base, "pgdata/base/16384/24576.1", 512 * 1024, 90)  # a table segment
    fill(base, "backups/database/20260101T000000Z/manifest.json", 200, 90)
    fill(base, "backups/database/20260101T000000Z/dump/3456.dat.gz", 512 * 1024, 90)  # a directory-dump member
    fill(base, "backups/database/.partial-20260102T000000Z/x.sql.gz", 512 * 1024, 90)  # a plain dump in progress
    return sorted(
        base + p for p in ("/pgdata", "/backups/database/20260101T000000Z", "/backups/database/.partial-20260102T000000Z")
    )


def test_data_trees_under_the_roots_are_never_touched(tmpfs):
    expected = data_trees(tmpfs + "/logs") + data_trees(tmpfs + "/tmp")
    fill(tmpfs, "logs/app.log.1.gz", 1 * MB, 40)  # the one real candidate
    fill(tmpfs, "logs/app.log", 1 * MB, 60)
    data = sorted(os.path.join(d, f) for d, _s, files in os.walk(tmpfs) for f in files if "app.log" not in f)
    args = {
        "path": tmpfs,
        "target_free_percent": 90,  # unreachable: every candidate is taken
        "actions": ["tmp_files", "rotated_logs"],
        "tmp_paths": [tmpfs + "/tmp"],
        # the whole filesystem as a log root, as the incident role once did
        "log_paths": [tmpfs, tmpfs + "/logs"],
    }
    for check in (True, False):
        res = run_module("ner11.ops.disk_cleanup", args, check=check)
        assert not res.get("failed"), res.get("msg")
        items = [c["item"] for a in res["actions"].values() for c in a["candidates"]]
        assert items == [tmpfs + "/logs/app.log.1.gz"] and res["changed"] is True
        protected = sorted({p["item"] for a in res["actions"].values() for p in a["protected"]})
        assert protected == sorted(expected)
        assert res["docker_data_root"]  # the engine's answer, or /var/lib/docker
    assert sorted(os.path.join(d, f) for d, _s, files in os.walk(tmpfs) for f in files if "app.log" not in f) == data
    assert not os.path.exists(tmpfs + "/logs/app.log.1.gz")


def test_a_removal_that_fails_is_a_warning_not_a_change(tmpfs):
    old = fill(tmpfs, "logs/app.log.1.gz", 6 * MB, 40)
    subprocess.run(["mount", "-o", "remount,ro", tmpfs], check=True)
    # (check mode would report changed: the unit tests show it; here the real module's warning)
    args = {"path": tmpfs, "target_free_percent": 90, "actions": ["rotated_logs"], "log_paths": [tmpfs + "/logs"]}
    res = run_module("ner11.ops.disk_cleanup", args)
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] is False and res["freed_bytes"] == 0 and res["target_met"] is False
    assert res["actions"]["rotated_logs"]["candidates"] == []
    [error] = res["actions"]["rotated_logs"]["errors"]
    assert old in error and "read-only" in error and "remount it read-write" in error
    assert [w for w in res.get("warnings", []) if old in w and "read-only" in w]
    assert os.path.exists(old)

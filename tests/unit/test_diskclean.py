"""Unit tests of plugins/module_utils/diskclean.py (disk_cleanup core) on a real tmp directory.

The filesystem numbers come from a fake ``stat_fn`` (a small disk whose free space grows by what
was deleted), the files are real; the docker actions get a fake runner answering like the CLI.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import diskclean as D

NOW = time.time()
DAY = 86400


def make(path, size, age_days):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"x" * size)
    os.utime(path, (NOW - age_days * DAY, NOW - age_days * DAY))
    return path


class Disk:
    """A 1 MiB disk whose free space follows the bytes of the files under root."""

    def __init__(self, root, total=1024 * 1024):
        self.root = root
        self.total = total

    def used(self):
        n = 0
        for dirpath, _d, files in os.walk(self.root):
            for f in files:
                n += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
        return n

    def __call__(self, path):
        free = self.total - self.used()
        return self.total, free, round(100.0 * (self.total - free) / self.total, 1)


@pytest.fixture
def tree(tmp_path):
    logs = tmp_path / "log"
    tmp = tmp_path / "tmp"
    make(str(logs / "api.log"), 100_000, 90)  # active log: never removed
    make(str(logs / "api.log.1"), 200_000, 40)
    make(str(logs / "api.log.2.gz"), 200_000, 60)
    make(str(logs / "old-20260101.gz"), 100_000, 10)  # too young
    make(str(tmp / "scratch.bin"), 200_000, 30)
    make(str(tmp / "app.lock"), 100_000, 30)  # never
    make(str(tmp / "fresh.bin"), 50_000, 1)  # too young
    os.symlink(str(tmp / "scratch.bin"), str(tmp / "link"))
    return tmp_path


def params(tree, **kw):
    p = {
        "path": str(tree),
        "tmp_paths": [str(tree / "tmp")],
        "log_paths": [str(tree / "log")],
        "actions": ["tmp_files", "rotated_logs"],
        "target_free_percent": 20,
    }
    p.update(kw)
    return p


def test_check_mode_is_the_exact_plan_and_removes_nothing(tree):
    disk = Disk(str(tree))
    before = disk.used()
    out = D.run(params(tree, target_free_percent=80), check_mode=True, now=NOW, stat_fn=disk)
    assert disk.used() == before
    tmp = [c["item"] for c in out["actions"]["tmp_files"]["candidates"]]
    logs = [c["item"] for c in out["actions"]["rotated_logs"]["candidates"]]
    assert tmp == [str(tree / "tmp" / "scratch.bin")]
    assert logs == [str(tree / "log" / "api.log.2.gz"), str(tree / "log" / "api.log.1")]  # oldest first
    assert "rotated log, 60 day(s) old" in out["actions"]["rotated_logs"]["candidates"][0]["why"]
    assert out["changed"] is True and out["freed_bytes"] >= 600_000


def test_stops_as_soon_as_the_target_is_met_then_second_run_is_unchanged(tree):
    disk = Disk(str(tree))
    # 850 kB used of 1 MiB: 20 % free needs about 50 kB more -> the temporary file is enough.
    out = D.run(params(tree), check_mode=False, now=NOW, stat_fn=disk)
    assert [c["item"] for c in out["actions"]["tmp_files"]["candidates"]] == [str(tree / "tmp" / "scratch.bin")]
    assert out["actions"]["rotated_logs"]["skipped"] == "target already met"
    assert out["target_met"] is True and out["after"]["free_percent"] >= 20
    assert os.path.exists(tree / "log" / "api.log.1") and os.path.exists(tree / "tmp" / "app.lock")
    again = D.run(params(tree), check_mode=False, now=NOW, stat_fn=disk)
    assert again["changed"] is False and again["freed_bytes"] == 0


def test_overlapping_roots_list_each_file_once(tree):
    out = D.run(
        params(tree, log_paths=[str(tree), str(tree / "log")], target_free_percent=99),
        check_mode=True,
        now=NOW,
        stat_fn=Disk(str(tree)),
    )
    items = [c["item"] for c in out["actions"]["rotated_logs"]["candidates"]]
    assert len(items) == len(set(items)) == 2


def test_never_active_logs_locks_symlinks_or_protected_paths(tree):
    disk = Disk(str(tree))
    out = D.run(
        params(tree, target_free_percent=99, protect=[str(tree / "log" / "api.log.1")]), check_mode=False, now=NOW, stat_fn=disk
    )
    left = sorted(os.listdir(tree / "log")) + sorted(os.listdir(tree / "tmp"))
    assert left == ["api.log", "api.log.1", "old-20260101.gz", "app.lock", "fresh.bin", "link"]
    assert out["target_met"] is False


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"path": "relative"}, "absolute"),
        ({"target_free_percent": 0}, "between 0 and 100"),
        ({"actions": ["volumes"]}, "volumes are never cleaned"),
        ({"tmp_paths": ["/"]}, "other than /"),
        ({"log_age_days": -1}, "0 or more"),
    ],
)
def test_bad_input(tree, bad, message):
    with pytest.raises(D.CleanupError, match=message):
        D.validate(params(tree, **bad))


class FakeDocker:
    def __init__(self, root):
        self.calls = []
        self.root = root

    def __call__(self, argv):
        self.calls.append(argv[1:])
        args = argv[1:]
        if args[0] == "info":
            return 0, self.root + "\n", ""
        if args[:2] == ["ps", "-a"] and "--size" in args:
            rows = [
                {
                    "ID": "a1",
                    "Names": "itx-api-1",
                    "Labels": "io.ner11.project=itx,io.ner11.service=api",
                    "Size": "1kB",
                    "Status": "Exited (0)",
                },
                {
                    "ID": "b2",
                    "Names": "olddemo",
                    "Labels": "com.docker.compose.project=demo",
                    "Size": "25kB (virtual 100MB)",
                    "Status": "Exited (1)",
                },
                {"ID": "c3", "Names": "keepme", "Labels": "", "Size": "1MB", "Status": "Created"},
            ]
            return 0, "\n".join(json.dumps(r) for r in rows), ""
        if args[:2] == ["image", "ls"]:
            return 0, "sha256:old\nsha256:young\nsha256:used\n", ""
        if args[:2] == ["ps", "-a"]:
            return 0, "sha256:used\nner11/postgres:ref\n", ""
        if args[:2] == ["image", "inspect"]:
            old = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 100 * 3600))
            young = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 3600))
            return 0, json.dumps([
                {"Id": "sha256:old", "Created": old + ".1Z", "Size": 300},
                {"Id": "sha256:young", "Created": young + ".1Z", "Size": 300},
                {"Id": "sha256:used", "Created": old + ".1Z", "Size": 300},
            ]), ""  # fmt: skip
        if args[0] in ("rm", "rmi"):
            return 0, "", ""
        return 1, "", "unexpected %s" % args


def test_docker_actions_spare_the_stack_protected_used_and_young(tree):
    runner = FakeDocker(str(tree))
    out = D.run(
        params(tree, actions=["stopped_containers", "dangling_images"], target_free_percent=99, protect=["keep*"], protect_projects=["itx"]),
        check_mode=False, runner=runner, now=NOW, stat_fn=Disk(str(tree), total=10 * 1024**2),
    )  # fmt: skip
    assert [c["item"] for c in out["actions"]["stopped_containers"]["candidates"]] == ["olddemo"]
    assert out["actions"]["stopped_containers"]["candidates"][0]["size_bytes"] == 25_000
    assert [c["item"] for c in out["actions"]["dangling_images"]["candidates"]] == ["sha256:old"]
    assert ["rm", "b2"] in runner.calls and ["rmi", "sha256:old"] in runner.calls
    assert not [c for c in runner.calls if "volume" in c or "prune" in c]


def test_docker_actions_skipped_when_the_data_root_is_elsewhere(tree):
    runner = FakeDocker("/proc")
    out = D.run(
        params(tree, actions=["stopped_containers"], target_free_percent=99),
        check_mode=True,
        runner=runner,
        stat_fn=Disk(str(tree)),
    )
    assert "on another filesystem" in out["actions"]["stopped_containers"]["skipped"]
    assert out["changed"] is False

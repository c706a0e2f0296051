"""Unit tests of plugins/module_utils/diskclean.py (disk_cleanup core) on a real tmp directory.

The filesystem numbers come from a fake ``stat_fn`` (a small disk whose free space grows by what
was deleted), the files are real; the docker actions get a fake runner answering like the CLI.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
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


# -- protected trees: PostgreSQL data, backups, Docker's data root (never entered, whatever the roots) --


def protected_trees(base, docker=False):
    """Under ``base``: a PG data dir, a backup entry, a backup being written and one being deleted
    (and a docker-root stand-in), each with old files named like rotated logs. Their paths."""
    base = str(base)
    make(base + "/pgdata/PG_VERSION", 3, 400)
    make(base + "/pgdata/base/1/1234.1", 8192, 90)  # a table segment
    make(base + "/pgdata/pg_wal/000000010000000000000001", 8192, 90)
    make(base + "/backups/database/20260101T000000Z/manifest.json", 100, 90)
    make(base + "/backups/database/20260101T000000Z/dump/3456.dat.gz", 8192, 90)  # directory-dump member
    make(base + "/backups/database/20260101T000000Z/x.sql.gz", 8192, 90)  # plain dump
    make(base + "/backups/database/.partial-20260102T000000Z/dump/3457.dat.gz", 8192, 90)
    make(base + "/backups/database/.deleting-20251201T000000Z/x.sql.gz", 8192, 90)
    out = [
        base + "/backups/database/.deleting-20251201T000000Z",
        base + "/backups/database/.partial-20260102T000000Z",
        base + "/backups/database/20260101T000000Z",
        base + "/pgdata",
    ]
    if docker:
        make(base + "/docker/volumes/v1/_data/app.log.1", 8192, 90)  # inside a volume
        make(base + "/docker/overlay2/abc/diff/var/log/syslog.2.gz", 8192, 90)  # a container filesystem
        out.insert(0, base + "/docker")
    return out


def all_files(root):
    return sorted(os.path.join(d, f) for d, _s, files in os.walk(str(root)) for f in files)


def protected_of(out):
    return sorted(p["item"] for a in out["actions"].values() for p in a.get("protected", []))


@pytest.mark.parametrize("check_mode", [True, False], ids=["check", "apply"])
@pytest.mark.parametrize("docker_side", ["log", "tmp"])
def test_protected_trees_are_never_candidates_and_are_reported(tree, check_mode, docker_side):
    expected = protected_trees(tree / "log", docker_side == "log") + protected_trees(tree / "tmp", docker_side == "tmp")
    docker_root = str(tree / docker_side / "docker")
    files = all_files(tree)
    out = D.run(
        params(tree, target_free_percent=99),
        check_mode=check_mode,
        now=NOW,
        stat_fn=Disk(str(tree)),
        docker_root=docker_root,
    )
    assert out["docker_data_root"] == docker_root
    items = [c["item"] for a in out["actions"].values() for c in a["candidates"]]
    # the ordinary candidates only, as without the protected trees
    assert items == [str(tree / "tmp" / "scratch.bin"), str(tree / "log" / "api.log.2.gz"), str(tree / "log" / "api.log.1")]
    assert out["changed"] is True
    assert protected_of(out) == sorted(expected)
    why = {p["item"]: p["why"] for a in out["actions"].values() for p in a["protected"]}
    assert "PostgreSQL data directory (holds PG_VERSION)" in why[str(tree / "log" / "pgdata")]
    assert "a backup (holds manifest.json)" in why[str(tree / "tmp" / "backups/database/20260101T000000Z")]
    assert "backup being written or deleted (.partial-*)" in why[str(tree / "log" / "backups/database/.partial-20260102T000000Z")]
    assert "Docker's data root" in why[docker_root]
    gone = set(files) - set(all_files(tree))
    assert gone == (set() if check_mode else set(items))


def test_the_engines_data_root_and_a_root_inside_it(tree):
    expected = protected_trees(tree / "log", docker=True)
    runner = FakeDocker(str(tree / "log" / "docker"))  # docker info answers the stand-in
    volume = str(tree / "log" / "docker" / "volumes" / "v1" / "_data")
    out = D.run(
        params(tree, target_free_percent=99, actions=["rotated_logs"], log_paths=[str(tree / "log"), volume]),
        check_mode=False,
        runner=runner,
        now=NOW,
        stat_fn=Disk(str(tree)),
    )
    assert ["info", "--format", "{{.DockerRootDir}}"] in runner.calls
    assert out["docker_data_root"] == str(tree / "log" / "docker")
    assert protected_of(out) == sorted(expected)  # the volume root is reported as inside the data root
    assert [c["item"] for c in out["actions"]["rotated_logs"]["candidates"]] == [
        str(tree / "log" / "api.log.2.gz"),
        str(tree / "log" / "api.log.1"),
    ]
    assert os.path.exists(volume + "/app.log.1")


def test_a_root_inside_a_protected_tree_is_not_walked(tree):
    protected_trees(tree / "log")
    pg = tree / "log" / "pgdata"
    out = D.run(
        params(
            tree,
            target_free_percent=99,
            log_paths=[str(pg / "base"), str(tree / "log" / "backups/database/20260101T000000Z/dump")],
            tmp_paths=[str(pg)],
        ),
        check_mode=False,
        now=NOW,
        stat_fn=Disk(str(tree)),
        docker_root=str(tree / "nowhere"),
    )
    assert out["changed"] is False and out["freed_bytes"] == 0
    assert [p["item"] for p in out["actions"]["tmp_files"]["protected"]] == [str(pg)]
    assert sorted(p["item"] for p in out["actions"]["rotated_logs"]["protected"]) == [
        str(tree / "log" / "backups/database/20260101T000000Z"),
        str(pg),
    ]
    assert os.path.exists(pg / "base/1/1234.1")


def test_without_a_docker_client_the_default_data_root_is_assumed(tree):
    def runner(argv, **kwargs):  # a real attempt to run a client that does not exist
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    out = D.run(
        params(tree, docker_cli=str(tree / "no-such-docker")), check_mode=True, runner=runner, now=NOW, stat_fn=Disk(str(tree))
    )
    assert out["docker_data_root"] == D.DOCKER_ROOT
    with pytest.raises(D.CleanupError, match="cannot run the docker client .*no-such-docker.*set docker_cli"):
        D.run(
            params(tree, docker_cli=str(tree / "no-such-docker"), actions=["stopped_containers"], target_free_percent=99),
            check_mode=True,
            runner=runner,
            stat_fn=Disk(str(tree)),
        )


def test_a_removal_that_fails_is_no_change_and_names_the_file(tree):
    victim = str(tree / "tmp" / "scratch.bin")
    if os.geteuid() == 0:  # root ignores permissions: an immutable file (ext4, xfs, btrfs, tmpfs)
        lock, unlock = ["chattr", "+i", victim], ["chattr", "-i", victim]
    else:
        lock, unlock = ["chmod", "0500", str(tree / "tmp")], ["chmod", "0700", str(tree / "tmp")]
    proc = subprocess.run(lock, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("cannot make %s undeletable here: %s" % (victim, proc.stderr.strip()))
    try:
        plan = D.run(params(tree, actions=["tmp_files"]), check_mode=True, now=NOW, stat_fn=Disk(str(tree)))
        out = D.run(params(tree, actions=["tmp_files"]), check_mode=False, now=NOW, stat_fn=Disk(str(tree)))
    finally:
        subprocess.run(unlock, check=True)
    assert plan["changed"] is True  # would remove it
    assert out["changed"] is False and out["freed_bytes"] == 0
    assert out["actions"]["tmp_files"]["candidates"] == []
    [error] = out["actions"]["tmp_files"]["errors"]
    assert error.startswith("could not remove %s (tmp_files): Operation not permitted" % victim) or ("Permission denied" in error)
    assert "become: true" in error and os.path.exists(victim)


def test_a_file_replaced_after_the_plan_is_not_removed(tree):
    device = os.stat(str(tree)).st_dev
    [item] = D.file_candidates("tmp_files", [str(tree / "tmp")], 7, device, [], NOW)
    os.rename(make(item["item"] + ".new", 10, 30), item["item"])  # same name, another file (inode)
    with pytest.raises(OSError) as exc:
        D.remove("tmp_files", item, None)
    assert "replaced since the plan" in str(exc.value) and os.path.exists(item["item"])
    assert "run the cleanup again" in D.removal_error("tmp_files", item, exc.value)
    # the directory swapped for a symlink to another tree after a fresh plan is not followed
    [item] = D.file_candidates("tmp_files", [str(tree / "tmp")], 7, device, [], NOW)
    os.rename(str(tree / "tmp"), str(tree / "elsewhere"))
    os.symlink(str(tree / "elsewhere"), str(tree / "tmp"))
    with pytest.raises(OSError) as exc:
        D.remove("tmp_files", item, None)
    assert exc.value.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.exists(tree / "elsewhere" / "scratch.bin")


def test_messages_name_no_gap_codes(tree):
    out = D.run(params(tree, target_free_percent=99), check_mode=True, now=NOW, stat_fn=Disk(str(tree)))
    text = json.dumps(out)
    for bad in ({"path": "relative"}, {"target_free_percent": 0}, {"actions": ["volumes"]}, {"tmp_paths": ["/"]}):
        with pytest.raises(D.CleanupError) as exc:
            D.validate(params(tree, **bad))
        text += str(exc.value)
    assert not re.search(r"\bG[0-9]{1,2}\b", text)
    (tree / "pgdata").mkdir()
    (tree / "pgdata" / "PG_VERSION").write_text("15\n")
    (tree / "bk").mkdir()
    (tree / "bk" / "manifest.json").write_text("{}")
    (tree / "PG_15_202209061").mkdir()
    reasons = [D.protected_reason(str(tree / d)) for d in ("pgdata", "bk", "PG_15_202209061", ".partial-x")]
    assert all(reasons) and not re.search(r"\bG[0-9]{1,2}\b", " ".join(reasons))

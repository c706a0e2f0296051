"""Damaged catalog files never lose a backup and never end in a traceback (real files in a temp dir)."""

import datetime
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import retention

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T0 = datetime.datetime(2026, 1, 1, 2, 0, tzinfo=datetime.timezone.utc)
POLICY = retention.validate_policy(keep_daily=1, keep_weekly=0, keep_monthly=0, keep_min=1, keep_manual_days=0)


def _publish(c, backup_id, created, kind="database", pins=None, patch=None):
    partial = c.begin(kind, backup_id)
    with open(os.path.join(partial, "dump.pgdump"), "wb") as fh:
        fh.write(b"x" * 10)
    source = {"db_name": "app", "host": "h1", "instance": "container:db"}
    manifest = {"created_at": cat.isoformat(created), "files": cat.hash_tree(partial), "source": source, "period": "daily"}
    manifest["size_bytes"] = 10
    final = c.publish(kind, backup_id, manifest, pins=pins)
    if patch:  # a manifest changed by hand (or by a broken tool) after publication
        path = os.path.join(final, cat.MANIFEST)
        with open(path) as fh:
            data = json.load(fh)
        data.update(patch)
        with open(path, "w") as fh:
            json.dump(data, fh)
    return final


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def _two_backups(tmp_path):
    c = cat.Catalog(str(tmp_path))
    old = _publish(c, "db-1", T0)
    _publish(c, "db-2", T0 + datetime.timedelta(days=1))
    return c, old


DAMAGED_PINS = [
    '{"pins": [{"reason": "legal hold", "keep_until": "2099-01-01T00:00:00Z"',  # truncated by a full disk
    '{"pins": [{"reason": "legal hold", "keep_until": "2099-01-01T00:00:00+00:00"}]}',  # not the catalog's UTC form
    '{"pins": [{"reason": "legal hold", "keep_until": "2099-01-01 00:00"}]}',  # naive
    '{"pins": [{"reason": "legal hold", "keep_until": 5}]}',
    '{"pins": [{"keep_until": 5}]}',
    '{"pins": [{"reason": 7, "keep_until": "2099-01-01T00:00:00Z"}]}',
    '{"pins": "abc"}',
    '{"pins": [1]}',
    '{"pins": {"a": 1}}',
    "[1]",
    "{}",
    "\xff\xfe",
]


@pytest.mark.parametrize("content", DAMAGED_PINS)
def test_a_damaged_pins_file_keeps_the_backup_through_months_of_pruning(tmp_path, content):
    c, old = _two_backups(tmp_path)
    _write(os.path.join(old, cat.PINS), content)
    assert cat.effective_keep_until(c.pins("database", "db-1")) is None  # never raises
    for month in range(1, 13):  # a year of monthly prune runs: the policy alone would delete db-1 at once
        now = T0 + datetime.timedelta(days=30 * month)
        planned = retention.prune_catalog(c, "database", POLICY, check_mode=True, now=now)
        done = retention.prune_catalog(c, "database", POLICY, now=now)
        for result in (planned, done):
            assert result["deleted"] == [] and result["delete_errors"] == {}
            reasons = " ".join(result["kept"]["db-1"])
            assert "pins.json of db-1 is unreadable: fix or remove it" in reasons
            assert os.path.join(old, cat.PINS) in reasons
            assert any("pins.json of db-1 is unreadable" in w for w in result["damaged"])
        assert os.path.isdir(old)
    # Fixed by a human: the backup follows the policy again.
    os.unlink(os.path.join(old, cat.PINS))
    done = retention.prune_catalog(c, "database", POLICY, now=T0 + datetime.timedelta(days=400))
    assert done["deleted"] == ["db-1"] and done["damaged"] == [] and not os.path.exists(old)


def test_an_unreadable_pins_file_keeps_the_backup(tmp_path):
    c, old = _two_backups(tmp_path)
    os.mkdir(os.path.join(old, cat.PINS))  # a read error (EISDIR) that root cannot bypass
    done = retention.prune_catalog(c, "database", POLICY, now=T0 + datetime.timedelta(days=90))
    assert done["deleted"] == [] and "pins.json of db-1 is unreadable" in " ".join(done["kept"]["db-1"])


@pytest.mark.parametrize("content", DAMAGED_PINS)
@pytest.mark.parametrize("state", ["present", "absent"])
def test_pinning_refuses_to_overwrite_a_damaged_pins_file(tmp_path, content, state):
    c, old = _two_backups(tmp_path)
    path = os.path.join(old, cat.PINS)
    _write(path, content)
    with pytest.raises(cat.CatalogError, match="pins.json of db-1 is unreadable: fix or remove it"):
        cat.apply_pin(c, "database", "db-1", "30d", "pre-maintenance", state)
    with pytest.raises(cat.CatalogError, match="never overwrites"):
        c.plan_pin("database", "db-1", "30d", "pre-maintenance", state)
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        assert fh.read() == content


def test_backup_pin_module_fails_with_the_message(tmp_path):
    c, old = _two_backups(tmp_path)
    _write(os.path.join(old, cat.PINS), '{"pins": "abc"}')
    args = {"backup_dir": str(tmp_path), "backup_id": "db-1", "keep_until": "30d", "reason": "r"}
    out = _run_module(tmp_path, "backup_pin", args)
    assert out["failed"] is True and "pins.json of db-1 is unreadable: fix or remove it" in out["msg"]
    assert "Traceback" not in json.dumps(out)


def _run_module(tmp_path, name, args):
    """The real module in a subprocess, as Ansible runs it (arguments in a JSON file)."""
    pytest.importorskip("ansible")  # the module imports ansible-core; make units39 has no ansible
    args_file = tmp_path / ("%s-args.json" % name)
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections"))
    proc = subprocess.run(  # noqa: S603 - the module under test
        [sys.executable, "-m", "ansible_collections.ner11.ops.plugins.modules.%s" % name, str(args_file)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=str(tmp_path),
    )
    return json.loads(proc.stdout)


def test_backup_prune_module_warns_and_keeps(tmp_path):
    c, old = _two_backups(tmp_path)
    _write(os.path.join(old, cat.PINS), "{")
    args = {"backup_dir": str(tmp_path), "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_manual_days": 0}
    out = _run_module(tmp_path, "backup_prune", args)
    assert out["deleted"] == [] and os.path.isdir(old) and "failed" not in out
    assert "pins.json of db-1 is unreadable: fix or remove it" in json.dumps(out["warnings"])  # shown as a warning


WRONG_MANIFESTS = [
    {"files": [{"path": 1, "size": 10, "sha256": "x"}]},
    {"files": [{"path": "dump.pgdump", "size": "10", "sha256": "x"}]},
    {"files": [{"path": "dump.pgdump", "size": True, "sha256": "x"}]},
    {"source": "x"},
    {"source": ["a"]},
    {"source": {"host": "h1", "db_name": 5}},
    {"source": {"host": "h1", "paths": "abc"}},
    {"size_bytes": "1"},
    {"toc_entries": "12"},
    {"jobs": "abc"},
    {"row_counts": [1]},
    {"row_counts": {"t": "many"}},
    {"row_counts_after": "x"},
    {"canary_tables": "vendor_equipment"},
    {"artifact": 1},
    {"period": 3},
    {"contents": [1]},
]


@pytest.mark.parametrize("patch", WRONG_MANIFESTS)
def test_a_wrong_typed_manifest_is_skipped_with_a_warning_and_the_rest_still_list(tmp_path, patch):
    c = cat.Catalog(str(tmp_path))
    _publish(c, "db-1", T0)
    bad = _publish(c, "db-2", T0 + datetime.timedelta(days=1), patch=patch)
    _publish(c, "db-3", T0 + datetime.timedelta(days=2))
    assert [m["backup_id"] for m in c.list("database")] == ["db-1", "db-3"]
    assert c.latest("database", db_name="app")["backup_id"] == "db-3"
    errors = {i: e for i, m, e in c.entries("database") if m is None}
    assert list(errors) == ["db-2"] and "manifest of backup database/db-2 is invalid" in errors["db-2"]
    assert {r["backup_id"]: r["state"] for r in c.records("database")} == {"db-1": "good", "db-2": "unverified", "db-3": "good"}
    assert c.verify("database", "db-2") == [errors["db-2"]]
    with pytest.raises(cat.CatalogError, match="is invalid"):
        c.read_manifest("database", "db-2")
    done = retention.prune_catalog(c, "database", POLICY, now=T0 + datetime.timedelta(days=60))
    assert done["deleted"] == ["db-1"] and done["unverified"] == ["db-2"] and os.path.isdir(bad)
    assert any("db-2 is invalid" in w and "fix or remove" in w for w in done["damaged"])


@pytest.mark.parametrize(
    "record",
    [{"confirmations": "abc"}, {"confirmed_at": 5}, {"confirmed_at": "2026-01-02T00:00:00Z", "confirmations": -1}, [1], "{"],
)
def test_a_wrong_typed_freshness_record_counts_as_not_confirmed(tmp_path, record):
    c, old = _two_backups(tmp_path)
    _write(os.path.join(old, cat.FRESHNESS), record if isinstance(record, str) else json.dumps(record))
    assert c.freshness("database", "db-1") is None
    rec = c.records("database")[0]
    assert rec["freshness"] is None and "counts as not confirmed current" in rec["damaged"][cat.FRESHNESS]
    written = c.record_freshness("database", "db-1", "abc", "h1", now=T0)
    assert written["confirmations"] == 1 and c.freshness("database", "db-1") == written


@pytest.mark.parametrize(
    "record",
    [{"status": "failed", "history": 5}, {"verified_at": "x", "status": "ok", "history": "abc"}, {"status": 1}, [5]],
)
def test_a_wrong_typed_verify_record_is_reported_and_replaced(tmp_path, record):
    c, old = _two_backups(tmp_path)
    _write(os.path.join(old, cat.VERIFY_RECORD), json.dumps(record))
    # The result is unknown: counted as failed (the safe direction), never picked, never pruned.
    assert c.verification("database", "db-1") is None and c.verification_failed("database", "db-1")
    assert [m["backup_id"] for m in c.list("database")] == ["db-2"]
    assert c.records("database")[0]["state"] == "failed"
    assert "verify.json of db-1 is unreadable" in c.records("database")[0]["damaged"][cat.VERIFY_RECORD]
    done = retention.prune_catalog(c, "database", POLICY, check_mode=False, now=T0 + datetime.timedelta(days=400))
    assert any("verify.json of db-1" in w for w in done["damaged"]) and "db-1" not in done["deleted"]
    assert os.path.isdir(old)
    written = c.record_verification("database", "db-1", "ok", ["sha256"], [], now=T0)
    assert written["history"] == [] and c.verification("database", "db-1") == written
    assert not c.verification_failed("database", "db-1")


def test_effective_keep_until_ignores_wrong_types():
    assert cat.effective_keep_until("abc") is None
    assert cat.effective_keep_until([1, {"keep_until": 5}, None]) is None


def test_a_failed_removal_is_reported_and_the_next_run_cleans_it(tmp_path, monkeypatch):
    c, old = _two_backups(tmp_path)
    doomed = os.path.join(c.kind_dir("database"), ".deleting-db-1")

    def rmtree_fails(path, *args, **kwargs):
        # Injected: a file that cannot be removed (EACCES on an NFS export, EIO) cannot be made
        # for real here - the tests run as root, who may delete in any directory.
        raise PermissionError(13, "Permission denied", os.path.join(path, "dump.pgdump"))

    monkeypatch.setattr(cat.shutil, "rmtree", rmtree_fails)
    done = retention.prune_catalog(c, "database", POLICY, now=T0 + datetime.timedelta(days=30))
    assert done["deleted"] == ["db-1"] and done["changed"] is True and done["freed_bytes"] == 0
    message = done["delete_errors"]["db-1"]
    assert "out of the catalog" in message and "rm -rf %s" % doomed in message and "Permission denied" in message
    assert os.path.isdir(doomed) and not os.path.exists(old)
    assert [m["backup_id"] for m in c.list("database")] == ["db-2"]
    monkeypatch.undo()
    planned = retention.prune_catalog(c, "database", POLICY, check_mode=True, now=T0 + datetime.timedelta(days=31))
    assert planned["cleaned"] == [".deleting-db-1"] and planned["changed"] is True and os.path.isdir(doomed)
    again = retention.prune_catalog(c, "database", POLICY, now=T0 + datetime.timedelta(days=31))
    assert again["cleaned"] == [".deleting-db-1"] and not os.path.exists(doomed)
    assert sorted(os.listdir(c.kind_dir("database"))) == [".lock", "db-2"]


def test_clean_stale_partials_removes_deleting_leftovers_at_any_age(tmp_path):
    c = cat.Catalog(str(tmp_path))
    leftover = os.path.join(c.kind_dir("database", create=True), ".deleting-db-9")
    os.makedirs(os.path.join(leftover, "dump"))
    young = c.begin("database", "db-10")
    assert c.clean_stale_partials("database", grace_s=3600) == [leftover]
    assert not os.path.exists(leftover) and os.path.isdir(young)


def test_prune_fails_for_the_backup_whose_rename_fails(tmp_path, monkeypatch):
    c, old = _two_backups(tmp_path)

    def rename_fails(src, dst):
        # Injected: a read-only directory is not read-only for root, who runs these tests.
        raise OSError(30, "Read-only file system", src)

    monkeypatch.setattr(cat.os, "rename", rename_fails)
    done = retention.prune_catalog(c, "database", POLICY, now=T0 + datetime.timedelta(days=30))
    message = done["delete_errors"]["db-1"]
    assert "cannot delete backup db-1" in message and "Read-only file system" in message
    assert "check free space and permissions on %s" % c.kind_dir("database") in message
    assert os.path.isdir(old)


def test_kind_dir_is_made_private_but_an_existing_backup_dir_is_left_alone(tmp_path):
    shared = tmp_path / "shared"
    (shared / "database").mkdir(parents=True)
    os.chmod(str(shared), 0o755)  # noqa: S103 - the user's shared directory, as found on real hosts
    os.chmod(str(shared / "database"), 0o755)  # noqa: S103 - left wide by an older tool
    c = cat.Catalog(str(shared))
    with c.lock("database"):
        pass
    assert stat.S_IMODE(os.stat(str(shared)).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(str(shared / "database")).st_mode) == 0o700
    fresh = cat.Catalog(str(tmp_path / "new" / "backups"))
    path = fresh.kind_dir("volume", create=True)
    assert stat.S_IMODE(os.stat(fresh.root).st_mode) == 0o700 and stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_a_catalog_that_cannot_be_written_fails_with_the_path_and_the_fix(tmp_path):
    c, old = _two_backups(tmp_path)
    # Real failures a root test can make: a directory where a file must go (EISDIR / EEXIST).
    os.mkdir(os.path.join(old, ".%s.tmp-%d" % (cat.PINS, os.getpid())))
    with pytest.raises(cat.CatalogError, match="check free space and permissions on %s" % old):
        cat.apply_pin(c, "database", "db-1", "30d", "pre-maintenance")
    lock = os.path.join(c.kind_dir("database"), cat.LOCK_FILE)
    os.unlink(lock)
    os.mkdir(lock)
    with pytest.raises(cat.CatalogError, match="cannot open the catalog lock: .*check free space and permissions"):
        cat.apply_pin(c, "database", "db-1", "30d", "pre-maintenance")
    with pytest.raises(cat.CatalogError, match="cannot open the catalog lock"):
        retention.prune_catalog(c, "database", POLICY)
    blocked = cat.Catalog(str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(cat.CatalogError, match="cannot prepare the catalog directory: .*check free space and permissions"):
        blocked.lock("database").__enter__()


def test_os_error_message_names_the_path_and_the_fix():
    exc = OSError(28, "No space left on device", "/b/database/.lock")
    text = cat.os_error_message(exc, "/b/database")
    assert text == (
        "cannot write the backup catalog: /b/database/.lock: No space left on device; "
        "check free space and permissions on /b/database"
    )
    assert "check free space and permissions on /b" in cat.os_error_message(OSError("boom"), "/b")


def test_valid_records_and_manifests_are_unchanged(tmp_path):
    c = cat.Catalog(str(tmp_path))
    pins = cat.new_backup_pins("14d", "before upgrade", T0, "pinned")
    _publish(c, "db-1", T0, pins=pins)
    c.record_verification("database", "db-1", "ok", ["sha256"], [], now=T0)
    c.record_freshness("database", "db-1", "abc", "h1", now=T0)
    rec = c.records("database")[0]
    assert rec["damaged"] == {} and rec["pins"] == pins and rec["state"] == "good"
    assert cat.record_problem(cat.PINS, {"pins": []}) is None
    shutil.rmtree(c.path("database", "db-1"))

"""pg_backup and backup_verify under review findings: pins, a full or read-only catalog, damaged manifests, ``all``.

Against the scripted server (pg_double): real catalog files, scripted docker/psql answers.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import time

import pg_double
import pytest
from pg_double import TOC, ScriptedServer

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import pgbackup as pb
from ansible_collections.ner11.ops.plugins.module_utils import pgbackup_verify as ver

COUNTS = {"public.t": 3, "vendor_equipment": 5}
NOW = datetime.datetime(2026, 11, 29, 2, 0, 0, tzinfo=datetime.timezone.utc)


def _params(tmp_path, **extra):
    return pg_double.backup_params(tmp_path, COUNTS, **extra)


def _run(tmp_path, now=NOW, check_mode=False, server=None, **extra):
    return pb.PgBackup(_params(tmp_path, **extra), server or ScriptedServer(COUNTS), check_mode=check_mode, now=now).run()


def _kind_entries(tmp_path):
    kind = tmp_path / "b" / "database"
    return sorted(p.name for p in kind.iterdir() if p.name != ".lock") if kind.exists() else []


def _later_clock(monkeypatch, seconds=2):
    """created_at is taken after the plan: emulate a plan that ends ``seconds`` after the module started."""
    monkeypatch.setattr(cat, "utcnow", lambda: NOW + datetime.timedelta(seconds=seconds))


# -- 1 and 6: a relative keep_until is counted from created_at; check mode returns the pins -----------
def test_relative_keep_until_counts_from_created_at_so_a_rerun_changes_nothing(tmp_path, monkeypatch):
    _later_clock(monkeypatch)
    planned = _run(tmp_path, check_mode=True, keep_until="8d")
    assert planned["changed"] is True and planned["pins"] == planned["plan"]["pins"]
    assert [p["keep_until"] for p in planned["pins"]] == ["2026-12-07T02:00:00Z"]  # from now: the backup is not made yet

    first = _run(tmp_path, keep_until="8d")
    created = first["manifest"]["created_at"]
    assert first["changed"] is True and created == "2026-11-29T02:00:02Z"
    assert first["pins"] == [{"reason": pb.PIN_REASON, "keep_until": "2026-12-07T02:00:02Z", "pinned_at": created}]
    assert first["pins"] == cat.Catalog(str(tmp_path / "b")).pins("database", first["backup_id"]) == first["plan"]["pins"]

    # the same period, the same keep_until: nothing moves (before the fix the pin moved by 2 s: changed)
    for later in (5, 6):
        again = _run(tmp_path, now=NOW + datetime.timedelta(minutes=later), keep_until="8d")
        assert again["changed"] is False and again["backup_id"] == first["backup_id"], again["pins"]
        assert again["pins"] == first["pins"]
    check = _run(tmp_path, now=NOW + datetime.timedelta(minutes=7), check_mode=True, keep_until="8d")
    assert check["changed"] is False and check["pins"] == first["pins"]
    # another keep_until moves the pin (counted from created_at too), once
    longer = _run(tmp_path, now=NOW + datetime.timedelta(minutes=8), keep_until="30d")
    assert longer["changed"] is True and longer["pins"][0]["keep_until"] == "2026-12-29T02:00:02Z"
    assert _run(tmp_path, now=NOW + datetime.timedelta(minutes=9), keep_until="30d")["changed"] is False


def test_check_mode_without_keep_until_returns_empty_pins(tmp_path):
    planned = _run(tmp_path, check_mode=True)
    assert planned["pins"] == [] and not os.path.exists(str(tmp_path / "b" / "database"))


# -- 3: a full disk or read-only catalog is a plain failure, nothing left behind ---------------------
def _enospc(path, *_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_a_full_disk_at_publish_fails_plainly_and_leaves_nothing(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(cat, "atomic_write", _enospc)
    extra = {"format": fmt, "login_password": "s3cret"} if fmt == "directory" else {}
    job = pb.PgBackup(_params(tmp_path, keep_until="8d", **extra), ScriptedServer(COUNTS), now=NOW)
    with pytest.raises(pb.PgBackupError) as info:
        job.run()
    msg = str(info.value)
    assert "No space left on device" in msg and "manifest.json" in msg and msg.endswith("nothing was published")
    assert "check free space and permissions on %s" % (tmp_path / "b") in msg
    assert "Traceback" not in msg and job.wrote is False
    assert _kind_entries(tmp_path) == []  # the partial was discarded


def test_a_read_only_catalog_at_the_lock_fails_plainly(tmp_path, monkeypatch):
    def read_only(self):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.path)

    monkeypatch.setattr(cat._KindLock, "__enter__", read_only)
    job = pb.PgBackup(_params(tmp_path), ScriptedServer(COUNTS), now=NOW)
    with pytest.raises(pb.PgBackupError, match="Read-only file system; check free space and permissions on ") as info:
        job.run()
    assert os.path.join("database", ".lock") in str(info.value) and job.wrote is False


def test_a_partial_directory_that_cannot_be_made_fails_plainly(tmp_path, monkeypatch):
    def begin(self, kind, backup_id):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), self.partial_path(kind, backup_id))

    monkeypatch.setattr(cat.Catalog, "begin", begin)
    with pytest.raises(pb.PgBackupError, match=r"\.partial-my-db-20261129T020000Z: Permission denied; check free space"):
        _run(tmp_path)
    assert _kind_entries(tmp_path) == []


def test_a_signal_file_that_cannot_be_written_aborts_the_sidecar_at_once(tmp_path, monkeypatch):
    touch = pb._touch

    def refuse_counted(path):
        if path.endswith(pb.SIGNAL_COUNTED):
            _enospc(path)
        touch(path)

    monkeypatch.setattr(pb, "_touch", refuse_counted)
    server = ScriptedServer(COUNTS)
    server.toc = TOC + ";     Dumped by pg_dump version: 15.4 (Debian 15.4-2)\n"
    started = time.monotonic()
    with pytest.raises(pb.PgBackupError, match=r"\.ner11-counted: No space left on device; check free space"):
        _run(tmp_path, server=server, format="directory", login_password="s3cret")
    assert time.monotonic() - started < 30  # the sidecar read the abort file, it did not wait for the counts
    assert not any(tool.startswith("pg_dump ") for tool in server.sidecar_tools)  # no dump began
    assert _kind_entries(tmp_path) == []


def test_a_failed_fsync_after_the_rename_says_the_backup_is_published(tmp_path, monkeypatch):
    kind_dir = str(tmp_path / "b" / "database")
    fsync = cat.fsync_path

    def fail_on_kind_dir(path):
        if path == kind_dir:
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        fsync(path)

    monkeypatch.setattr(cat, "fsync_path", fail_on_kind_dir)
    job = pb.PgBackup(_params(tmp_path), ScriptedServer(COUNTS), now=NOW)
    with pytest.raises(pb.PgBackupError, match="was published at .* but its last step failed: verify it"):
        job.run()
    assert job.wrote is True  # the module reports changed=true
    assert _kind_entries(tmp_path) == ["my-db-20261129T020000Z"]


def test_a_pin_that_cannot_be_written_on_the_existing_backup_changes_nothing(tmp_path, monkeypatch):
    first = _run(tmp_path, keep_until="8d")
    monkeypatch.setattr(cat, "atomic_write", _enospc)
    job = pb.PgBackup(_params(tmp_path, keep_until="30d"), ScriptedServer(COUNTS), now=NOW)
    with pytest.raises(pb.PgBackupError, match="the pins of backup %s were not changed$" % first["backup_id"]) as info:
        job.run()
    assert "No space left on device" in str(info.value) and "check free space and permissions on" in str(info.value)
    assert job.wrote is False
    assert cat.Catalog(str(tmp_path / "b")).pins("database", first["backup_id"]) == first["pins"]


# -- 4: a damaged manifest is a verification failure, not a traceback --------------------------------
def _damage(made, **fields):
    path = os.path.join(made["path"], "manifest.json")
    with open(path) as fh:
        manifest = json.load(fh)
    manifest.update(fields)
    with open(path, "w") as fh:
        json.dump(manifest, fh)


# (catalog.read_manifest checks these types too: whichever layer finds it, it is a failed backup with a message)
@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"toc_entries": "5"}, "toc_entries is '5'"),
        ({"jobs": "x"}, "jobs is 'x'"),
        ({"artifact": "../../etc/passwd"}, "artifact is '../../etc/passwd'"),
        ({"row_counts": {"public.t": "3"}}, "row_counts is {'public.t': '3'}"),
        ({"source": "host1"}, "source is "),
    ],
)
def test_a_damaged_manifest_fails_verification_with_a_plain_message(tmp_path, fields, needle):
    made = _run(tmp_path)
    _damage(made, **fields)
    params = {"backup_dir": str(tmp_path / "b"), "container": "pg1", "max_age_hours": 0}
    result = ver.BackupVerifier(params, ScriptedServer(COUNTS), now=NOW).run()
    assert result["status"] == "failed" and result["backups"][0]["status"] == "failed"
    (error,) = result["backups"][0]["errors"]
    assert needle in error and ("manifest is damaged" in error or "is invalid" in error), error


def test_a_damaged_file_size_fails_verification_with_a_plain_message(tmp_path):
    made = _run(tmp_path)
    files = [dict(f, size=str(f["size"])) for f in made["manifest"]["files"]]
    _damage(made, files=files)
    result = ver.BackupVerifier({"backup_dir": str(tmp_path / "b"), "max_age_hours": 0}, None, now=NOW).run()
    (error,) = result["backups"][0]["errors"]
    assert result["status"] == "failed" and "'305'" in error and "whole number" in error, error


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"toc_entries": "5"}, "toc_entries is '5' (text), expected a whole number"),
        ({"jobs": "x"}, "jobs is 'x' (text), expected a whole number of 1 or more"),
        ({"artifact": "/etc/passwd"}, "artifact is '/etc/passwd' (text), expected a file name inside the backup"),
        ({"row_counts": {"public.t": "3"}}, "row_counts is {'public.t': '3'} (an object), expected an object of table"),
        ({"compression": 5}, "compression is 5 (a number), expected text"),
        ({"files": [{"path": "x", "size": "5", "sha256": "ab"}]}, "the files entry 'x' (text) has size '5' (text)"),
    ],
)
def test_damaged_fields_name_the_field_its_value_and_what_was_expected(tmp_path, fields, needle):
    made = _run(tmp_path)
    assert ver.damaged_fields(made["manifest"]) == []
    (problem,) = ver.damaged_fields(dict(made["manifest"], **fields))
    assert problem.startswith(needle), problem
    message = ver.damage_message([problem])
    assert message.startswith("the manifest is damaged: ") and "make a new one (playbooks/backup.yml)" in message


def test_a_test_restore_of_a_damaged_manifest_restores_nothing(tmp_path):
    made = _run(tmp_path)
    server = ScriptedServer(COUNTS)
    params = {"backup_dir": str(tmp_path / "b"), "container": "pg1", "test_restore": True}
    out = ver.BackupVerifier(params, server, now=NOW).test_restore(dict(made["manifest"], jobs="x"))
    (error,) = out["errors"]
    assert "jobs is 'x' (text)" in error and error.endswith("nothing was restored")
    assert server.lines() == []  # not even a connection
    out = ver.BackupVerifier(params, server, now=NOW).test_restore({k: v for k, v in made["manifest"].items() if k != "format"})
    assert "format is missing" in out["errors"][0] and server.lines() == []


# -- 5: the option ``all`` ---------------------------------------------------------------------------
def test_all_is_read_and_excludes_backup_id(tmp_path):
    first = _run(tmp_path, period="manual")
    _run(tmp_path, now=NOW + datetime.timedelta(seconds=1), period="manual")
    base = {"backup_dir": str(tmp_path / "b"), "max_age_hours": 0}

    def verified(**extra):
        return [b["backup_id"] for b in ver.BackupVerifier(dict(base, **extra), None, now=NOW).run()["backups"]]

    assert len(verified()) == len(verified(all=True)) == 2
    assert verified(backup_id=first["backup_id"]) == verified(backup_id=first["backup_id"], all=False) == [first["backup_id"]]
    with pytest.raises(pb.PgBackupError, match="all=true and backup_id exclude each other: drop backup_id"):
        verified(backup_id=first["backup_id"], all=True)
    with pytest.raises(pb.PgBackupError, match="all=false needs backup_id: name the backup to verify"):
        verified(all=False)


def test_verify_reports_an_unwritable_record_as_a_failure(tmp_path, monkeypatch):
    made = _run(tmp_path)
    monkeypatch.setattr(cat, "atomic_write", _enospc)
    result = ver.BackupVerifier({"backup_dir": str(tmp_path / "b"), "max_age_hours": 0}, None, now=NOW).run()
    assert result["status"] == "failed" and result["changed"] is False
    (error,) = result["backups"][0]["errors"]
    assert "could not record the result" in error and "No space left on device" in error and made["backup_id"]

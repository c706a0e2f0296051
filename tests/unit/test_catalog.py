import datetime
import json
import os
import stat

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _publish(c, kind="database", backup_id="db-20261129T020000Z", created="2026-11-29T02:00:00Z", data=b"x" * 100):
    partial = c.begin(kind, backup_id)
    _write(os.path.join(partial, "dump", "toc.dat"), data)
    manifest = {"created_at": created, "files": cat.hash_tree(partial), "source": {"db_name": "ner11_db"}, "period": "daily"}
    return c.publish(kind, backup_id, manifest)


def test_publish_makes_a_verified_private_backup(tmp_path):
    c = cat.Catalog(str(tmp_path))
    final = _publish(c)
    assert os.path.basename(final) == "db-20261129T020000Z"
    assert not any(n.startswith(cat.PARTIAL_PREFIX) for n in os.listdir(c.kind_dir("database")))
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(final, "dump", "toc.dat")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(final, "manifest.json")).st_mode) == 0o600
    manifest = json.load(open(os.path.join(final, "manifest.json")))
    assert manifest["schema"] == cat.SCHEMA and manifest["status"] == "verified"
    assert c.verify("database", "db-20261129T020000Z") == []
    assert [m["backup_id"] for m in c.list("database", db_name="ner11_db")] == ["db-20261129T020000Z"]
    assert c.list("database", db_name="other") == []


def test_partials_and_broken_entries_are_never_listed(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish(c)
    c.begin("database", "db-20261130T020000Z")  # a run that died
    os.makedirs(os.path.join(c.kind_dir("database"), "db-20261201T020000Z"))  # no manifest
    assert [m["backup_id"] for m in c.list("database")] == ["db-20261129T020000Z"]
    errors = [e for _i, m, e in c.entries("database") if m is None]
    assert errors and "has no manifest" in errors[0]


def test_stale_partials_are_cleaned_after_the_grace_period(tmp_path):
    c = cat.Catalog(str(tmp_path))
    partial = c.begin("database", "db-20261130T020000Z")
    assert c.clean_stale_partials("database", grace_s=3600) == []
    assert c.clean_stale_partials("database", grace_s=3600, now=os.stat(partial).st_mtime + 3601) == [partial]
    assert not os.path.exists(partial)


def test_verify_names_the_flipped_file(tmp_path):
    c = cat.Catalog(str(tmp_path))
    final = _publish(c)
    path = os.path.join(final, "dump", "toc.dat")
    data = bytearray(open(path, "rb").read())
    data[10] ^= 0x01
    open(path, "wb").write(bytes(data))
    assert c.verify("database", "db-20261129T020000Z") == ["dump/toc.dat: sha256 mismatch"]
    os.unlink(path)
    assert c.verify("database", "db-20261129T020000Z") == ["dump/toc.dat: missing"]


def test_publish_refuses_files_changed_after_hashing(tmp_path):
    c = cat.Catalog(str(tmp_path))
    partial = c.begin("database", "b1")
    _write(os.path.join(partial, "a"), b"one")
    manifest = {"created_at": "2026-11-29T02:00:00Z", "files": cat.hash_tree(partial)}
    _write(os.path.join(partial, "a"), b"two")
    with pytest.raises(cat.CatalogError, match="changed after it was verified"):
        c.publish("database", "b1", manifest)
    assert c.list("database") == []


@pytest.mark.parametrize("bad", ["../etc", "a/b", ".hidden", "", "x" * 200, None, "a..b"])
def test_backup_ids_cannot_escape(bad):
    with pytest.raises(cat.CatalogError, match="invalid backup id"):
        cat.validate_backup_id(bad)


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    c = cat.Catalog(str(tmp_path))
    with c.lock("database"):
        with pytest.raises(cat.CatalogLocked, match="another database backup is running .*pid=%d" % os.getpid()):
            with c.lock("database"):
                pass
    with c.lock("database"):
        pass


def test_period_keys():
    dt = datetime.datetime(2026, 1, 1, 3, 0, tzinfo=datetime.timezone.utc)
    assert cat.period_key("daily", dt) == "2026-01-01"
    assert cat.period_key("weekly", dt) == "2026-W01"
    assert cat.period_key("monthly", dt) == "2026-01"
    assert cat.period_key("manual", dt) is None
    with pytest.raises(cat.CatalogError, match="invalid period"):
        cat.period_key("hourly", dt)


def test_new_backup_id_is_sortable_and_safe():
    dt = datetime.datetime(2026, 11, 29, 2, 0, 5, tzinfo=datetime.timezone.utc)
    assert cat.new_backup_id("ner11_db", dt) == "ner11_db-20261129T020005Z"
    assert cat.new_backup_id("../x y", dt) == "x_y-20261129T020005Z"


def test_relative_backup_dir_is_refused():
    with pytest.raises(cat.CatalogError, match="absolute path"):
        cat.Catalog("backups")


def test_delete_removes_a_backup(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish(c)
    c.delete("database", "db-20261129T020000Z")
    assert c.list("database") == [] and os.listdir(c.kind_dir("database")) == []

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


def test_verify_reports_every_problem_in_manifest_order_then_unlisted_files(tmp_path):
    c = cat.Catalog(str(tmp_path))
    partial = c.begin("database", "db-20261129T020000Z")
    for name in ("a.dat", "b.dat", "c.dat", "d.dat"):
        _write(os.path.join(partial, "dump", name), name.encode() * 50)
    manifest = {"created_at": "2026-11-29T02:00:00Z", "files": cat.hash_tree(partial), "source": {"db_name": "ner11_db"}}
    final = c.publish("database", "db-20261129T020000Z", dict(manifest, period="daily"))
    assert c.verify("database", "db-20261129T020000Z") == []
    open(os.path.join(final, "dump", "a.dat"), "ab").write(b"+")  # longer
    data = bytearray(open(os.path.join(final, "dump", "b.dat"), "rb").read())
    data[0] ^= 0x01  # same size, other content: only the checksum tells
    open(os.path.join(final, "dump", "b.dat"), "wb").write(bytes(data))
    os.unlink(os.path.join(final, "dump", "c.dat"))
    _write(os.path.join(final, "dump", "e.dat"), b"unlisted")
    assert c.verify("database", "db-20261129T020000Z") == [
        "dump/a.dat: size 251, manifest says 250",
        "dump/b.dat: sha256 mismatch",
        "dump/c.dat: missing",
        "dump/e.dat: not in the manifest",
    ]


def test_publish_refuses_files_changed_after_hashing(tmp_path):
    c = cat.Catalog(str(tmp_path))
    partial = c.begin("database", "b1")
    _write(os.path.join(partial, "a"), b"one")
    manifest = {"created_at": "2026-11-29T02:00:00Z", "files": cat.hash_tree(partial)}
    _write(os.path.join(partial, "a"), b"two")
    with pytest.raises(cat.CatalogError, match="changed after it was verified"):
        c.publish("database", "b1", manifest)
    assert c.list("database") == []


def test_publish_after_hashing_checks_names_and_sizes_without_reading_the_files(tmp_path, monkeypatch):
    c = cat.Catalog(str(tmp_path))
    partial = c.begin("database", "b1")
    _write(os.path.join(partial, "dump", "toc.dat"), b"x" * 100)
    _write(os.path.join(partial, "globals.sql"), b"CREATE ROLE app;\n")
    manifest = {"created_at": "2026-11-29T02:00:00Z", "files": cat.hash_tree(partial)}
    assert [(f["path"], f["size"], f["sha256"]) for f in cat.list_tree(partial)] == [
        ("globals.sql", 17, None),
        ("dump/toc.dat", 100, None),
    ]
    # a file that grew, one too many, one missing: refused, nothing visible
    _write(os.path.join(partial, "globals.sql"), b"CREATE ROLE app2;\n")
    with pytest.raises(cat.CatalogError, match="globals.sql changed after it was verified"):
        c.publish("database", "b1", manifest, hashed_now=True)
    _write(os.path.join(partial, "globals.sql"), b"CREATE ROLE app;\n")
    _write(os.path.join(partial, "extra"), b"?")
    with pytest.raises(cat.CatalogError, match="files on disk .* differ from the manifest"):
        c.publish("database", "b1", manifest, hashed_now=True)
    os.unlink(os.path.join(partial, "extra"))
    assert c.list("database") == []
    # the data is not read a second time: publish does not hash at all
    read = []
    monkeypatch.setattr(cat, "sha256_file", lambda path: read.append(path) or "0" * 64)
    c.publish("database", "b1", manifest, hashed_now=True)
    assert read == [] and c.list("database")[0]["backup_id"] == "b1"
    monkeypatch.undo()
    assert c.verify("database", "b1") == []  # the final verify path re-hashes every file


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


# -- source identity, pins, verification and freshness records (issue 8) ---------------------
T0 = datetime.datetime(2026, 11, 29, 2, 0, tzinfo=datetime.timezone.utc)


def _publish_src(c, backup_id, created="2026-11-29T02:00:00Z", source=None, pins=None, kind="database"):
    partial = c.begin(kind, backup_id)
    _write(os.path.join(partial, "data"), b"y" * 80)
    source = source or {"host": "h1", "db_name": "ner11_db", "instance": "container:pg"}
    manifest = {"created_at": created, "files": cat.hash_tree(partial), "source": source, "period": "daily"}
    return c.publish(kind, backup_id, manifest, pins=pins)


def test_identity_names_kind_host_instance_and_object():
    new = {"kind": "database", "source": {"host": "db-1", "instance": "container:pg", "db_name": "ner11_db"}}
    assert cat.source_identity(new)["key"] == "database|db-1|container:pg|ner11_db"
    vol = {"kind": "volume", "source": {"host": "db-1", "volume": "models", "instance": "volume:models"}}
    assert cat.identity_key(vol) == "volume|db-1|volume:models|models"
    # a 1.0.0 manifest without instance: derived from the other source fields
    old = {"kind": "models", "source": {"host": "m", "container": "api", "path": "/app/models"}}
    assert cat.source_identity(old)["instance"] == "container:api:/app/models"
    assert cat.source_identity({"kind": "config"})["key"] == "config|?|?|?"


@pytest.mark.parametrize(
    "value, expected",
    [("14d", T0 + datetime.timedelta(days=14)), ("36h", T0 + datetime.timedelta(hours=36)),
     ("2026-12-31T00:00:00Z", datetime.datetime(2026, 12, 31, tzinfo=datetime.timezone.utc)), ("", None), (None, None)],
)  # fmt: skip
def test_keep_until_is_a_time_or_a_duration_after_the_backup(value, expected):
    assert cat.parse_keep_until(value, T0) == expected


@pytest.mark.parametrize("bad", ["tomorrow", "14w", "2026-12-31", "-3d"])
def test_bad_keep_until_names_the_accepted_forms(bad):
    with pytest.raises(cat.CatalogError, match="UTC time like 2026-12-31T00:00:00Z, or a duration"):
        cat.parse_keep_until(bad, T0)


def test_pin_is_planned_written_idempotent_and_released_by_reason(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish_src(c, "b1")
    plan = cat.apply_pin(c, "database", "b1", "7d", "pre-maintenance", check_mode=True, now=T0)
    assert plan["changed"] and plan["keep_until"] == "2026-12-06T02:00:00Z" and plan["pins_before"] == []
    assert not os.path.exists(os.path.join(c.path("database", "b1"), cat.PINS))  # check mode wrote nothing
    first = cat.apply_pin(c, "database", "b1", "7d", "pre-maintenance", now=T0)
    assert first["changed"] and first["keep_until"] == "2026-12-06T02:00:00Z"
    assert cat.apply_pin(c, "database", "b1", "7d", "pre-maintenance", now=T0)["changed"] is False
    cat.apply_pin(c, "database", "b1", "2026-12-20T00:00:00Z", "pre-restore", now=T0)
    assert [p["reason"] for p in c.pins("database", "b1")] == ["pre-maintenance", "pre-restore"]
    released = cat.apply_pin(c, "database", "b1", reason="pre-restore", state="absent", now=T0)
    assert released["changed"] and [p["reason"] for p in released["pins"]] == ["pre-maintenance"]
    assert stat.S_IMODE(os.stat(os.path.join(c.path("database", "b1"), cat.PINS)).st_mode) == 0o600
    # the records are not part of the backup: checksums still verify, nothing "not in the manifest"
    c.record_verification("database", "b1", "ok", ["manifest", "sha256"], [], now=T0)
    c.record_freshness("database", "b1", "abc", "h1", now=T0)
    assert c.verify("database", "b1") == []


def test_pin_needs_reason_and_expiry_and_an_existing_backup(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish_src(c, "b1")
    with pytest.raises(cat.CatalogError, match="needs a reason"):
        cat.apply_pin(c, "database", "b1", "7d", "")
    with pytest.raises(cat.CatalogError, match="needs keep_until"):
        cat.apply_pin(c, "database", "b1", None, "why")
    with pytest.raises(cat.CatalogError, match="not found"):
        cat.apply_pin(c, "database", "nope", "7d", "why")


def test_new_backup_is_published_already_pinned(tmp_path):
    c = cat.Catalog(str(tmp_path))
    pins = cat.new_backup_pins("2d", "before upgrade", T0, "default")
    _publish_src(c, "b1", pins=pins)
    assert c.pins("database", "b1") == [
        {"reason": "before upgrade", "keep_until": "2026-12-01T02:00:00Z", "pinned_at": "2026-11-29T02:00:00Z"}
    ]
    assert c.verify("database", "b1") == []
    assert cat.new_backup_pins(None, None, T0, "x") == []
    with pytest.raises(cat.CatalogError, match="keep_reason needs keep_until"):
        cat.new_backup_pins(None, "why", T0, "x")


def test_a_recorded_failed_verification_hides_the_backup_from_latest(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish_src(c, "old", "2026-11-28T02:00:00Z")
    _publish_src(c, "new", "2026-11-29T02:00:00Z")
    assert c.latest("database")["backup_id"] == "new"
    c.record_verification("database", "new", "failed", ["sha256"], ["data: sha256 mismatch"], now=T0)
    assert c.latest("database")["backup_id"] == "old"
    assert [m["backup_id"] for m in c.list("database", include_failed=True)] == ["old", "new"]
    states = {r["backup_id"]: r["state"] for r in c.records("database")}
    assert states == {"old": "good", "new": "failed"}
    # a later good verification clears it; the history keeps the failure
    record = c.record_verification("database", "new", "ok", ["sha256"], [], now=T0 + datetime.timedelta(hours=1))
    assert record["history"][0]["status"] == "failed" and c.latest("database")["backup_id"] == "new"


def test_latest_is_per_host(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish_src(c, "a", "2026-11-28T02:00:00Z", {"host": "h1", "db_name": "ner11_db", "instance": "container:pg"})
    _publish_src(c, "b", "2026-11-29T02:00:00Z", {"host": "h2", "db_name": "ner11_db", "instance": "container:pg"})
    assert c.latest("database", host="h1")["backup_id"] == "a"
    assert c.latest("database", host="h2")["backup_id"] == "b"


def test_restore_chooses_one_identity_or_lists_the_candidates():
    def m(backup_id, host, created, instance="container:pg"):
        return {"backup_id": backup_id, "kind": "database", "created_at": created,
                "source": {"host": host, "db_name": "ner11_db", "instance": instance}}  # fmt: skip

    one = [m("a1", "h1", "2026-11-28T02:00:00Z"), m("a2", "h1", "2026-11-29T02:00:00Z")]
    found, ident = cat.choose_identity(one, "database ner11_db")
    assert [x["backup_id"] for x in found] == ["a1", "a2"] and ident["host"] == "h1"
    two = one + [m("b1", "h2", "2026-11-30T02:00:00Z")]
    with pytest.raises(cat.CatalogError) as err:
        cat.choose_identity(two, "database ner11_db")
    assert "host h2 (container:pg): newest b1" in str(err.value) and "set source_host to one of h1, h2" in str(err.value)
    assert [x["backup_id"] for x in cat.choose_identity(two, "db", source_host="h2")[0]] == ["b1"]
    assert cat.choose_identity(two, "db", source_host="h3") == ([], None)

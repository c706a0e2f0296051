import datetime
import os

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore as pr

T0 = pr.epoch("2026-11-29T02:00:00Z")
BACKUP = {"backup_id": "ner11_db-20261129T020000Z", "sha256": "abc", "created_at": T0}


def state(**kw):
    base = {"exists": True, "user_tables": 5, "applied": None, "newest_write": None}
    base.update(kw)
    return base


# -- decide ----------------------------------------------------------------------------
def test_missing_or_empty_target_is_created_without_confirm():
    assert pr.decide("db", BACKUP, state(exists=False))["action"] == "create"
    assert pr.decide("db", BACKUP, state(user_tables=0))["action"] == "create"


def test_non_empty_target_needs_replace_and_confirm():
    with pytest.raises(pr.Refused, match="if_exists=replace and confirm=db"):
        pr.decide("db", BACKUP, state())
    with pytest.raises(pr.Refused, match="needs confirm=db"):
        pr.decide("db", BACKUP, state(), if_exists="replace", confirm="other")
    assert pr.decide("db", BACKUP, state(), if_exists="skip") == {
        "action": "skip",
        "changed": False,
        "reason": "database db already holds 5 user tables and if_exists=skip",
    }
    assert pr.decide("db", BACKUP, state(), if_exists="replace", confirm="db")["action"] == "replace"


def test_already_applied_backup_changes_nothing_unless_written_since():
    applied = {"backup_id": BACKUP["backup_id"], "sha256": "abc", "scope": "full", "applied_at": T0 + 100}
    done = pr.decide("db", BACKUP, state(applied=applied, newest_write=T0 - 5))
    assert done["action"] == "none" and done["changed"] is False
    # Written after the restore: it is a replace again (with its guards).
    with pytest.raises(pr.Refused):
        pr.decide("db", BACKUP, state(applied=applied, newest_write=T0 + 200))
    # Same id, other content: not the applied one.
    other = dict(applied, sha256="zzz")
    assert pr.decide("db", BACKUP, state(applied=other), if_exists="replace", confirm="db")["action"] == "replace"


def test_a_later_applied_backup_refuses_unless_forced():
    applied = {"backup_id": "ner11_db-20261130T020000Z", "sha256": "x", "scope": "full", "applied_at": T0 + 90000}
    applied["source_created_at"] = T0 + 86400
    with pytest.raises(pr.Refused, match="newer restore"):
        pr.decide("db", BACKUP, state(applied=applied), if_exists="replace", confirm="db")
    assert pr.decide("db", BACKUP, state(applied=applied), if_exists="replace", confirm="db", force=True)["action"] == "replace"


def test_tables_need_an_existing_database_and_confirm():
    with pytest.raises(pr.Refused, match="does not exist"):
        pr.decide("db", BACKUP, state(exists=False), tables=["t"], confirm="db")
    with pytest.raises(pr.Refused, match="confirm=db"):
        pr.decide("db", BACKUP, state(), tables=["t"])
    assert pr.decide("db", BACKUP, state(), tables=["t"], confirm="db")["action"] == "tables"
    applied = {"backup_id": BACKUP["backup_id"], "scope": "tables", "tables": ["t"], "applied_at": T0 + 10}
    same = pr.decide("db", BACKUP, state(applied=applied, newest_write=T0, counts_match=True), tables=["t"])
    assert same["action"] == "none"
    changed_rows = pr.decide("db", BACKUP, state(applied=applied, counts_match=False), tables=["t"], confirm="db")
    assert changed_rows["action"] == "tables"


def test_newer_tables_compares_the_target_with_the_restored_copy():
    target = {"public.a": T0 + 10, "public.b": T0, "public.c": None, "public.d": T0 + 1}
    backup = {"public.a": T0 + 5, "public.b": T0, "public.c": T0}
    newer = pr.newer_tables(target, backup)
    assert [n["table"] for n in newer] == ["public.a", "public.d"]
    assert newer[1]["backup_newest"] is None


# -- names and SQL ---------------------------------------------------------------------------
def test_names_fit_postgres_identifiers():
    assert pr.temp_db_name("ner11_db") == "ner11_db__ner11_restore"
    now = datetime.datetime(2026, 11, 29, 2, 0, 0, tzinfo=datetime.timezone.utc)
    assert pr.old_db_name("ner11_db", now) == "ner11_db__ner11_old_20261129T020000"
    assert len(pr.old_db_name("x" * 63, now)) == 63
    with pytest.raises(pr.RestoreError):
        pr.validate_db_name('db"; DROP DATABASE x; --')
    assert pr.split_table("vendor_equipment") == ("public", "vendor_equipment")
    assert pr.qualified("s.t") == '"s"."t"'
    with pytest.raises(pr.RestoreError):
        pr.split_table("t; DROP")


def test_swap_is_one_transaction_and_terminations_are_scoped():
    sql = pr.swap_sql("db", "db__ner11_restore", "db__ner11_old_1")
    assert sql.startswith("BEGIN;") and sql.rstrip().endswith("COMMIT;")
    assert sql.index('RENAME TO "db__ner11_old_1"') < sql.index('"db__ner11_restore" RENAME TO "db"')
    term = pr.terminate_sql("it's")
    assert "datname = 'it''s'" in term and "pg_backend_pid()" in term


def test_table_wrapper_truncates_without_cascade_and_checks_in_the_transaction():
    pre, post = pr.table_restore_wrapper(
        ["vendor_equipment"], {"vendor_equipment": (8, 8)}, {"vendor_equipment": ["created_at"]}, False
    )
    assert 'TRUNCATE ONLY "public"."vendor_equipment";' in pre and "CASCADE" not in pre
    assert "newer than the backup" in post and "NOT BETWEEN 8 AND 8" in post
    pre, post = pr.table_restore_wrapper(["t"], {}, {"t": ["created_at"]}, True)
    assert "newer" not in post and "ner11_before SELECT" not in pre


def test_log_insert_quotes_values():
    sql = pr.log_insert_sql("id'1", "s", "tables", ["a'b"], "db", "2026-11-29T02:00:00Z", True)
    assert "'id''1'" in sql and "ARRAY['a''b']" in sql and "CREATE TABLE IF NOT EXISTS ner11_ops.restore_log" in sql


# -- globals ------------------------------------------------------------------------------------
GLOBALS = "\n".join(
    [
        "--",
        "-- Roles",
        "--",
        "",
        "CREATE ROLE postgres;",
        "ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;",
        'CREATE ROLE "app ""x""";',
        'ALTER ROLE "app ""x""" WITH NOSUPERUSER LOGIN;',
        "CREATE ROLE reporting;",
        "ALTER ROLE reporting WITH NOLOGIN;",
        'GRANT reporting TO "app ""x""" GRANTED BY postgres;',
    ]
)


def test_globals_create_missing_roles_and_never_alter_existing_ones():
    sql, created, kept = pr.filter_globals(GLOBALS, ["postgres", "reporting"], "postgres")
    assert created == ['app "x"'] and kept == ["postgres", "reporting"]
    assert "ALTER ROLE postgres" not in sql and "ALTER ROLE reporting" not in sql
    assert 'CREATE ROLE "app ""x""";' in sql and "GRANT reporting" in sql
    # The connecting role is protected even if the server does not list it.
    sql, created, _kept = pr.filter_globals(GLOBALS, [], "postgres")
    assert "ALTER ROLE postgres" not in sql and "postgres" not in created


# -- catalog: candidates -------------------------------------------------------------------------
def _publish(c, backup_id, created, extra=None, data=b"PGDMP" + b"x" * 64):
    partial = c.begin("database", backup_id)
    with open(os.path.join(partial, "dump.pgdump"), "wb") as fh:
        fh.write(data)
    manifest = {
        "created_at": created,
        "files": cat.hash_tree(partial),
        "source": {"db_name": "ner11_db"},
        "format": "custom",
        "artifact": "dump.pgdump",
        "row_counts": {"vendor_equipment": 8, "threat_intelligence": None},
        "row_counts_after": {"vendor_equipment": 9},
    }
    manifest.update(extra or {})
    return c.publish("database", backup_id, manifest)


def test_latest_skips_partial_single_table_and_damaged_backups(tmp_path):
    c = cat.Catalog(str(tmp_path))
    _publish(c, "ner11_db-20261127T020000Z", "2026-11-27T02:00:00Z")
    _publish(c, "ner11_db-20261128T020000Z", "2026-11-28T02:00:00Z", {"tables": ["vendor_equipment"]})
    _publish(c, "ner11_db-20261129T020000Z", "2026-11-29T02:00:00Z", {"scope": "schema"})
    damaged = _publish(c, "ner11_db-20261130T020000Z", "2026-11-30T02:00:00Z")
    with open(os.path.join(damaged, "dump.pgdump"), "ab") as fh:
        fh.write(b"!")
    os.makedirs(c.partial_path("database", "ner11_db-20261201T020000Z"))
    _catalog, manifest, path, skipped = pr.resolve_backup(str(tmp_path), latest=True, source_db="ner11_db")
    assert manifest["backup_id"] == "ner11_db-20261127T020000Z"
    assert path == c.path("database", "ner11_db-20261127T020000Z")
    reasons = {s["backup_id"]: s["reason"] for s in skipped}
    assert set(reasons) == {"ner11_db-20261128T020000Z", "ner11_db-20261129T020000Z", "ner11_db-20261130T020000Z"}
    assert "fails verification: dump.pgdump: size 70" in reasons["ner11_db-20261130T020000Z"]
    with pytest.raises(pr.RestoreError, match="no verified full backup of database other"):
        pr.resolve_backup(str(tmp_path), latest=True, source_db="other")


def test_named_backup_is_verified_and_path_must_be_a_catalog_entry(tmp_path):
    c = cat.Catalog(str(tmp_path))
    good = _publish(c, "ner11_db-20261127T020000Z", "2026-11-27T02:00:00Z")
    assert pr.resolve_backup(path=good)[1]["backup_id"] == "ner11_db-20261127T020000Z"
    with pytest.raises(pr.RestoreError, match="expected <backup_dir>/database/<backup_id>"):
        pr.resolve_backup(path=str(tmp_path))
    with open(os.path.join(good, "dump.pgdump"), "ab") as fh:
        fh.write(b"!")
    with pytest.raises(pr.RestoreError, match="fails verification"):
        pr.resolve_backup(str(tmp_path), backup_id="ner11_db-20261127T020000Z")
    with pytest.raises(pr.RestoreError, match="invalid backup id"):
        pr.resolve_backup(str(tmp_path), backup_id="../x")


def test_dump_info_and_expected_counts(tmp_path):
    c = cat.Catalog(str(tmp_path))
    path = _publish(c, "ner11_db-20261127T020000Z", "2026-11-27T02:00:00Z")
    manifest = c.read_manifest("database", "ner11_db-20261127T020000Z")
    info = pr.dump_info(manifest, path)
    assert info["format"] == "custom" and info["path"].endswith("dump.pgdump") and info["globals_path"] is None
    expected = pr.expected_counts(manifest)
    assert expected == {"vendor_equipment": (8, 9)}
    assert pr.count_mismatches(expected, {"vendor_equipment": 9}) == []
    assert pr.count_mismatches(expected, {"vendor_equipment": 7}) == ["vendor_equipment: 7 rows, backup has 8-9"]
    assert pr.expected_counts(manifest, ["threat_intelligence"]) == {}
    with pytest.raises(pr.RestoreError, match="outside itself"):
        pr.dump_info(dict(manifest, artifact="../x"), path)
    with pytest.raises(pr.RestoreError, match="format"):
        pr.dump_info(dict(manifest, format="tar"), path)
    plain = pr.dump_info(dict(manifest, format="plain", artifact="dump.pgdump", compression="gzip:6"), path)
    assert plain["decompress"] == "gzip"

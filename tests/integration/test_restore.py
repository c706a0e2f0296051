"""ner11.ops.pg_restore against a real PostgreSQL container (issue 5).

Backups are built by ``raw_backup`` with stock ``pg_dump`` inside the database
container and published through the catalog (independent of pg_backup); one
test uses the real ``ner11.ops.pg_backup``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import docker, run_module

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore_state import fingerprint_diff, fingerprint_sql

DB = "ner11_db"
CANARIES = ["vendor_equipment", "threat_intelligence", "compliance_frameworks"]


def counts(stack, db=DB, tables=None):
    return {t: int(stack.psql("SELECT count(*) FROM %s" % t, db=db)) for t in tables or CANARIES}


def databases(stack):
    return set(stack.psql("SELECT datname FROM pg_database WHERE NOT datistemplate", db="postgres").split())


def raw_backup(stack, backup_dir, fmt="custom", db=DB, extra=None, row_counts=None, with_globals=True, backup_id=None):
    """A catalog entry made with stock pg_dump in the container (what pg_backup writes, minimally)."""
    c = cat.Catalog(backup_dir)
    c.kind_dir("database", create=True)
    created = cat.utcnow()
    backup_id = backup_id or cat.new_backup_id(db, created)
    while os.path.exists(c.path("database", backup_id)):
        time.sleep(1)
        created = cat.utcnow()
        backup_id = cat.new_backup_id(db, created)
    partial = c.begin("database", backup_id)
    pg = stack.container("postgres")
    exec_pg = ["docker", "exec", "-u", "postgres", pg]
    if fmt == "custom":
        artifact = "dump.pgdump"
        with open(os.path.join(partial, artifact), "wb") as fh:
            subprocess.run(exec_pg + ["pg_dump", "-Fc", "-d", db], stdout=fh, check=True)
    elif fmt == "directory":
        artifact = "dump"
        docker("exec", "-u", "postgres", pg, "rm", "-rf", "/tmp/itdump")
        docker("exec", "-u", "postgres", pg, "pg_dump", "-Fd", "-j", "2", "-f", "/tmp/itdump", "-d", db)
        docker("cp", "%s:/tmp/itdump" % pg, os.path.join(partial, artifact))
        docker("exec", "-u", "postgres", pg, "rm", "-rf", "/tmp/itdump")
    else:
        artifact = "dump.sql.gz"
        with open(os.path.join(partial, artifact), "wb") as fh:
            dump = subprocess.Popen(exec_pg + ["pg_dump", "-Fp", "-d", db], stdout=subprocess.PIPE)
            subprocess.run(["gzip", "-c"], stdin=dump.stdout, stdout=fh, check=True)
            assert dump.wait() == 0
    if with_globals:
        with open(os.path.join(partial, "globals.sql"), "wb") as fh:
            subprocess.run(exec_pg + ["pg_dumpall", "--globals-only", "--no-role-passwords"], stdout=fh, check=True)
    files = cat.hash_tree(partial)
    manifest = {
        "created_at": cat.isoformat(created),
        "period": "manual",
        "source": {"db_name": db, "instance": "container:%s" % pg, "host": "localhost"},
        "format": fmt,
        "compression": "gzip:6" if fmt == "plain" else "gzip:-1",
        "artifact": artifact,
        "globals": "globals.sql" if with_globals else None,
        "canary_tables": CANARIES,
        "row_counts": row_counts or counts(stack, db),
        "files": files,
        "sha256": "test-%s" % backup_id,
    }
    manifest.update(extra or {})
    c.publish("database", backup_id, manifest)
    return backup_id


def restore(stack, backup_dir, check=False, **args):
    params = {"db_name": DB, "backup_dir": str(backup_dir), "container": stack.container("postgres")}
    params.update(args)
    return run_module("ner11.ops.pg_restore", params, check=check)


def test_new_database_four_steps_latest_skips_partials(own_stack, tmp_path):
    stack = own_stack()
    full = raw_backup(stack, str(tmp_path), fmt="custom")
    time.sleep(1.1)
    # Newer candidates `latest` must skip: a table-only backup, a damaged one, a partial directory.
    single = raw_backup(stack, str(tmp_path), extra={"tables": ["vendor_equipment"]})
    time.sleep(1.1)
    damaged = raw_backup(stack, str(tmp_path))
    with open(os.path.join(str(tmp_path), "database", damaged, "dump.pgdump"), "ab") as fh:
        fh.write(b"x")
    os.makedirs(os.path.join(str(tmp_path), "database", ".partial-ner11_db-29991231T000000Z"))

    args = {"db_name": "it_restored", "latest": True, "source_db_name": DB}
    plan = restore(stack, tmp_path, check=True, **args)
    assert plan.get("failed") is not True, plan.get("msg")
    assert plan["changed"] is True and plan["restored"] is False
    assert plan["backup_id"] == full
    assert {s["backup_id"] for s in plan["skipped_backups"]} == {single, damaged}
    assert plan["plan"]["action"] == "create" and plan["plan"]["rename"] == {"it_restored__ner11_restore": "it_restored"}
    assert "it_restored" not in databases(stack)

    applied = restore(stack, tmp_path, **args)
    assert applied.get("failed") is not True, applied.get("msg")
    assert applied["changed"] is True and applied["restored"] is True
    assert applied["row_counts"] == counts(stack) == counts(stack, "it_restored")
    assert "it_restored__ner11_restore" not in databases(stack)
    log = stack.psql("SELECT backup_id, scope FROM ner11_ops.restore_log", db="it_restored")
    assert log == "%s|full" % full

    again = restore(stack, tmp_path, check=True, **args)
    assert again["changed"] is False and again["operation"] == "none", again.get("msg")
    twice = restore(stack, tmp_path, **args)
    assert twice["changed"] is False and twice["restored"] is False and twice["row_counts"] == applied["row_counts"]


def test_replace_guards_failures_newer_data(own_stack, tmp_path):
    stack = own_stack()
    backup = raw_backup(stack, str(tmp_path), fmt="directory")
    before = counts(stack)

    # Non-empty target, default if_exists=fail: refused, nothing touched.
    res = restore(stack, tmp_path, backup_id=backup)
    assert res["failed"] and "if_exists=replace" in res["msg"] and "confirm=ner11_db" in res["msg"]
    res = restore(stack, tmp_path, backup_id=backup, if_exists="replace")
    assert res["failed"] and "confirm=ner11_db" in res["msg"]
    res = restore(stack, tmp_path, backup_id=backup, if_exists="skip")
    assert res.get("failed") is not True and res["changed"] is False and res["operation"] == "skip"
    assert databases(stack) >= {DB} and not any("__ner11" in d for d in databases(stack))

    # A deleted row (lost data) is what a restore brings back.
    stack.psql("DELETE FROM vendor_equipment WHERE id = (SELECT min(id) FROM vendor_equipment)")
    args = {"backup_id": backup, "if_exists": "replace", "confirm": DB, "jobs": 2}
    plan = restore(stack, tmp_path, check=True, **args)
    assert plan["changed"] is True and plan["plan"]["action"] == "replace"
    assert any(s["application_name"] == "fastapi" for s in plan["plan"]["terminate_sessions"]), plan["plan"]
    assert counts(stack)["vendor_equipment"] == before["vendor_equipment"] - 1

    res = restore(stack, tmp_path, **args)
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] and res["restored"] and counts(stack) == before
    assert any(s["application_name"] == "fastapi" for s in res["sessions_terminated"])
    assert not any("__ner11" in d for d in databases(stack))
    again = restore(stack, tmp_path, **args)
    assert again["changed"] is False and again["operation"] == "none"

    damaged_backup_refused(stack, tmp_path, backup, args)

    # Newer data in the target: refused after the restore into the temporary copy; force overrides.
    time.sleep(1.1)
    stack.psql("INSERT INTO vendor_equipment (vendor, model) VALUES ('ItNewer', 'X1')")
    res = restore(stack, tmp_path, **args)
    assert res["failed"] and res.get("refused") and "newer than backup" in res["msg"], res.get("msg")
    assert "public.vendor_equipment" in res["msg"]
    assert stack.psql("SELECT count(*) FROM vendor_equipment WHERE vendor = 'ItNewer'") == "1"
    assert not any("__ner11" in d for d in databases(stack))
    res = restore(stack, tmp_path, force=True, keep_old=True, **args)
    assert res.get("failed") is not True, res.get("msg")
    assert stack.psql("SELECT count(*) FROM vendor_equipment WHERE vendor = 'ItNewer'") == "0"
    assert res["old_db"] in databases(stack)
    assert stack.psql("SELECT count(*) FROM vendor_equipment WHERE vendor = 'ItNewer'", db=res["old_db"]) == "1"
    stack.psql('DROP DATABASE "%s"' % res["old_db"], db="postgres")

    # Injected failure 1: the restored copy does not match the manifest's counts (a manifest edited
    # on disk). The backup's globals hold a role the server no longer has: the run creates it before
    # it fails, so the failure reports changed=true and names what it changed for good.
    stack.psql("INSERT INTO compliance_frameworks (name) VALUES ('ItKeep')")
    stack.psql("CREATE ROLE it_reader NOLOGIN")
    wrong = dict(before, vendor_equipment=before["vendor_equipment"] + 100)
    time.sleep(1.1)
    bad = raw_backup(stack, str(tmp_path), row_counts=wrong)
    stack.psql("DROP ROLE it_reader")
    res = restore(stack, tmp_path, backup_id=bad, if_exists="replace", confirm=DB, force=True)
    assert res["failed"] and "does not match backup" in res["msg"] and "left untouched" in res["msg"]
    assert res["changed"] is True, res
    assert any("it_reader" in change for change in res["changes"]), res["changes"]
    assert stack.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'it_reader'", db="postgres") == "1"
    assert stack.psql("SELECT count(*) FROM compliance_frameworks WHERE name = 'ItKeep'") == "1"
    assert not any("__ner11" in d for d in databases(stack))
    # The same failure again changes nothing more (the role exists now): changed=false.
    res = restore(stack, tmp_path, backup_id=bad, if_exists="replace", confirm=DB, force=True)
    assert res["failed"] and "does not match backup" in res["msg"]
    assert res["changed"] is False and res["changes"] == [], res

    # Injected failure 2: pg_restore fails mid-restore (an owner role the server lacks).
    stack.psql("CREATE ROLE it_owner; CREATE TABLE it_owned (id int); ALTER TABLE it_owned OWNER TO it_owner")
    time.sleep(1.1)
    owned = raw_backup(stack, str(tmp_path), with_globals=False)
    stack.psql("DROP TABLE it_owned; DROP ROLE it_owner")
    res = restore(stack, tmp_path, backup_id=owned, if_exists="replace", confirm=DB, force=True)
    assert res["failed"] and "pg_restore" in res["msg"] and "it_owner" in res["msg"], res["msg"]
    assert res["changed"] is False and res["leftovers"] == [], res  # the temporary copy was dropped
    assert stack.psql("SELECT count(*) FROM compliance_frameworks WHERE name = 'ItKeep'") == "1"
    assert not any("__ner11" in d for d in databases(stack))


def damaged_backup_refused(stack, tmp_path, backup, args):
    """One byte flipped in a data file of catalogued backup ``backup``: restoring it by backup_id is refused.

    A named backup is hashed in a thread while the server is read (issue 16); the refusal must come
    before any change: in check mode, replacing the live database, and into a new database. The byte
    is put back afterwards.
    """
    stack.psql("DELETE FROM vendor_equipment WHERE id = (SELECT min(id) FROM vendor_equipment)")  # a replace has work
    dump = os.path.join(str(tmp_path), "database", backup, "dump")
    name = max((f for f in os.listdir(dump) if f.endswith(".dat.gz")), key=lambda f: os.path.getsize(os.path.join(dump, f)))
    data_file = os.path.join(dump, name)
    fp = json.loads(stack.psql(fingerprint_sql()))
    before = {
        "counts": counts(stack),
        "log": stack.psql("SELECT count(*), max(id) FROM ner11_ops.restore_log"),
        "oid": stack.psql("SELECT oid FROM pg_database WHERE datname = current_database()"),
        "databases": databases(stack),
    }
    with open(data_file, "r+b") as fh:
        fh.seek(os.path.getsize(data_file) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    try:
        runs = [
            ("check", restore(stack, tmp_path, check=True, **args)),
            ("replace", restore(stack, tmp_path, **args)),
            ("new database", restore(stack, tmp_path, backup_id=backup, db_name="it_damaged")),
        ]
    finally:
        with open(data_file, "r+b") as fh:
            fh.seek(os.path.getsize(data_file) // 2)
            fh.write(byte)
    for mode, res in runs:
        assert res.get("failed") is True, (mode, res)
        assert "backup %s fails verification" % backup in res["msg"] and "dump/%s" % name in res["msg"], (mode, res["msg"])
        assert "damaged" in res["msg"] and res["changed"] is False and res["restored"] is False, (mode, res)
        assert not any(step["step"].startswith(("globals", "create the temporary")) for step in res["steps"]), (mode, res)
    # Nothing changed: the live database's fingerprint, counts, restore log, oid; no other database.
    current = json.loads(stack.psql(fingerprint_sql(fp["h"])))
    assert fingerprint_diff(fp, current) == []
    after = {
        "counts": counts(stack),
        "log": stack.psql("SELECT count(*), max(id) FROM ner11_ops.restore_log"),
        "oid": stack.psql("SELECT oid FROM pg_database WHERE datname = current_database()"),
        "databases": databases(stack),
    }
    assert after == before
    # The byte is back: the caller's next restore of the same backup passes its checksums (it is
    # refused later, for newer data, only after restoring into the temporary copy).


def test_selective_table_restore(own_stack, tmp_path):
    stack = own_stack()
    backup = raw_backup(stack, str(tmp_path))
    before = counts(stack)
    stack.psql("DELETE FROM vendor_equipment WHERE id > 3; INSERT INTO threat_intelligence (indicator) VALUES ('keep-me')")
    args = {"backup_id": backup, "tables": ["vendor_equipment"]}

    res = restore(stack, tmp_path, **args)
    assert res["failed"] and "confirm=ner11_db" in res["msg"]
    assert counts(stack)["vendor_equipment"] == 3

    res = restore(stack, tmp_path, check=True, confirm=DB, **args)
    assert res["changed"] and res["plan"]["truncate"] == ["public.vendor_equipment"]
    assert counts(stack)["vendor_equipment"] == 3

    res = restore(stack, tmp_path, confirm=DB, **args)
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] and res["row_counts"] == {"vendor_equipment": before["vendor_equipment"]}
    # Only that table: the other table keeps its newer row.
    assert stack.psql("SELECT count(*) FROM threat_intelligence WHERE indicator = 'keep-me'") == "1"
    # The sequence came back with the rows: a new insert does not collide.
    stack.psql(
        "INSERT INTO vendor_equipment (vendor, model) VALUES ('seq', 'ok'); DELETE FROM vendor_equipment WHERE vendor = 'seq'"
    )
    # That insert and delete were writes (the sequence moved): the same restore runs again (issue 9).
    res = restore(stack, tmp_path, check=True, confirm=DB, **args)
    assert res.get("failed") is not True and res["changed"] is True, res
    assert any("sequence moved" in c for c in res["changes_since_restore"]), res["changes_since_restore"]
    res = restore(stack, tmp_path, confirm=DB, **args)
    assert res["changed"] is True and res["restored"] is True, res.get("msg")
    res = restore(stack, tmp_path, confirm=DB, **args)
    assert res["changed"] is False and res["operation"] == "none", res.get("reason")

    # Referenced by a foreign key from a table not listed: refused (no TRUNCATE CASCADE).
    res = restore(stack, tmp_path, backup_id=backup, tables=["ner_documents"], confirm=DB)
    assert res["failed"] and "ner_entities" in res["msg"]

    # Newer rows in the table: refused in one rolled-back transaction; force overrides.
    time.sleep(1.1)
    stack.psql("INSERT INTO threat_intelligence (indicator) VALUES ('newer')")
    res = restore(stack, tmp_path, backup_id=backup, tables=["threat_intelligence"], confirm=DB)
    assert res["failed"] and "newer than the backup" in res["msg"], res["msg"]
    assert stack.psql("SELECT count(*) FROM threat_intelligence WHERE indicator IN ('newer', 'keep-me')") == "2"
    res = restore(stack, tmp_path, backup_id=backup, tables=["threat_intelligence"], confirm=DB, force=True)
    assert res.get("failed") is not True, res.get("msg")
    assert counts(stack)["threat_intelligence"] == before["threat_intelligence"]


def test_plain_backup_restores_through_psql_and_bad_input(own_stack, tmp_path):
    stack = own_stack()
    backup = raw_backup(stack, str(tmp_path), fmt="plain")
    res = restore(stack, tmp_path, backup_id=backup, db_name="it_plain")
    assert res.get("failed") is not True, res.get("msg")
    assert res["format"] == "plain" and res["toc_entries"] is None
    assert counts(stack, "it_plain") == counts(stack)
    res = restore(stack, tmp_path, backup_id=backup, tables=["vendor_equipment"], confirm=DB)
    assert res["failed"] and "plain SQL dump" in res["msg"]
    res = restore(stack, tmp_path, backup_id="../etc")
    assert res["failed"] and "invalid backup id" in res["msg"]
    res = restore(stack, tmp_path, backup_id="ner11_db-19990101T000000Z")
    assert res["failed"] and "not found" in res["msg"]
    res = restore(stack, tmp_path, db_name="x; DROP", backup_id=backup)
    assert res["failed"] and "identifier" in res["msg"]


@pytest.mark.skipif(
    not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "modules", "pg_backup.py")),
    reason="ner11.ops.pg_backup not there yet",
)
def test_roundtrip_with_pg_backup(own_stack, tmp_path):
    stack = own_stack()
    made = run_module(
        "ner11.ops.pg_backup",
        {"db_name": DB, "backup_dir": str(tmp_path), "container": stack.container("postgres"), "period": "manual"},
    )
    assert made.get("failed") is not True, made.get("msg")
    before = counts(stack)
    stack.psql("DELETE FROM compliance_frameworks")
    res = restore(stack, tmp_path, latest=True, if_exists="replace", confirm=DB)
    assert res.get("failed") is not True, res.get("msg")
    assert res["backup_id"] == made["backup_id"] and counts(stack) == before
    assert json.loads(json.dumps(res["row_counts"])) == before

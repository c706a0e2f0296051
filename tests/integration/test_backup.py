"""pg_backup, backup_verify, backup_prune against a real PostgreSQL container (issue 4).

One postgres-only stack for the module (the backup modules need nothing else);
every test uses its own backup_dir under tmp_path. The database-down test stops
that stack's container, so it runs last.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import stat
import subprocess
import threading
import time

import pytest
from conftest import Stack, docker, run_module, run_playbook, unique_project, unmount

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat

STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}
CANARIES = {"vendor_equipment": 1234, "threat_intelligence": 56, "compliance_frameworks": 7}


@pytest.fixture(scope="module")
def db():
    stack = Stack(unique_project("itb"))
    stack.remove()
    result = stack.deploy(extra={"stack_services": ["postgres"]})
    if result.rc != 0:
        stack.remove()
        pytest.fail("deploying postgres failed: %s" % result.explain())
    stmts = []
    for table, rows in CANARIES.items():
        stmts.append(
            "CREATE TABLE IF NOT EXISTS %s (id int primary key, payload text, meta jsonb);"
            "TRUNCATE %s; INSERT INTO %s SELECT g, md5(g::text), jsonb_build_object('g', g) FROM generate_series(1, %d) g;"
            % (table, table, table, rows)
        )
    stack.psql(" ".join(stmts))
    yield stack
    stack.remove()


def args(db, backup_dir, **extra):
    out = {
        "backup_dir": str(backup_dir),
        "container": db.container("postgres"),
        "login_password": db.password,
        "period": "daily",
    }
    out.update(extra)
    return out


def no_secret(db, result):
    text = json.dumps(result)
    assert db.password not in text


def test_four_steps_manifest_modes_and_no_secret(db, tmp_path):
    bdir = tmp_path / "bk"
    keep = {"keep_until": "30d"}  # a relative pin, counted from the backup's created_at: the re-runs change nothing
    check = run_module("ner11.ops.pg_backup", args(db, bdir, **keep), check=True)
    assert check["changed"] is True and not check.get("failed"), check.get("msg")
    assert [p["reason"] for p in check["pins"]] == ["pinned by pg_backup keep_until"]  # the pins it would get
    assert check["plan"]["format"] == "directory" and check["plan"]["jobs"] == 2
    assert not (bdir / "database").exists() or not any((bdir / "database").iterdir())

    first = run_module("ner11.ops.pg_backup", args(db, bdir, **keep))
    assert first["changed"] is True and not first.get("failed"), first.get("msg")
    created = cat.parse_time(first["manifest"]["created_at"])
    assert [p["keep_until"] for p in first["pins"]] == [cat.isoformat(created + datetime.timedelta(days=30))]
    assert first["backup_id"] == check["plan"]["backup_id"] or first["backup_id"].startswith("ner11_db-")
    # one sidecar ran globals, the dump and the listing; each step is timed from the script's marks
    steps = [s["step"] for s in first["steps"]]
    assert [c for c in first["executed_commands"] if " run " in c and "--entrypoint" in c] == first["plan"]["commands"]
    for step in ("sidecar start", "pg_dumpall --globals-only", "pg_dump", "pg_restore --list", "sha256 of every file"):
        assert step in steps, steps
    assert "pg_dump --version" not in steps and steps[-1].startswith("publish: names and sizes")

    again_check = run_module("ner11.ops.pg_backup", args(db, bdir, **keep), check=True)
    assert again_check["changed"] is False and again_check["backup_id"] == first["backup_id"]
    again = run_module("ner11.ops.pg_backup", args(db, bdir, **keep))
    assert again["changed"] is False and again["backup_id"] == first["backup_id"]
    assert again_check["pins"] == again["pins"] == first["pins"]

    forced = run_module("ner11.ops.pg_backup", args(db, bdir, force=True))
    assert forced["changed"] is True and forced["backup_id"] != first["backup_id"]

    path = first["path"]
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert manifest == first["manifest"]
    assert cat.manifest_problems(manifest, "database", first["backup_id"]) == []
    assert manifest["status"] == "verified" and manifest["format"] == "directory" and manifest["compression"] == "gzip:1"
    assert manifest["toc_entries"] > 5
    assert manifest["row_counts"] == CANARIES
    assert manifest["source"]["server_version_num"] >= 150000 and "PostgreSQL" in manifest["pg_dump_version"]
    assert manifest["source"]["db_size_bytes"] > 0 and manifest["period_key"] == manifest["created_at"][:10]
    assert any("pg_restore" in c and "{target_db}" in c for c in manifest["restore"]["commands"])
    assert {f["path"] for f in manifest["files"]} >= {"globals.sql", "dump/toc.dat"}
    assert first["sha256"] == manifest["sha256"] and first["size_bytes"] == manifest["size_bytes"] > 1000
    for dirpath, _dirnames, filenames in os.walk(str(bdir)):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for name in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o600, name
    # the password is nowhere: output, manifest, globals (no role passwords), commands
    for res in (check, first, again, forced):
        no_secret(db, res)
    for dirpath, _d, filenames in os.walk(str(bdir)):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                assert db.password.encode() not in fh.read()
    assert "PASSWORD" not in open(os.path.join(path, "globals.sql")).read().upper().replace("NOPASSWORD", "")


@pytest.mark.parametrize("fmt,compression", [("directory", "gzip:1"), ("custom", "gzip:1"), ("plain", "zstd:3")])
def test_interop_stock_tools_restore_from_the_manifest_alone(db, tmp_path, fmt, compression):
    bdir = tmp_path / "bk"
    extra = {"format": fmt, "compression": compression, "period": "manual"}
    if fmt != "directory":
        extra["login_password"] = None  # exec mode: no password at all
    res = run_module("ner11.ops.pg_backup", {k: v for k, v in args(db, bdir, **extra).items() if v is not None})
    assert res["changed"] and not res.get("failed"), res.get("msg")
    manifest = res["manifest"]
    # Copy the backup into the postgres container and follow only the manifest's commands.
    container = db.container("postgres")
    dest = "/tmp/restore-%s" % res["backup_id"]
    docker("cp", res["path"], "%s:%s" % (container, dest))
    docker("exec", container, "chown", "-R", "postgres", dest)
    target = "interop_%s" % fmt
    db.psql("DROP DATABASE IF EXISTS %s" % target, db="postgres")
    for command in manifest["restore"]["commands"]:
        if "globals.sql" in command:
            continue  # same server: the roles exist (see the manifest's notes)
        line = command.replace("{target_db}", target)
        proc = docker("exec", "-u", "postgres", "-w", dest, container, "bash", "-o", "pipefail", "-c", line, check=False)
        assert proc.returncode == 0, (line, proc.stderr)
    for table, rows in CANARIES.items():
        assert int(db.psql("SELECT count(*) FROM %s" % table, db=target)) == rows
    db.psql("DROP DATABASE %s" % target, db="postgres")
    docker("exec", container, "rm", "-rf", dest)


def test_verify_test_restore_and_flipped_byte(db, tmp_path):
    bdir = tmp_path / "bk"
    made = run_module("ner11.ops.pg_backup", args(db, bdir))
    assert made["changed"], made.get("msg")
    verify_args = {"backup_dir": str(bdir), "container": db.container("postgres"), "login_password": db.password}
    ok = run_module("ner11.ops.backup_verify", dict(verify_args, test_restore=True))
    assert ok["status"] == "ok" and not ok.get("failed"), ok.get("msg")
    assert ok["changed"] is False and ok["newest_backup_id"] == made["backup_id"] and ok["newest_age_hours"] < 1
    assert ok["test_restore"]["row_counts"] == CANARIES and ok["test_restore"]["errors"] == []
    assert "dropped ner11_test_restore" in ok["test_restore"]["actions"]
    assert db.psql("SELECT count(*) FROM pg_database WHERE datname = 'ner11_test_restore'", db="postgres") == "0"
    assert set(ok["backups"][0]["checks"]) == {"manifest", "sha256", "archive"}
    no_secret(db, ok)

    # A scratch database ner11.ops did not create is refused and kept, and so are the server's own.
    db.psql("CREATE DATABASE it_mine", db="postgres")
    db.psql("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1)", db="it_mine")
    for scratch in ("it_mine", "postgres", "template1", "ner11_db"):
        refused = run_module("ner11.ops.backup_verify", dict(verify_args, test_restore=True, scratch_db=scratch))
        assert refused.get("failed") and scratch in refused["msg"], (scratch, refused.get("msg"))
        assert refused["changed"] is False
    assert (
        "not created by ner11.ops"
        in run_module("ner11.ops.backup_verify", dict(verify_args, test_restore=True, scratch_db="it_mine"))["msg"]
    )
    assert db.psql("SELECT count(*) FROM keep_me", db="it_mine") == "1"
    assert db.psql("SELECT count(*) FROM pg_database WHERE datname IN ('postgres', 'template1')", db="postgres") == "2"
    assert int(db.psql("SELECT count(*) FROM vendor_equipment")) == CANARIES["vendor_equipment"]
    db.psql("DROP DATABASE it_mine", db="postgres")

    victim = os.path.join(made["path"], "globals.sql")
    with open(victim, "r+b") as fh:
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0x01]))
    bad = run_module("ner11.ops.backup_verify", verify_args)
    assert bad.get("failed") and bad["status"] == "failed"
    assert "globals.sql: sha256 mismatch" in bad["msg"] and made["backup_id"] in bad["msg"]
    report = run_module("ner11.ops.backup_verify", dict(verify_args, fail_on_error=False))
    assert not report.get("failed") and report["backups"][0]["status"] == "failed"

    # the failure is recorded beside the backup (the manifest is untouched) ...
    with open(os.path.join(made["path"], "verify.json")) as fh:
        record = json.load(fh)
    assert record["status"] == "failed" and "sha256" in record["checks"] and record["verified_at"].endswith("Z")
    assert any("globals.sql: sha256 mismatch" in e for e in record["errors"])
    assert record["history"] and record["history"][0]["status"] in ("ok", "failed")
    with open(os.path.join(made["path"], "manifest.json")) as fh:
        assert json.load(fh)["status"] == "verified"
    # ... so the period's idempotence no longer answers with it: the same day gets a good backup
    redo = run_module("ner11.ops.pg_backup", args(db, bdir))
    assert redo["changed"] is True and redo["backup_id"] != made["backup_id"], redo.get("msg")

    # the RPO is judged per identity on its newest good backup
    stale = run_module("ner11.ops.backup_verify", {"backup_dir": str(bdir), "max_age_hours": 0.0001, "fail_on_error": False})
    assert any("max_age_hours" in e and redo["backup_id"] in e for e in stale["errors"]), stale["errors"]
    [row] = stale["identities"]
    assert row["newest_backup_id"] == redo["backup_id"] and row["good"] == 1 and row["failed"] == 1


def _fake_backup(c, backup_id, created):
    partial = c.begin("database", backup_id)
    with open(os.path.join(partial, "dump.pgdump"), "wb") as fh:
        fh.write(b"x" * 1000)
    files = cat.hash_tree(partial)
    c.publish(
        "database",
        backup_id,
        {"created_at": created, "files": files, "size_bytes": 1000, "source": {"db_name": "ner11_db"}, "period": "daily"},
    )


def test_prune_four_steps_gfs(tmp_path):
    bdir = tmp_path / "bk"
    c = cat.Catalog(str(bdir))
    for day in range(1, 41):  # 40 daily backups, Nov 2026 and into December
        dt = cat.parse_time("2026-10-25T02:00:00Z") + datetime.timedelta(days=day)
        _fake_backup(c, "ner11_db-%s" % dt.strftime("%Y%m%dT%H%M%SZ"), cat.isoformat(dt))
    os.makedirs(os.path.join(c.kind_dir("database"), "broken-entry"))
    params = {"backup_dir": str(bdir), "db_name": "ner11_db"}
    plan = run_module("ner11.ops.backup_prune", params, check=True)
    assert plan["changed"] is True and len(plan["deleted"]) > 0
    assert len(os.listdir(c.kind_dir("database"))) == 41  # check mode deleted nothing (40 + broken-entry)
    applied = run_module("ner11.ops.backup_prune", params)
    assert applied["changed"] is True and sorted(applied["deleted"]) == sorted(plan["deleted"])
    assert applied["freed_bytes"] == 1000 * len(applied["deleted"])
    assert applied["unverified"] == ["broken-entry"] and os.path.isdir(os.path.join(c.kind_dir("database"), "broken-entry"))
    left = [m["backup_id"] for m in c.list("database")]
    assert sorted(left) == sorted(applied["kept"]) and len(left) <= 7 + 4 + 12 + 1
    assert "ner11_db-20261203T020000Z" in left  # the newest
    recheck = run_module("ner11.ops.backup_prune", params, check=True)
    again = run_module("ner11.ops.backup_prune", params)
    assert recheck["changed"] is False and again["changed"] is False and again["deleted"] == []


@pytest.mark.parametrize(
    "module,extra,needle",
    [
        ("ner11.ops.pg_backup", {"format": "tar"}, "format"),
        ("ner11.ops.pg_backup", {"jobs": -1}, "jobs must be between 1 and 64"),
        ("ner11.ops.pg_backup", {"compression": "gzip:12"}, "gzip level must be 1-9"),
        ("ner11.ops.pg_backup", {"compression": "zstd:3", "format": "custom"}, "zstd is available for format=directory"),
        ("ner11.ops.pg_backup", {"backup_dir": "relative/dir"}, "backup_dir must be an absolute path"),
        ("ner11.ops.pg_backup", {"db_name": "no_such_db"}, "database no_such_db does not exist"),
        ("ner11.ops.pg_backup", {"container": "no-such-container-x"}, "container no-such-container-x not found"),
        ("ner11.ops.backup_prune", {"keep_daily": -1}, "keep_daily must be an integer >= 0"),
        ("ner11.ops.backup_verify", {"backup_id": "../etc"}, "invalid backup id"),
    ],
)
def test_bad_input_names_the_fix(db, tmp_path, module, extra, needle):
    bdir = tmp_path / "bk"
    base = args(db, bdir) if module == "ner11.ops.pg_backup" else {"backup_dir": str(bdir)}
    base.update(extra)
    res = run_module(module, base)
    assert res.get("failed") and needle in res["msg"], res.get("msg")
    assert "Traceback" not in res["msg"]
    no_secret(db, res)
    if (bdir / "database").exists():
        assert [n for n in os.listdir(bdir / "database") if not n.startswith(".lock")] == []


def test_concurrent_backup_names_the_lock_holder(db, tmp_path):
    bdir = tmp_path / "bk"
    c = cat.Catalog(str(bdir))
    with c.lock("database"):
        res = run_module("ner11.ops.pg_backup", args(db, bdir, period="manual"))
    assert res.get("failed") and "another database backup is running" in res["msg"]
    assert "pid=%d" % os.getpid() in res["msg"] and "lock_timeout" in res["msg"]
    assert c.list("database") == []


def test_full_backup_dir_fails_clearly_and_keeps_older_backups(db, tmp_path):
    bdir = tmp_path / "small"
    bdir.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(bdir)], capture_output=True, check=False).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        small = {"period": "manual", "format": "custom", "login_password": None}
        old = run_module("ner11.ops.pg_backup", args(db, bdir, space_factor=0.1, **small))
        assert old["changed"], old.get("msg")
        # G69 pre-flight: 5 MB free < pg_database_size x 1.0 -> refused before dumping, naming both numbers
        pre = run_module("ner11.ops.pg_backup", args(db, bdir, **small))
        assert pre.get("failed") and "not enough free space" in pre["msg"] and "bytes free" in pre["msg"]
        assert "pg_database_size" in pre["msg"] and "space_factor" in pre["msg"]
        # pre-flight disabled: the dump itself hits ENOSPC -> clear error, nothing visible, old backup intact
        db.psql(
            "CREATE TABLE IF NOT EXISTS fill AS SELECT g, md5(g::text) || md5((g*7)::text) AS t FROM generate_series(1, 120000) g"
        )
        full = run_module("ner11.ops.pg_backup", args(db, bdir, space_factor=0.0, compression="none", **small))
        assert full.get("failed") and "pg_dump" in full["msg"], full.get("msg")
        ids = [m["backup_id"] for m in cat.Catalog(str(bdir)).list("database")]
        assert ids == [old["backup_id"]]
        assert not [n for n in os.listdir(bdir / "database") if n.startswith(cat.PARTIAL_PREFIX)]
        assert cat.Catalog(str(bdir)).verify("database", old["backup_id"]) == []
        # a read-only backup_dir: a plain failure naming the path and the fix, nothing changed
        subprocess.run(["mount", "-o", "remount,ro", str(bdir)], check=True)
        ro = run_module("ner11.ops.pg_backup", args(db, bdir, space_factor=0.0, **small))
        assert ro.get("failed") and ro["changed"] is False and "Traceback" not in json.dumps(ro), ro
        assert "Read-only file system" in ro["msg"] and "check free space and permissions on %s" % bdir in ro["msg"], ro["msg"]
        assert [m["backup_id"] for m in cat.Catalog(str(bdir)).list("database")] == [old["backup_id"]]
    finally:
        db.psql("DROP TABLE IF EXISTS fill")
        unmount(str(bdir))


def _pids_with(needle):
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # pg_dump itself (and its -j workers), not pg_dumpall, which writes globals.sql into the
        # same partial first in the one backup sidecar.
        if needle in cmdline and cmdline.split(" ", 1)[0] == "pg_dump":
            out.append(int(pid))
    return out


def test_killed_pg_dump_leaves_no_backup_and_next_run_cleans(db, tmp_path):
    bdir = tmp_path / "bk"
    db.psql(
        "CREATE TABLE IF NOT EXISTS big AS SELECT g, md5(g::text) AS a, md5((g+1)::text) AS b, md5((g+2)::text) AS c "
        "FROM generate_series(1, 600000) g"
    )
    try:
        partial_root = str(bdir / "database")
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(run_module("ner11.ops.pg_backup", args(db, bdir, compression="none")))
        )
        thread.start()
        killed = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not killed:
            for pid in _pids_with(partial_root):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)
        thread.join(300)
        assert killed, "pg_dump never showed up"
        assert result.get("failed") and "pg_dump of ner11_db failed" in result["msg"], result.get("msg")
        assert cat.Catalog(str(bdir)).list("database") == []
        assert not [n for n in os.listdir(partial_root) if not n.startswith(".lock")]
        # a killed *run* leaves a partial behind: simulate it and let the next run clean it
        os.makedirs(os.path.join(partial_root, ".partial-ner11_db-20000101T000000Z", "dump"), mode=0o700)
        ok = run_module("ner11.ops.pg_backup", args(db, bdir))
        assert ok["changed"] and ok["cleaned_partials"] == [".partial-ner11_db-20000101T000000Z"], ok.get("msg")
        assert [n for n in os.listdir(partial_root) if n.startswith(".")] == [".lock"]
    finally:
        db.psql("DROP TABLE IF EXISTS big")


def test_counts_before_overlap_the_sidecar_start_and_pg_dump_waits_for_them(db, tmp_path):
    """Issue 16 on real PostgreSQL: the canary counts "before" block on a locked table while the sidecar
    starts and dumps the globals; pg_dump (its snapshot) starts only once they returned."""
    bdir = tmp_path / "bk"
    db.psql("DROP TABLE IF EXISTS lockme; CREATE TABLE lockme (id int primary key); INSERT INTO lockme VALUES (1), (2), (3);")
    holder = subprocess.Popen(  # noqa: S603 - fixed argv
        ["docker", "exec", "-i", "-u", "postgres", db.container("postgres"), "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-d", db.model["db_name"]],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        holder.stdin.write("BEGIN; LOCK TABLE lockme IN ACCESS EXCLUSIVE MODE; INSERT INTO lockme VALUES (4);\n")
        holder.stdin.flush()
        deadline = time.monotonic() + 30
        lock_sql = (
            "SELECT count(*) FROM pg_locks WHERE relation = 'lockme'::regclass AND mode = 'AccessExclusiveLock' AND granted"
        )
        while db.psql(lock_sql) != "1":
            assert time.monotonic() < deadline, "the lock was never taken"
            time.sleep(0.1)
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(run_module("ner11.ops.pg_backup", args(db, bdir, canary_tables=["lockme"])))
        )
        thread.start()
        partial_root = str(bdir / "database")
        globals_seen = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and globals_seen is None:
            for name in os.listdir(partial_root) if os.path.isdir(partial_root) else []:
                path = os.path.join(partial_root, name, "globals.sql")
                if name.startswith(cat.PARTIAL_PREFIX) and os.path.isfile(path) and os.path.getsize(path) > 0:
                    globals_seen = path
            time.sleep(0.05)
        assert globals_seen, "the sidecar never dumped the globals while the counts were blocked"
        time.sleep(1.5)  # the sidecar waits: no pg_dump process, no dump directory while the counts block
        assert _pids_with(partial_root) == []
        assert not os.path.exists(os.path.join(os.path.dirname(globals_seen), "dump"))
        assert thread.is_alive()
        holder.stdin.write("COMMIT;\n")
        holder.stdin.close()
        thread.join(300)
        assert result.get("changed") and not result.get("failed"), result.get("msg")
        manifest = result["manifest"]
        # the blocked count's snapshot is from before the lock was released (3 rows); the dump, which
        # started after the count returned, and the count after it see the committed row: before <= dump <= after
        assert manifest["row_counts"] == {"lockme": 3} and manifest["row_counts_after"] == {"lockme": 4}
        steps = {s["step"]: s["s"] for s in result["steps"]}
        assert steps["wait for the canary row counts before"] >= 1.0, result["steps"]
        assert {f["path"] for f in manifest["files"]} >= {"globals.sql", "dump/toc.dat"}
        assert not [f["path"] for f in manifest["files"] if ".ner11-" in f["path"]]
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(30)
        db.psql("DROP TABLE IF EXISTS lockme")


def _stats(result):
    """localhost's part of the run's global set_stats (summaries are keyed by host)."""
    return {k: v.get("localhost", v) if isinstance(v, dict) else v for k, v in result.custom_stats.items()}


def test_backup_playbook_four_steps_and_verify_playbook(db, tmp_path):
    ev = {
        "ner11_stack": db.vars["ner11_stack"],
        "ner11_db_password": db.password,
        "ner11_backup_dir": str(tmp_path / "bk"),
        "ner11_backup_components": ["db"],
        "ner11_backup_metrics_dir": str(tmp_path / "metrics"),
    }
    plan = run_playbook("playbooks/backup.yml", ev, check=True, env=STATS)
    assert plan.rc == 0, plan.explain()
    assert plan.task("Back up the database")["changed"] is True
    assert not (tmp_path / "bk" / "database").exists() or cat.Catalog(str(tmp_path / "bk")).list("database") == []
    first = run_playbook("playbooks/backup.yml", ev, env=STATS)
    assert first.rc == 0, first.explain()
    backup_id = _stats(first)["ner11_backup"]["db"]
    assert [m["backup_id"] for m in cat.Catalog(str(tmp_path / "bk")).list("database")] == [backup_id]
    prom = (tmp_path / "metrics" / "ner11_backup.prom").read_text()
    source = db.model["db_name"]
    assert 'ner11_backup_last_success_timestamp_seconds{kind="database",source="%s"}' % source in prom
    assert 'ner11_backup_verify_ok{kind="database"} 1' in prom and 'ner11_backup_size_bytes{kind="database",source=' in prom
    recheck = run_playbook("playbooks/backup.yml", ev, check=True, env=STATS)
    assert recheck.rc == 0 and recheck.changed() == 0, (recheck.explain(), recheck.changed_tasks())
    again = run_playbook("playbooks/backup.yml", ev, env=STATS)
    assert again.rc == 0 and again.changed() == 0, (again.explain(), again.changed_tasks())
    assert _stats(again)["ner11_backup"]["db"] == backup_id
    assert db.password not in first.stdout + again.stdout

    verify = run_playbook("playbooks/verify_backups.yml", dict(ev, ner11_test_restore=True))
    assert verify.rc == 0 and verify.changed() == 0, verify.explain()
    restored = verify.task("Verify the backups of each component")["results"][0]["test_restore"]
    assert restored["row_counts"] == CANARIES and restored["errors"] == []


def test_backup_playbook_two_volumes_manual_backup_and_two_hosts(db, tmp_path):
    """Issue 8, items 1, 2 and 5 on one catalog: retention, period idempotence and RPO work per source identity."""
    vols = ["%s-models-a" % db.project, "%s-models-b" % db.project]
    for i, vol in enumerate(vols):
        docker("volume", "create", "--label", "io.ner11.project=%s" % db.project, vol)
        docker("run", "--rm", "-v", "%s:/v" % vol, "ner11/base:ref", "sh", "-c", "echo model-%d > /v/weights.bin" % i)
    # a stopped container that uses both volumes (its image is the helper that copies them)
    docker("create", "--name", "%s-volholder" % db.project, "--label", "io.ner11.project=%s" % db.project,
           "-v", "%s:/a" % vols[0], "-v", "%s:/b" % vols[1], "ner11/base:ref", "true")  # fmt: skip
    bdir = tmp_path / "bk"
    catalog = cat.Catalog(str(bdir))
    ev = {
        "ner11_stack": db.vars["ner11_stack"],
        "ner11_db_password": db.password,
        "ner11_backup_dir": str(bdir),
        "ner11_backup_components": ["db", "volumes"],
        "ner11_backup_volumes": vols,
        "ner11_backup_metrics_dir": str(tmp_path / "metrics"),
    }
    manual = run_playbook("playbooks/backup.yml", dict(ev, ner11_backup_period="manual"), env=STATS)
    assert manual.rc == 0, manual.explain()
    manual_id = _stats(manual)["ner11_backup"]["db"]
    daily = run_playbook("playbooks/backup.yml", ev, env=STATS)
    assert daily.rc == 0, daily.explain()
    daily_id = _stats(daily)["ner11_backup"]["db"]
    # item 2: the daily run made its own backup and the manual one of the same day survived its prune
    assert daily_id != manual_id
    assert {m["backup_id"] for m in catalog.list("database")} == {manual_id, daily_id}
    # item 1: both volumes keep their backups (one identity each)
    by_volume = {m["source"]["volume"]: m for m in catalog.list("volume")}
    assert sorted(by_volume) == sorted(vols)
    assert {m["source"]["host"] for m in catalog.list("volume")} == {"localhost"}  # the inventory hostname
    prom = (tmp_path / "metrics" / "ner11_backup.prom").read_text()
    for vol in vols:  # one series per volume (one label set twice would make node_exporter reject the file)
        assert 'ner11_backup_size_bytes{kind="volume",source="%s"}' % vol in prom
    pruned = daily.task("Apply the retention policy")["results"]
    assert all(r.get("deleted") == [] for r in pruned), [r.get("deleted") for r in pruned]

    # item 5: a second host writing the same catalog never gets localhost's backup as "already done"
    other = dict(ev, ner11_backup_components=["db"], backup_source_host="db-host-b")
    first_b = run_playbook("playbooks/backup.yml", other, env=STATS)
    assert first_b.rc == 0, first_b.explain()
    b_id = _stats(first_b)["ner11_backup"]["db"]
    assert b_id not in (manual_id, daily_id) and catalog.read_manifest("database", b_id)["source"]["host"] == "db-host-b"
    again_b = run_playbook("playbooks/backup.yml", other, env=STATS)
    assert again_b.rc == 0 and again_b.changed() == 0, again_b.changed_tasks()
    assert _stats(again_b)["ner11_backup"]["db"] == b_id
    # each host prunes and judges only its own identities; the table shows one row per identity
    table = run_module("ner11.ops.backup_verify", {"backup_dir": str(bdir), "max_age_hours": 26})
    assert table["status"] == "ok", table.get("msg")
    hosts = sorted((row["host"], row["object"], row["good"]) for row in table["identities"])
    assert hosts == [("db-host-b", "ner11_db", 1), ("localhost", "ner11_db", 2)]
    [row_b] = [row for row in table["identities"] if row["host"] == "db-host-b"]
    assert row_b["newest_backup_id"] == b_id and row_b["rpo"] == "ok"
    verify = run_playbook("playbooks/verify_backups.yml", dict(ev, ner11_backup_components=["db", "volumes"]), env=STATS)
    assert verify.rc == 0 and verify.changed() == 0, verify.explain()
    rows = _stats(verify)["ner11_backup_identities"]
    assert sorted(r["object"] for r in rows) == sorted(["ner11_db"] + vols)  # this host's identities only
    lines = verify.task("Show one line per source identity")["msg"]
    assert lines[0].startswith("kind | object | host") and any(vols[1] in line and "| ok" in line for line in lines), lines
    # the daily run found the volumes unchanged: it recorded that, and the RPO counts from it
    fresh = [r for r in rows if r["object"] in vols]
    assert all(r["confirmed_at"] and r["scheduled"] and r["rpo"] == "ok" for r in fresh), fresh


def test_a_flipped_byte_recorded_by_verify_makes_prune_keep_the_older_good_backup(db, tmp_path):
    """Issue 8, item 4: the corrupt newest backup never takes the day's slot from the good older one."""
    bdir = tmp_path / "bk"
    older = run_module("ner11.ops.pg_backup", args(db, bdir))
    newer = run_module("ner11.ops.pg_backup", args(db, bdir, force=True))  # same day, newer
    assert older["changed"] and newer["changed"] and newer["backup_id"] != older["backup_id"]
    victim = os.path.join(newer["path"], "globals.sql")
    with open(victim, "r+b") as fh:
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0x01]))
    policy = {"backup_dir": str(bdir), "keep_daily": 1, "keep_weekly": 0, "keep_monthly": 0, "keep_min": 0}
    # not yet known to be bad: the newest takes the day, the good older one would go
    blind = run_module("ner11.ops.backup_prune", policy, check=True)
    assert blind["deleted"] == [older["backup_id"]]
    report = run_module("ner11.ops.backup_verify", {"backup_dir": str(bdir), "fail_on_error": False})
    assert {b["backup_id"]: b["status"] for b in report["backups"]} == {older["backup_id"]: "ok", newer["backup_id"]: "failed"}
    plan = run_module("ner11.ops.backup_prune", policy, check=True)
    applied = run_module("ner11.ops.backup_prune", policy)
    for result in (plan, applied):
        assert result["deleted"] == [] and result["failed_backups"] == [newer["backup_id"]], result
        assert "newest" in result["kept"][older["backup_id"]]
    assert sorted(os.listdir(str(bdir / "database"))) == sorted([".lock", older["backup_id"], newer["backup_id"]])
    # latest and the period's idempotence answer with the good one
    assert run_module("ner11.ops.pg_backup", args(db, bdir))["backup_id"] == older["backup_id"]


def test_pinned_backup_and_backup_pin_four_steps(db, tmp_path):
    """keep_until on pg_backup publishes the backup pinned; backup_pin pins/releases by reason, in four steps."""
    bdir = tmp_path / "bk"
    made = run_module("ner11.ops.pg_backup", args(db, bdir, period="manual", keep_until="2d", keep_reason="before upgrade"))
    assert made["changed"] and [p["reason"] for p in made["pins"]] == ["before upgrade"], made.get("msg")
    with open(os.path.join(made["path"], "pins.json")) as fh:
        assert json.load(fh)["pins"] == made["pins"]
    assert cat.Catalog(str(bdir)).verify("database", made["backup_id"]) == []  # pins.json is not part of the backup
    pin = {"backup_dir": str(bdir), "backup_id": made["backup_id"], "keep_until": "30d", "reason": "maintenance window"}
    steps = [run_module("ner11.ops.backup_pin", pin, check=check) for check in (True, False, True, False)]
    assert [r["changed"] for r in steps] == [True, True, False, False], [r.get("msg") for r in steps]
    assert [p["reason"] for p in steps[0]["pins"]] == ["before upgrade", "maintenance window"]
    assert len(cat.Catalog(str(bdir)).pins("database", made["backup_id"])) == 2
    release = dict(pin, state="absent")
    release.pop("keep_until")
    gone = [run_module("ner11.ops.backup_pin", release, check=check) for check in (True, False, True, False)]
    assert [r["changed"] for r in gone] == [True, True, False, False]
    assert [p["reason"] for p in gone[-1]["pins"]] == ["before upgrade"] and gone[-1]["keep_until"]
    bad = run_module("ner11.ops.backup_pin", dict(pin, keep_until="next week"))
    assert bad.get("failed") and "2026-12-31T00:00:00Z, or a duration" in bad["msg"]


def test_zz_database_down_fails_clearly(db, tmp_path):
    container = db.container("postgres")
    docker("stop", container)
    try:
        res = run_module("ner11.ops.pg_backup", args(db, tmp_path / "bk"))
        assert res.get("failed") and "is exited, not running" in res["msg"] and "start" in res["msg"], res.get("msg")
        assert shlex.quote(db.password) not in json.dumps(res)
    finally:
        docker("start", container)

"""zstd backups (issue 16): pg_dump 17 of the client image against the PostgreSQL 15 server, read back strictly.

One PostgreSQL-only container (the reference image) for the module; every test has its own
backup_dir under tmp_path. Needs the client image ner11/pgclient:ref (``make pgclient``,
images/pgclient/build.sh; ``make integration`` builds it first).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import StandalonePostgres, docker, run_module

from ansible_collections.ner11.ops.plugins.module_utils.pgbackup_formats import judge_lenient_restore

CLIENT_IMAGE = "ner11/pgclient:ref"
CANARIES = {"vendor_equipment": 321, "threat_intelligence": 45, "compliance_frameworks": 6}


@pytest.fixture(scope="module")
def pg():
    if docker("image", "inspect", CLIENT_IMAGE, check=False).returncode != 0:
        pytest.fail("image %s is missing: build it with 'make pgclient' (images/pgclient/build.sh)" % CLIENT_IMAGE)
    server = StandalonePostgres("itz")
    try:
        server.start(deadline_s=600)  # initdb alone takes minutes on a saturated machine
        for table, rows in CANARIES.items():
            server.sql(
                "CREATE TABLE %s (id int primary key, payload text, created_at timestamptz default now());"
                "INSERT INTO %s (id, payload) SELECT g, md5(g::text) FROM generate_series(1, %d) g;" % (table, table, rows)
            )
        yield server
    finally:
        server.remove()


def backup_args(pg, backup_dir, **extra):
    out = {
        "backup_dir": str(backup_dir),
        "container": pg.name,
        "login_password": pg.password,
        "format": "directory",
        "compression": "zstd:1",
        "period": "daily",
        "connect_timeout": 60,
    }
    out.update(extra)
    return out


def test_zstd_backup_check_apply_idempotent_verified_and_restored(pg, tmp_path):
    args = backup_args(pg, tmp_path / "b")
    planned = run_module("ner11.ops.pg_backup", args, check=True)
    assert planned.get("changed") is True and not planned.get("failed"), planned.get("msg")
    assert planned["plan"]["client_image"] == CLIENT_IMAGE and "-Z zstd:1" in planned["plan"]["commands"][0]
    assert not os.path.exists(str(tmp_path / "b" / "database")) or not os.listdir(str(tmp_path / "b" / "database"))
    made = run_module("ner11.ops.pg_backup", args)
    assert made.get("changed") is True and not made.get("failed"), made.get("msg")
    manifest = made["manifest"]
    assert manifest["compression"] == "zstd:1" and manifest["client_image"] == CLIENT_IMAGE
    assert manifest["pg_dump_version"].startswith("pg_dump (PostgreSQL) 1") and " 15." not in manifest["pg_dump_version"]
    assert int(manifest["pg_dump_version"].split()[2].split(".")[0]) >= 16
    assert manifest["source"]["server_version_num"] // 10000 == 15 and manifest["row_counts"] == CANARIES
    data_files = [f["path"] for f in manifest["files"] if f["path"].startswith("dump/") and f["path"] != "dump/toc.dat"]
    assert data_files and all(p.endswith(".dat.zst") for p in data_files), data_files
    steps = [s["step"] for s in made["steps"]]
    assert "pg_restore --list" in steps and "sha256 of every file" in steps and steps[-1].startswith("publish")
    assert any("PostgreSQL 16 or later" in n for n in manifest["restore"]["notes"])
    # the same period: nothing new, in check mode and for real
    again = run_module("ner11.ops.pg_backup", args, check=True)
    assert again.get("changed") is False and again["backup_id"] == made["backup_id"], again
    again = run_module("ner11.ops.pg_backup", args)
    assert again.get("changed") is False and again["backup_id"] == made["backup_id"], again

    # backup_verify reads it with the client image and test-restores it into the PostgreSQL 15 server
    # connect_timeout: the machine running CI is shared; a 10 s connect can time out under load
    verify = {"backup_dir": str(tmp_path / "b"), "container": pg.name, "login_password": pg.password, "connect_timeout": 60}
    ok = run_module("ner11.ops.backup_verify", dict(verify, test_restore=True))
    assert ok["status"] == "ok", ok.get("errors") or ok.get("msg")
    assert "archive" in ok["backups"][0]["checks"] and ok["test_restore"]["row_counts"] == CANARIES

    # pg_restore: a new database, read by mount (no copy), only the known old-server error accepted
    restore = {
        "db_name": "restored_zstd",
        "backup_dir": str(tmp_path / "b"),
        "backup_id": made["backup_id"],
        "container": pg.name,
        "login_password": pg.password,
        "jobs": 2,
        "connect_timeout": 60,
    }
    done = run_module("ner11.ops.pg_restore", restore)
    assert done.get("changed") is True and done["restored"] is True, done.get("msg")
    assert done["plan"]["read_dump_by_mount"] is True and done["plan"]["copy_dump_into_container"] is False
    assert done["row_counts"] == CANARIES
    same = run_module("ner11.ops.pg_restore", restore)
    assert same.get("changed") is False and same["operation"] in ("none", "skip"), same
    # without a password the sidecar cannot log in: refused, nothing touched
    refused = run_module("ner11.ops.pg_restore", dict(restore, db_name="restored_zstd_2", login_password=None))
    assert refused.get("failed") and "set login_password" in refused["msg"]
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname LIKE 'restored_zstd_2%';") == "0"


def test_the_strict_judge_on_real_pg_restore_17_output(pg, tmp_path):
    """The real stderr of pg_restore 17 into the 15 server passes; a real other error fails."""
    made = run_module("ner11.ops.pg_backup", backup_args(pg, tmp_path / "b", period="manual"))
    assert not made.get("failed"), made.get("msg")
    dump = os.path.join(made["path"], "dump")
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:postgres:%s\n" % pg.password)
    passfile.chmod(0o600)
    pg.sql("CREATE DATABASE judge_zstd;")

    def restore():
        argv = ["docker", "run", "--rm", "--network", "container:%s" % pg.name, "--label", "io.ner11.test=1"]
        argv += ["--user", "%d:%d" % (os.getuid(), os.getgid()), "-v", "%s:%s:ro" % (made["path"], made["path"])]
        argv += ["-v", "%s:/run/pgpass:ro" % passfile, "-e", "PGPASSFILE=/run/pgpass", "--entrypoint", "pg_restore"]
        argv += [CLIENT_IMAGE, "-h", "127.0.0.1", "-U", "postgres", "-j", "2", "-d", "judge_zstd", dump]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)

    first = restore()
    assert judge_lenient_restore(first.returncode, first.stderr) is None, first.stderr
    second = restore()  # every table exists now: real errors besides the known one
    problem = judge_lenient_restore(second.returncode, second.stderr)
    assert problem and "already exists" in problem, second.stderr

"""pg_backup -> backup_verify -> pg_restore through the cores, against a scripted server (pg_double).

Real catalog files are written, hashed, published and verified; only the answers of
docker/psql are scripted (the same paths run against real PostgreSQL in tests/integration).
"""

from __future__ import annotations

import datetime
import os

import pg_double
import pytest
from pg_double import TOC, ScriptedServer

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat
from ansible_collections.ner11.ops.plugins.module_utils import pgbackup as pb
from ansible_collections.ner11.ops.plugins.module_utils import pgbackup_verify as ver
from ansible_collections.ner11.ops.plugins.module_utils import pgexec
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore as pr
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_plan as plan
from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_repair as repair

COUNTS = {"public.t": 3, "vendor_equipment": 5}
NOW = datetime.datetime(2026, 11, 29, 2, 0, 0, tzinfo=datetime.timezone.utc)


def backup_params(tmp_path, **extra):
    return pg_double.backup_params(tmp_path, COUNTS, **extra)


def make_backup(tmp_path, server=None, **extra):
    server = server or ScriptedServer(COUNTS)
    job = pb.PgBackup(backup_params(tmp_path, **extra), server, now=NOW)
    return job, job.run(), server


# -- pg_backup ---------------------------------------------------------------------------
def test_backup_check_mode_plans_and_writes_nothing(tmp_path):
    server = ScriptedServer(COUNTS)
    job = pb.PgBackup(backup_params(tmp_path), server, check_mode=True, now=NOW)
    result = job.run()
    assert result["changed"] is True and result["plan"]["format"] == "custom"
    assert result["backup_id"].startswith("my-db-20261129T020000Z")
    assert not os.path.exists(str(tmp_path / "b" / "database"))
    assert any("pg_dump -U postgres -Fc -Z 1 my-db" in c for c in result["plan"]["commands"])
    assert all("> " not in line for line in server.lines())  # nothing was dumped


def test_backup_creates_publishes_and_is_idempotent_per_period(tmp_path):
    job, result, server = make_backup(tmp_path)
    assert result["changed"] is True
    manifest = result["manifest"]
    assert manifest["status"] == "verified" and manifest["row_counts"] == COUNTS
    assert manifest["toc_entries"] == 2 and manifest["format"] == "custom"
    assert manifest["source"]["db_name"] == "my-db" and manifest["pg_dump_version"].startswith("pg_dump")
    assert os.path.isfile(os.path.join(result["path"], "dump.pgdump"))
    assert job.executed and all("login_password" not in c for c in job.executed)
    # Every safety step ran and is reported with its time (the bench prints them).
    steps = [s["step"] for s in result["steps"]]
    for needed in ("canary row counts before", "pg_dump", "canary row counts after", "pg_restore --list"):
        assert needed in steps, steps
    assert steps[-1] == "publish: names and sizes re-check, manifest, fsync, rename" and "sha256 of every file" in steps
    assert all(s["s"] >= 0 for s in result["steps"])
    # The version comes from the listing; this one has no "Dumped by" line, so pg_dump --version ran (after the dump).
    assert "pg_dump --version" in steps and steps.index("pg_dump --version") > steps.index("pg_dump")
    # The same period again: the existing backup, nothing new.
    again = pb.PgBackup(backup_params(tmp_path), ScriptedServer(COUNTS), now=NOW).run()
    assert again["changed"] is False and again["backup_id"] == result["backup_id"]
    # keep_until on the existing one pins it (a change), then nothing.
    pinned = pb.PgBackup(backup_params(tmp_path, keep_until="30d"), ScriptedServer(COUNTS), now=NOW).run()
    assert pinned["changed"] is True and pinned["pins"]


def test_backup_records_a_count_range_when_rows_change_during_the_dump(tmp_path):
    server = ScriptedServer(dict(COUNTS))

    def grow(line, data):
        server.counts["public.t"] = 4
        return server._write_dump(line, data)

    server.answer(lambda t: "pg_dump -U" in t and " > " in t, grow)
    _job, result, _server = make_backup(tmp_path, server)
    assert result["manifest"]["row_counts"]["public.t"] == 3
    assert result["manifest"]["row_counts_after"]["public.t"] == 4


@pytest.mark.parametrize(
    "needle,reply,message",
    [
        ("{{.State.Status}}", (1, "", "Error: No such object: pg1"), "container pg1 not found"),
        ("{{.State.Status}}", (0, "exited|sha256:1\n", ""), "container pg1 is exited, not running"),
        ("server_version_num", (2, "", "could not connect to server"), "cannot query the database server"),
        ("server_version_num", (0, "15.4\x1f150004\x1f\n", ""), "database my-db does not exist"),
        ("--list", (1, "", "pg_restore: error: input file is too short"), "pg_restore --list could not read"),
        ("--list", (0, ";\n", ""), "found no entries"),
        (lambda t: "pg_dump -U" in t and " > " in t, (1, "", "pg_dump: error: connection lost"), "pg_dump of my-db failed"),
    ],
)
def test_backup_failures_name_the_cause_and_leave_no_partial(tmp_path, needle, reply, message):
    server = ScriptedServer(COUNTS)
    server.answer(needle, reply)
    with pytest.raises(pb.PgBackupError, match=message):
        make_backup(tmp_path, server)
    kind_dir = tmp_path / "b" / "database"
    assert not kind_dir.exists() or [p.name for p in kind_dir.iterdir() if p.name != ".lock"] == []


def test_backup_directory_format_needs_a_password_in_container_mode(tmp_path):
    with pytest.raises(pb.PgBackupError, match="needs login_password"):
        make_backup(tmp_path, format="directory")


def test_backup_directory_format_runs_a_sidecar_with_the_passfile(tmp_path):
    job = pb.PgBackup(backup_params(tmp_path, login_password="s3cret", jobs=2), ScriptedServer(COUNTS), check_mode=True, now=NOW)
    result = job.run()
    assert result["plan"]["format"] == "directory" and len(result["plan"]["commands"]) == 1
    sidecar = result["plan"]["commands"][0]
    assert "--network container:pg1" in sidecar and "--entrypoint sh" in sidecar and "-Fd -Z 1 -j 2" in sidecar
    assert "PGPASSFILE=/run/ner11/pgpass" in sidecar and "PGHOST=127.0.0.1" in sidecar and "s3cret" not in sidecar
    # The raw pg_dump line (what the bench compares with) is still built the one way: PgTarget's sidecar.
    kind, argv = job.dump_command("directory", "gzip", 1, 2, "/p", "dump")
    assert kind == "argv" and argv[argv.index("--entrypoint") + 1] == "pg_dump" and "-h" in argv


def _sidecar_backup(tmp_path, server, **extra):
    return make_backup(tmp_path, server, login_password="s3cret", format="directory", **extra)


def test_directory_backup_runs_globals_dump_and_listing_in_one_sidecar(tmp_path):
    server = ScriptedServer(COUNTS)
    server.toc = TOC + ";     Dumped by pg_dump version: 15.4 (Debian 15.4-2)\n"
    job, made, server = _sidecar_backup(tmp_path, server)
    lines = server.lines()
    runs = [c for c in lines if c.startswith("docker run ")]
    assert len(runs) == 1 and "--entrypoint sh" in runs[0] and "--network container:pg1" in runs[0]
    assert not any("docker exec" in c and ("pg_dump" in c or "pg_restore" in c) for c in lines)  # no exec, no --version
    assert all("s3cret" not in c for c in lines + job.executed + server.sidecar_tools)
    # inside the one sidecar: globals, then the dump, then the listing, each connected by the environment
    tools = [t.split()[0] for t in server.sidecar_tools]
    assert tools == ["pg_dumpall", "pg_dump", "pg_restore"], server.sidecar_tools
    assert all("PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGPASSFILE=/run/ner11/pgpass" in t for t in server.sidecar_tools)
    assert "--no-role-passwords" in server.sidecar_tools[0] and "-Fd -Z 1 -j 2 -f" in server.sidecar_tools[1]
    manifest = made["manifest"]
    assert manifest["pg_dump_version"] == "pg_dump (PostgreSQL) 15.4 (Debian 15.4-2)" and manifest["toc_entries"] == 2
    assert {f["path"] for f in manifest["files"]} == {"globals.sql", "dump/toc.dat", "dump/3001.dat.gz"}
    assert manifest["row_counts"] == COUNTS
    # every safety step ran and has its own time (from the script's marks)
    steps = [s["step"] for s in made["steps"]]
    # (the canary counts run beside the sidecar, issue 16: their own times follow, marked at_once)
    assert steps[steps.index("free space check, partial directory") + 1 :][:10] == [
        "sidecar start",
        "pg_dumpall --globals-only",
        "wait for the canary row counts before",
        "pg_dump",
        "pg_restore --list",
        "sidecar exit",
        "sha256 of every file",
        "wait for the canary row counts after",
        "canary row counts before (at once with the sidecar start)",
        "canary row counts after (at once with the sidecar exit, sha256)",
    ], steps
    assert [s["step"].split(" (")[0] for s in made["steps"] if s.get("at_once")] == [
        "canary row counts before",
        "canary row counts after",
    ]
    assert "pg_dump --version" not in steps and steps[-1].startswith("publish: names and sizes")
    # globals_role_passwords: the script's other branch
    server = ScriptedServer(COUNTS)
    _sidecar_backup(tmp_path / "again", server, globals_role_passwords=True)
    assert (
        server.sidecar_tools[0].startswith("pg_dumpall --globals-only -f ")
        and "--no-role-passwords" not in server.sidecar_tools[0]
    )
    # a listing without the "Dumped by" line: pg_dump --version of the server's container, after the sidecar
    assert made["manifest"] and any("pg_dump --version" in c for c in server.lines())


@pytest.mark.parametrize(
    "tool,rc,needle",
    [
        ("pg_dumpall", 1, r"pg_dumpall --globals-only failed on container pg1 .*step 1 of 3.*rc=41\): pg_dumpall: error: boom"),
        ("pg_dump", 1, r"pg_dump of my-db failed on container pg1 .*step 2 of 3.*rc=42\): pg_dump: error: boom.*run again"),
        ("pg_dump", 137, r"pg_dump of my-db failed .*rc=42"),  # pg_dump killed
        (
            "pg_restore",
            1,
            r"pg_restore --list could not read the new dump .*/dump \(step 3 of 3.*rc=43\): pg_restore: error: boom",
        ),
    ],
)
def test_each_sidecar_step_failure_names_the_step_and_leaves_no_partial(tmp_path, tool, rc, needle):
    server = ScriptedServer(COUNTS)
    server.fail[tool] = (rc, "%s: error: boom" % tool)
    with pytest.raises(pb.PgBackupError, match=needle) as info:
        _sidecar_backup(tmp_path, server)
    assert "ner11-step" not in str(info.value)
    kind_dir = tmp_path / "b" / "database"
    assert [p.name for p in kind_dir.iterdir() if p.name != ".lock"] == []
    assert any(c.startswith("docker ps -aq --filter label=io.ner11.pg_backup.catalog=") for c in server.lines())


def test_a_sidecar_that_does_not_start_and_an_empty_listing_fail_clearly(tmp_path):
    server = ScriptedServer(COUNTS)
    server.answer("--entrypoint sh ", (125, "", "docker: Error response from daemon: No such image: sha256:0123abcd."))
    with pytest.raises(
        pb.PgBackupError, match=r"backup sidecar \(docker run of sha256:0123abcd\) stopped with rc=125.*No such image"
    ):
        _sidecar_backup(tmp_path, server)
    server = ScriptedServer(COUNTS)
    server.toc = ";\n; Archive created at 2026-11-29\n"
    with pytest.raises(pb.PgBackupError, match="found no entries"):
        _sidecar_backup(tmp_path / "empty", server)


def test_sidecar_steps_from_marks_and_without_a_clock():
    marks, rest = pb.split_marks("ner11-step start 100.5\npg_dump: warning: x\nner11-step globals 101.0\nner11-step dump \n")
    assert marks == {"start": 100.5, "globals": 101.0} and rest == "pg_dump: warning: x"
    full = {"start": 100.5, "globals": 101.0, "counted": 101.5, "dump": 108.0, "list": 108.25}
    steps = pb.sidecar_steps(100.0, full, 108.5)
    assert [name for name, _s in steps][1:5] == [
        "pg_dumpall --globals-only",
        "wait for the canary row counts before",
        "pg_dump",
        "pg_restore --list",
    ]
    assert [round(s, 2) for _n, s in steps] == [0.5, 0.5, 0.5, 6.5, 0.25, 0.25]
    assert pb.sidecar_steps(100.0, marks, 108.5) == [(pb.SIDECAR_ONE_STEP, 8.5)]


def test_zstd_directory_backup_runs_pg_dump_of_the_client_image_and_is_restored_by_it(tmp_path):
    listing = TOC + ";     Dumped by pg_dump version: 17.6 (Debian 17.6-1)\n"
    server = ScriptedServer(COUNTS)
    server.toc = listing
    job, made, server = make_backup(tmp_path, server, login_password="pw", format="directory", compression="zstd:1")
    lines = server.lines()
    dump = [c for c in lines if "--entrypoint sh" in c][0]
    assert "ner11/pgclient:ref" in dump and "-Fd -Z zstd:1 -j 2" in dump and "--network container:pg1" in dump
    assert any(c.startswith("docker image inspect --format {{.Id}} ner11/pgclient:ref") for c in lines)
    assert not any("pg_dump --version" in c for c in lines)  # the server's pg_dump 15 did not make this dump
    manifest = made["manifest"]
    assert manifest["compression"] == "zstd:1" and manifest["client_image"] == "ner11/pgclient:ref"
    assert manifest["pg_dump_version"] == "pg_dump (PostgreSQL) 17.6 (Debian 17.6-1)"
    assert [t.split()[0] for t in server.sidecar_tools] == ["pg_dumpall", "pg_dump", "pg_restore"]  # the listing ran in it
    # restore: pg_restore of the client image in a sidecar, no --exit-on-error, strict on the errors
    known = (
        'pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter "transaction_timeout"\n'
        "Command was: SET transaction_timeout = 0;\n"
    )
    server = ScriptedServer(COUNTS)
    server.answer(lambda t: "--entrypoint pg_restore" in t and "-d my-db__ner11_restore" in t, (1, "", known * 2))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2, login_password="pw"), server, now=NOW)
    assert done["restored"] is True
    restore = [c for c in server.lines() if "--entrypoint pg_restore" in c and "-d my-db__ner11_restore" in c][0]
    assert "ner11/pgclient:ref" in restore and "--exit-on-error" not in restore
    server = ScriptedServer(COUNTS)
    bad = known + "pg_restore: error: could not execute query: ERROR:  permission denied for schema public\nCommand was: X;\n"
    server.answer(lambda t: "--entrypoint pg_restore" in t and "-d my-db__ner11_restore" in t, (1, "", bad))
    with pytest.raises(pr.RestoreError, match="permission denied for schema public"):
        pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2, login_password="pw"), server, now=NOW)
    assert any('DROP DATABASE IF EXISTS "my-db__ner11_restore"' in c for c in server.lines())
    # without a password the sidecar cannot log in: refused before anything is touched
    with pytest.raises(pr.RestoreError, match="set login_password"):
        pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2), ScriptedServer(COUNTS), now=NOW)
    # backup_verify reads it (and test-restores it) with the client image too
    server = ScriptedServer(COUNTS)
    params = {"backup_dir": str(tmp_path / "b"), "container": "pg1", "login_password": "pw", "test_restore": True}
    server.answer(lambda t: "--entrypoint pg_restore" in t and "-d ner11_test_restore" in t, (1, "", known))
    result = ver.BackupVerifier(params, server, now=NOW).run()
    assert result["status"] == "ok", result["errors"]
    assert all("ner11/pgclient:ref" in c for c in server.lines() if "--entrypoint pg_restore" in c)


def test_zstd_directory_backup_needs_the_client_image(tmp_path):
    server = ScriptedServer(COUNTS)
    server.answer("docker image inspect", (1, "", "Error: No such image: ner11/pgclient:ref"))
    with pytest.raises(pb.PgBackupError, match="make pgclient"):
        make_backup(tmp_path, server, login_password="pw", format="directory", compression="zstd:1")


def test_backup_host_mode_commands(tmp_path):
    params = backup_params(tmp_path, login_host="db.example", login_port=5433, login_password="pw", format="plain")
    params.pop("container")
    params["compression"] = "zstd:3"
    job = pb.PgBackup(params, ScriptedServer(COUNTS), check_mode=True, now=NOW)
    kind, line = job.dump_command("plain", "zstd", 3, 1, "/p", "dump.sql.zst")
    assert kind == "shell" and line.startswith("pg_dump -h db.example -p 5433 -U postgres -Fp") and "| zstd -q -T0 -3 >" in line
    kind, argv = job.globals_command("/p")
    assert kind == "argv" and argv[:2] == ["pg_dumpall", "-h"] and "--no-role-passwords" in argv
    assert job.list_command("custom", "/p", "dump.pgdump")[1][0] == "pg_restore"


# -- backup_verify -------------------------------------------------------------------------
def test_verify_checks_the_archive_and_test_restores_into_a_marked_scratch(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    params = {"backup_dir": str(tmp_path / "b"), "container": "pg1", "test_restore": True, "max_age_hours": 0}
    result = ver.BackupVerifier(params, server, now=NOW).run()
    assert result["status"] == "ok", result["errors"]
    assert result["backups"][0]["checks"] == ["manifest", "sha256", "archive"]
    restore = result["test_restore"]
    assert restore["row_counts"] == COUNTS and restore["errors"] == []
    assert any('CREATE DATABASE "ner11_test_restore" TEMPLATE template0' in c for c in server.lines())
    assert any('COMMENT ON DATABASE "ner11_test_restore" IS \'ner11.ops:' in c for c in server.lines())
    assert restore["actions"][-1] == "dropped ner11_test_restore"
    assert cat.Catalog(str(tmp_path / "b")).verification("database", made["backup_id"])["status"] == "ok"


def test_verify_refuses_an_unmarked_scratch_database(tmp_path):
    make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    server.answer(
        "coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname =",
        (0, "ner11_test_restore\x1f\n", ""),
    )
    params = {"backup_dir": str(tmp_path / "b"), "container": "pg1", "test_restore": True}
    with pytest.raises(pb.PgBackupError, match="exists and was not created by ner11.ops"):
        ver.BackupVerifier(params, server, now=NOW).run()
    assert not any("DROP DATABASE" in c for c in server.lines())


def test_verify_reports_a_count_mismatch_and_an_unreadable_archive(tmp_path):
    make_backup(tmp_path)
    server = ScriptedServer({"public.t": 2, "vendor_equipment": 5})
    params = {"backup_dir": str(tmp_path / "b"), "container": "pg1", "test_restore": True}
    result = ver.BackupVerifier(params, server, now=NOW).run()
    assert result["status"] == "failed"
    assert any("public.t: restored 2 rows, manifest says 3" in e for e in result["errors"])
    broken = ScriptedServer(COUNTS)
    broken.answer("--list", (1, "", "pg_restore: error: not an archive"))
    result = ver.BackupVerifier({"backup_dir": str(tmp_path / "b"), "container": "pg1"}, broken, now=NOW).run()
    assert any("pg_restore --list failed: pg_restore: error: not an archive" in e for e in result["errors"])


def test_verify_without_a_server_checks_checksums_only_and_finds_damage(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    params = {"backup_dir": str(tmp_path / "b")}
    result = ver.BackupVerifier(params, ScriptedServer(), now=NOW).run()
    assert result["status"] == "ok" and result["backups"][0]["checks"] == ["manifest", "sha256"]
    with open(os.path.join(made["path"], "dump.pgdump"), "r+b") as fh:
        fh.write(b"X")
    result = ver.BackupVerifier(dict(params, backup_id=made["backup_id"]), ScriptedServer(), now=NOW).run()
    assert result["status"] == "failed" and result["backups"][0]["status"] == "failed"
    with pytest.raises(pb.PgBackupError, match="not found"):
        ver.BackupVerifier(dict(params, backup_id="nope-20261129T020000Z"), ScriptedServer(), now=NOW).run()


# -- pg_restore ------------------------------------------------------------------------------
def restore_params(tmp_path, backup_id, **extra):
    params = {"container": "pg1", "db_name": "my-db", "backup_dir": str(tmp_path / "b"), "backup_id": backup_id}
    params.update(extra)
    return params


def test_restore_creates_a_missing_database_check_mode_first(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    planned = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, check_mode=True, now=NOW)
    assert planned["changed"] is True and planned["operation"] == "create" and planned["restored"] is False
    assert planned["plan"]["rename"] == {"my-db__ner11_restore": "my-db"}
    assert planned["plan"]["space"]["checked"] is True
    assert not any("CREATE DATABASE" in c for c in server.lines())
    server = ScriptedServer(COUNTS)
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert done["restored"] is True and done["row_counts"] == COUNTS
    lines = server.lines()
    assert any('CREATE DATABASE "my-db__ner11_restore" TEMPLATE template0' in c for c in lines)
    assert any('ALTER DATABASE "my-db__ner11_restore" RENAME TO "my-db"' in c for c in lines)
    assert done["globals"]["created"] == ["app"]  # globals.sql had a role the server lacks
    assert done["executed_commands"] and done["duration_s"] >= 0


def test_restore_refuses_a_mismatching_copy_and_drops_it(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    server = ScriptedServer({"public.t": 1, "vendor_equipment": 5})
    with pytest.raises(pr.RestoreError, match="does not match backup") as info:
        pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    assert any('DROP DATABASE IF EXISTS "my-db__ner11_restore" WITH (FORCE)' in c for c in server.lines())
    assert info.value.partial["changed"] is True  # the role from globals.sql was created


def test_restore_replaces_an_existing_database_with_confirm(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    server = ScriptedServer(COUNTS, databases={"my-db"})
    server.answer("FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relkind IN", (0, "public\x1ft\n", ""))
    with pytest.raises(pr.Refused, match="if_exists=replace and confirm=my-db"):
        pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, now=NOW)
    server = ScriptedServer(COUNTS, databases={"my-db"})
    server.answer("FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relkind IN", (0, "public\x1ft\n", ""))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"], if_exists="replace", confirm="my-db"), server, now=NOW)
    assert done["operation"] == "replace" and done["restored"] is True
    lines = server.lines()
    assert any('ALTER DATABASE "my-db" WITH ALLOW_CONNECTIONS false;' in c for c in lines)
    assert any('RENAME TO "my-db__ner11_old_20261129T020000"' in c for c in lines)
    assert any('DROP DATABASE IF EXISTS "my-db__ner11_old_20261129T020000" WITH (FORCE)' in c for c in lines)


def test_restore_repairs_what_a_killed_run_left_first(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    server = ScriptedServer(COUNTS)
    left = "my-db\x1ff\x1f\nmy-db__ner11_restore\x1ft\x1f%s\n" % repair.TEMP_COMMENT
    server.answer("datallowconn", (0, left, ""))
    server.answer("/proc/[0-9]*", (0, "pid 42 pg_restore\nstage /tmp/ner11-restore-my-db-abc\n", ""))
    planned = pr.run_restore(restore_params(tmp_path, made["backup_id"]), server, check_mode=True, now=NOW)
    assert planned["operation"] == "repair" and planned["changed"] is True
    assert "allow connections to my-db again (a killed restore left them disallowed)" in planned["plan"]["repair"]
    assert not any("kill -TERM" in c for c in server.lines())  # check mode changes nothing


def test_restore_input_errors_name_the_fix(tmp_path):
    with pytest.raises(pr.RestoreError, match="name the backup"):
        pr.run_restore({"container": "pg1", "db_name": "my-db", "backup_dir": str(tmp_path)}, ScriptedServer())
    with pytest.raises(pr.RestoreError, match="db_name 'a b' is not a valid PostgreSQL identifier"):
        pr.run_restore({"container": "pg1", "db_name": "a b", "latest": True}, ScriptedServer())
    with pytest.raises(pr.RestoreError, match="jobs must be 1 or more"):
        pr.run_restore({"container": "pg1", "db_name": "db", "latest": True, "jobs": -1}, ScriptedServer())
    with pytest.raises(pr.RestoreError, match="no verified full backup of database my-db"):
        pr.run_restore({"container": "pg1", "db_name": "my-db", "latest": True, "backup_dir": str(tmp_path)}, ScriptedServer())
    assert plan.validate_db_name("my-db") == "my-db"


# -- pgexec --------------------------------------------------------------------------------
def test_pgtarget_host_mode_uses_a_private_passfile_and_never_a_password_argument():
    server = ScriptedServer()
    params = {"login_host": "db", "login_port": 5433, "login_password": "pa:ss", "login_user": "app"}
    with pgexec.PgTarget(params, server) as target:
        target.execute("SELECT 1;", "x")
        line, _data = server.calls[0]
        assert line.startswith("psql -h db -p 5433 -U app -X -q -v ON_ERROR_STOP=1 -d x -c")
        env = target.environ()
        with open(env["PGPASSFILE"]) as fh:
            assert fh.read() == "*:*:*:app:pa\\:ss\n"
        assert oct(os.stat(env["PGPASSFILE"]).st_mode & 0o777) == "0o600"
        passfile = env["PGPASSFILE"]
    assert not os.path.exists(passfile)  # removed when the target closes
    assert "pa:ss" not in " ".join(server.lines())


def test_pgtarget_databases_and_failures():
    server = ScriptedServer()
    target = pgexec.PgTarget({"container": "pg1"}, server)
    target.create_database("my-db", "ner11.ops: test")
    assert server.lines()[-2].endswith('-d postgres -c CREATE DATABASE "my-db" TEMPLATE template0;')
    assert "COMMENT ON DATABASE \"my-db\" IS 'ner11.ops: test';" in server.lines()[-1]
    assert target.database_comment("my-db") is None
    server.answer("shobj_description", (0, "my-db\x1f\n", ""))
    assert target.database_comment("my-db") == ""  # exists, no comment: never read as absent
    server.answer("DROP DATABASE", (1, "", "ERROR:  database is being accessed\n"))
    assert target.drop_database("my-db") == "ERROR:  database is being accessed"
    server.answer("SELECT 42", (2, "", "psql: error: connection refused\n"))
    with pytest.raises(pgexec.PgExecError, match=r"psql failed on container pg1 \(as postgres\) \(rc=2\): psql: error"):
        target.query("SELECT 42;")
    assert target.query("SELECT 42;", check=False) is None
    assert target.canary_counts([], "db") == {}
    with pytest.raises(pgexec.PgExecError, match="set either container"):
        pgexec.PgTarget({}, server)
    server.answer("{{.State.Status}}", (1, "", "Error: No such object: pg1\n"))
    assert target.container_state() == (None, "Error: No such object: pg1")
    assert pgexec.postgres_module_kwargs({"x": {"type": "str"}})["argument_spec"]["x"] == {"type": "str"}


USER_TABLES = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relkind IN"


def existing_server(counts=None):
    server = ScriptedServer(counts or COUNTS, databases={"my-db"})
    server.answer(USER_TABLES, (0, "public\x1ft\n", ""))
    return server


def test_selective_table_restore_check_then_apply_in_one_transaction(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    params = restore_params(tmp_path, made["backup_id"], tables=["public.t"])
    with pytest.raises(pr.Refused, match="set confirm=my-db"):
        pr.run_restore(params, existing_server(), now=NOW)
    params["confirm"] = "my-db"
    server = existing_server({"public.t": 2})
    planned = pr.run_restore(params, server, check_mode=True, now=NOW)
    assert planned["operation"] == "tables" and planned["plan"]["truncate"] == ["public.t"]
    assert not any("--data-only" in c for c in server.lines())
    server = existing_server()
    done = pr.run_restore(params, server, now=NOW)
    assert done["restored"] is True and done["row_counts"] == {"public.t": 3}
    restore_line = [c for c in server.lines() if "--data-only" in c][0]
    assert 'TRUNCATE ONLY "public"."t";' in restore_line and "--single-transaction" in restore_line
    assert "<pre.sql>" in done["executed_commands"][[i for i, c in enumerate(done["executed_commands"]) if "--data-only" in c][0]]
    # rows newer than the backup: the transaction rolls back and the run refuses
    newer = existing_server()
    newer.answer("--data-only", (3, "", "ERROR:  ner11: table public.t held rows newer than the backup; set force=true"))
    with pytest.raises(pr.Refused, match="rolled back, nothing was changed"):
        pr.run_restore(params, newer, now=NOW)


def test_selective_restore_refuses_missing_and_referenced_tables(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    params = restore_params(tmp_path, made["backup_id"], tables=["public.t"], confirm="my-db")
    server = existing_server()
    server.answer("k.contype = 'f'", (0, "public.child\x1fpublic.t\n", ""))
    with pytest.raises(pr.Refused, match="referenced by foreign keys from public.child"):
        pr.run_restore(params, server, now=NOW)
    server = ScriptedServer(COUNTS, databases={"my-db"})
    server.answer(USER_TABLES, (0, "public\x1fother\n", ""))
    with pytest.raises(pr.RestoreError, match="do not exist in my-db"):
        pr.run_restore(params, server, now=NOW)


def test_restore_repairs_a_killed_run_then_skips(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    server = existing_server()
    left = "my-db\x1ff\x1f\nmy-db__ner11_restore\x1ft\x1f%s\nmy-db__ner11_old_20261128T010000\x1ff\x1f%s\n" % (
        repair.TEMP_COMMENT,
        repair.old_comment("b0", False),
    )
    server.answer("datallowconn", (0, left, ""))
    server.answer("/proc/[0-9]*", (0, "pid 42 pg_restore\nstage /tmp/ner11-restore-my-db-abc\n", ""))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"], if_exists="skip"), server, now=NOW)
    assert done["operation"] == "skip" and done["changed"] is True
    assert done["repaired"] == [
        "stopped pg_restore (pid 42) in the database container",
        "allowed connections to my-db again",
        "dropped the half-built temporary database my-db__ner11_restore",
        "dropped my-db__ner11_old_20261128T010000 (replaced by a completed restore)",
        "removed the dump copy /tmp/ner11-restore-my-db-abc in the database container",
    ]
    assert any("kill -TERM 42" in c for c in server.lines())


def test_restore_refuses_newer_data_and_keeps_the_old_database_on_request(tmp_path):
    _job, made, _server = make_backup(tmp_path)

    def newest(line, data):
        later = 2000000000.0 if "-d my-db -f" in line else 1000000000.0
        return 0, "public.t\x1f%s\n" % later, ""

    params = restore_params(tmp_path, made["backup_id"], if_exists="replace", confirm="my-db")
    server = existing_server()
    server.answer("a.attname IN", (0, "public\x1ft\x1fcreated_at\n", ""))
    server.answer("GREATEST(max(", newest)
    with pytest.raises(pr.Refused, match="holds data newer than backup"):
        pr.run_restore(params, server, now=NOW)
    assert any('DROP DATABASE IF EXISTS "my-db__ner11_restore"' in c for c in server.lines())
    server = existing_server()
    done = pr.run_restore(dict(params, keep_old=True, force=True), server, now=NOW)
    assert done["old_db"] == "my-db__ner11_old_20261129T020000"
    assert any('ALTER DATABASE "my-db__ner11_old_20261129T020000" WITH ALLOW_CONNECTIONS true;' in c for c in server.lines())


def test_restore_reports_a_replaced_database_it_could_not_drop(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    server = existing_server()
    server.answer('DROP DATABASE IF EXISTS "my-db__ner11_old', (1, "", "ERROR:  permission denied"))
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"], if_exists="replace", confirm="my-db"), server, now=NOW)
    assert done["restored"] is True
    assert done["leftovers"][0]["database"] == "my-db__ner11_old_20261129T020000"
    assert any("could not be dropped" in w for w in done["warnings"])


def test_directory_backup_verified_and_restored_with_jobs_through_a_copy(tmp_path):
    _job, made, _server = make_backup(tmp_path, login_password="pw", format="directory", jobs=2)
    assert made["manifest"]["format"] == "directory" and os.path.isfile(os.path.join(made["path"], "dump", "toc.dat"))
    server = ScriptedServer(COUNTS)
    params = {"backup_dir": str(tmp_path / "b"), "container": "pg1", "login_password": "pw", "test_restore": True}
    result = ver.BackupVerifier(params, server, now=NOW).run()
    assert result["status"] == "ok", result["errors"]
    assert any("--entrypoint pg_restore" in c and "-j 2" in c and "--network container:pg1" in c for c in server.lines())
    server = ScriptedServer(COUNTS)
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2), server, now=NOW)
    assert done["restored"] is True and done["plan"]["copy_dump_into_container"] is True
    lines = server.lines()
    # the TOC check reads the directory through a read-only mount into a network-less container: no copy
    assert any("--entrypoint pg_restore" in c and "--network none" in c and "--list" in c and ":ro" in c for c in lines)
    assert not any(c.startswith("docker cp ") and c.endswith("/toc.dat") for c in lines)
    assert any("mktemp -d /tmp/ner11-restore-my-db-XXXXXX" in c for c in lines)
    assert any("pg_restore -U postgres --exit-on-error --no-password -d my-db__ner11_restore -j 2" in c for c in lines)
    assert lines[-1].startswith("docker exec -u 0 pg1 rm -rf /tmp/ner11-restore-")  # the copy is removed
    # check mode never copies the dump: the manifest's TOC count stands in
    server = ScriptedServer(COUNTS)
    planned = pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2), server, check_mode=True, now=NOW)
    assert planned["toc_entries"] == made["manifest"]["toc_entries"]
    assert not any(c.startswith("docker cp ") for c in server.lines())


def test_directory_restore_with_a_password_reads_the_dump_by_mount_not_by_copy(tmp_path):
    _job, made, _server = make_backup(tmp_path, login_password="pw", format="directory", jobs=2)
    server = ScriptedServer(COUNTS)
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2, login_password="pw"), server, now=NOW)
    assert done["restored"] is True
    assert done["plan"]["copy_dump_into_container"] is False and done["plan"]["read_dump_by_mount"] is True
    assert done["plan"]["space"]["dump_copy_bytes"] == 0
    lines = server.lines()
    assert not any(c.startswith("docker cp ") or "mktemp" in c for c in lines)
    dump = os.path.join(made["path"], "dump")
    restore = [c for c in lines if "--entrypoint pg_restore" in c and "-d my-db__ner11_restore" in c]
    assert len(restore) == 1, lines
    assert "--network container:pg1" in restore[0] and "-j 2 %s" % dump in restore[0]
    assert "-v %s:%s:ro" % (made["path"], made["path"]) in restore[0]
    assert "--label io.ner11.pg_restore.target=pg1/my-db__ner11_restore" in restore[0]
    assert "pw" not in " ".join(done["executed_commands"])


def test_a_killed_restore_sidecar_is_removed_by_the_next_run(tmp_path):
    _job, made, _server = make_backup(tmp_path, login_password="pw", format="directory", jobs=2)
    server = ScriptedServer(COUNTS)
    server.answer("label=io.ner11.pg_restore.target=pg1/my-db__ner11_restore", (0, "abc123def4567890\n", ""))
    planned = pr.run_restore(
        restore_params(tmp_path, made["backup_id"], jobs=2, login_password="pw"), server, check_mode=True, now=NOW
    )
    assert "remove the pg_restore sidecar container abc123def456 of a killed restore" in planned["plan"]["repair"]
    assert not any(c.startswith("docker rm") for c in server.lines())
    done = pr.run_restore(restore_params(tmp_path, made["backup_id"], jobs=2, login_password="pw"), server, now=NOW)
    assert "removed the pg_restore sidecar container abc123def456" in done["repaired"]
    assert any(c == "docker rm -f abc123def4567890" for c in server.lines())


def test_restore_in_host_mode_reads_the_files_and_skips_the_space_check(tmp_path):
    _job, made, _server = make_backup(tmp_path)
    params = {"login_host": "db", "login_password": "pw", "db_name": "my-db", "backup_dir": str(tmp_path / "b")}
    params["backup_id"] = made["backup_id"]
    server = ScriptedServer(COUNTS)
    done = pr.run_restore(params, server, now=NOW)
    assert done["restored"] is True and done["plan"]["space"]["checked"] is False
    assert any(c.startswith("pg_restore -h db -p 5432 -U postgres --exit-on-error") for c in server.lines())
    assert "pw" not in " ".join(done["executed_commands"])


def test_prune_catalog_keeps_the_policy_and_deletes_the_rest(tmp_path):
    from ansible_collections.ner11.ops.plugins.module_utils import retention

    ids = []
    for day in range(4):
        when = NOW - datetime.timedelta(days=day)
        job = pb.PgBackup(backup_params(tmp_path), ScriptedServer(COUNTS), now=when)
        ids.append(job.run()["backup_id"])
    catalog = cat.Catalog(str(tmp_path / "b"))
    policy = retention.validate_policy(keep_daily=2, keep_weekly=0, keep_monthly=0, keep_min=1)
    planned = retention.prune_catalog(catalog, "database", policy, db_name="my-db", check_mode=True, now=NOW)
    # The four were made within seconds (created_at is the wall clock): one day, so one daily is kept.
    assert planned["changed"] is True and len(planned["deleted"]) == 3 and set(planned["deleted"]) < set(ids)
    assert planned["freed_bytes"] > 0 and len(catalog.list("database")) == 4  # check mode deleted nothing
    done = retention.prune_catalog(catalog, "database", policy, db_name="my-db", now=NOW)
    assert done["deleted"] == planned["deleted"]
    assert sorted(m["backup_id"] for m in catalog.list("database")) == sorted(set(ids) - set(done["deleted"]))
    again = retention.prune_catalog(catalog, "database", policy, db_name="my-db", now=NOW)
    assert again["changed"] is False
    other = retention.prune_catalog(catalog, "database", policy, db_name="other", now=NOW)
    assert other["deleted"] == [] and other["changed"] is False

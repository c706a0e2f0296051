"""artifact_backup / artifact_restore against real Docker: the api container, named volumes, host files."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import uuid

from conftest import docker, run_module, wait_http

BACKUP = "ner11.ops.artifact_backup"
RESTORE = "ner11.ops.artifact_restore"


def four_steps(args):
    """check -> apply -> check -> apply; returns the four results."""
    results = [run_module(BACKUP, args, check=check) for check in (True, False, True, False)]
    for r in results:
        assert not r.get("failed"), r.get("msg")
    assert [r["changed"] for r in results] == [True, True, False, False], [r.get("plan") for r in results]
    assert results[0]["plan"]["action"] == "create" and results[0]["plan"]["file_count"] > 0
    assert results[2]["plan"]["unchanged"] is True and results[2]["backup_id"] == results[1]["backup_id"]
    assert results[3]["backup_id"] == results[1]["backup_id"]
    return results


def manifest_on_disk(result):
    with open(os.path.join(result["path"], "manifest.json")) as fh:
        return json.load(fh)


def models_status(stack):
    return json.loads(wait_http(stack.api_url + "/api/v1/models/status", deadline_s=90))


def restart_api(stack):
    docker("restart", stack.container("api"))
    wait_http(stack.api_url + "/health", deadline_s=90)


def container_sha256(stack, path):
    out = docker("exec", stack.container("api"), "sha256sum", path).stdout
    return out.split()[0]


def test_models_backup_from_the_api_container_four_steps(shared_stack, tmp_path):
    args = {"kind": "models", "container": shared_stack.container("api"), "backup_dir": str(tmp_path)}
    results = four_steps(args)
    made = results[1]
    manifest = manifest_on_disk(made)
    files = {e["path"]: e for e in manifest["contents"] if e["type"] == "file"}
    # G27: every file, not only *.pkl, each with size, mode and sha256
    assert "manifest.json" in files and "ner11-gazetteer/model.json" in files
    assert files["ner11-gazetteer/model.json"]["sha256"] == container_sha256(
        shared_stack, "/app/models/ner11-gazetteer/model.json"
    )
    assert all(e["mode"].startswith("0") and len(e["sha256"]) == 64 for e in files.values())
    assert manifest["source"]["container"] == shared_stack.container("api")
    assert manifest["files"] == [{"path": "data.tar", "size": made["size_bytes"], "sha256": manifest["files"][0]["sha256"]}] or (
        manifest["files"][0]["path"] == "data.tar"
    )
    assert manifest["sensitive"] is False and manifest["status"] == "verified"
    assert stat.S_IMODE(os.stat(os.path.join(made["path"], "data.tar")).st_mode) == 0o600
    # the archive restores with stock tar
    out = subprocess.run(["tar", "-tf", os.path.join(made["path"], "data.tar")], capture_output=True, text=True, check=True)
    assert "./ner11-gazetteer/model.json" in out.stdout.split()
    assert not [n for n in os.listdir(os.path.join(str(tmp_path), "models")) if n.startswith(".partial-")]


def test_config_backup_keeps_modes_marks_sensitive_and_detects_one_change(tmp_path):
    proj = tmp_path / "proj"
    (proj / "scripts" / "__pycache__").mkdir(parents=True)
    (proj / "docker-compose.yml").write_text("services: {}\n")
    (proj / ".env").write_text("POSTGRES_PASSWORD=it-secret\n")
    os.chmod(proj / ".env", 0o600)
    (proj / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(proj / "scripts" / "run.sh", 0o750)  # noqa: S103 - an executable script in a test tree
    (proj / "scripts" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"pyc")
    (proj / "secrets").mkdir()
    (proj / "secrets" / "db_password").write_text("it-db-password")  # the bare password, as the stack keeps it
    os.chmod(proj / "secrets" / "db_password", 0o600)
    password_hash = hashlib.sha256(b"it-db-password").hexdigest()
    backup_dir = str(tmp_path / "backups")
    args = {
        "kind": "config",
        "src": [str(proj / "docker-compose.yml"), str(proj / ".env"), str(proj / "scripts"), str(proj / "secrets")],
        "backup_dir": backup_dir,
    }
    results = four_steps(args)
    # the module output (what -v and AWX job events keep) holds no hash of the secret, in any step
    for r in results:
        assert password_hash not in r["_stdout"] and password_hash[:12] not in r["_stdout"]
        assert "it-db-password" not in r["_stdout"] and r["content_sha256"] is None
    first = manifest_on_disk(results[1])
    by = {e["path"]: e for e in first["contents"]}
    assert first["sensitive"] is True and by["secrets/db_password"]["sha256"] == password_hash  # kept on disk
    assert by[".env"]["mode"] == "0600" and by["scripts/run.sh"]["mode"] == "0750"
    assert not [p for p in by if "__pycache__" in p or p.endswith(".pyc")]  # excludes (G27)
    assert "it-secret" not in results[1]["_stdout"]  # contents never printed (G49)
    assert stat.S_IMODE(os.stat(results[1]["path"]).st_mode) == 0o700
    # freshness (issue 8): the unchanged run (step 4) recorded that the content was confirmed current,
    # an audit entry beside the backup, not a change; the check-mode run (step 3) wrote nothing
    fresh_path = os.path.join(results[1]["path"], "freshness.json")
    with open(fresh_path) as fh:
        fresh = json.load(fh)
    assert results[3]["changed"] is False and fresh["confirmations"] == 1
    assert results[3]["freshness"] == dict(fresh, content_sha256=None)  # the digest stays on disk
    assert fresh["content_sha256"] == first["content_sha256"] and stat.S_IMODE(os.stat(fresh_path).st_mode) == 0o600
    before = (os.stat(fresh_path).st_mtime_ns, sorted(os.listdir(results[1]["path"])))
    planned = run_module(BACKUP, args, check=True)
    assert planned["changed"] is False and "freshness" in planned["plan"]
    assert (os.stat(fresh_path).st_mtime_ns, sorted(os.listdir(results[1]["path"]))) == before
    assert run_module("ner11.ops.backup_verify", {"kind": "config", "backup_dir": backup_dir})["status"] == "ok"

    (proj / "docker-compose.yml").write_text("services: {api: {}}\n")
    again = run_module(BACKUP, args)
    assert again["changed"] is True and again["backup_id"] != results[1]["backup_id"], again.get("msg")
    assert again["changed_paths"] == ["docker-compose.yml"]
    second = manifest_on_disk(again)
    old = {e["path"]: e for e in first["contents"]}
    new = {e["path"]: e for e in second["contents"]}
    assert sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p)) == ["docker-compose.yml"]

    # restore into an empty directory: modes kept, re-run changes nothing
    dest = str(tmp_path / "restored")
    r1 = run_module(RESTORE, {"kind": "config", "latest": True, "backup_dir": backup_dir, "dest": dest})
    assert r1["changed"] is True and r1["restored"] is True, r1.get("msg")
    assert stat.S_IMODE(os.stat(os.path.join(dest, ".env")).st_mode) == 0o600
    assert open(os.path.join(dest, "docker-compose.yml")).read() == "services: {api: {}}\n"
    r2 = run_module(RESTORE, {"kind": "config", "latest": True, "backup_dir": backup_dir, "dest": dest})
    assert r2["changed"] is False and r2["restored"] is False
    r3 = run_module(RESTORE, {"kind": "config", "latest": True, "backup_dir": backup_dir, "dest": dest}, check=True, diff=True)
    assert r3["changed"] is False and r3["plan"]["identical"] is True, r3.get("msg")  # check after apply
    assert open(os.path.join(dest, "secrets", "db_password")).read() == "it-db-password"

    # overlay: a changed file needs confirm; other files stay
    with open(os.path.join(dest, ".env"), "w") as fh:
        fh.write("POSTGRES_PASSWORD=changed\n")
    with open(os.path.join(dest, "local.txt"), "w") as fh:
        fh.write("mine\n")
    refused = run_module(RESTORE, {"kind": "config", "latest": True, "backup_dir": backup_dir, "dest": dest})
    assert refused.get("failed") and "confirm: %s" % dest in refused["msg"]
    assert open(os.path.join(dest, ".env")).read() == "POSTGRES_PASSWORD=changed\n"
    ok = run_module(RESTORE, {"kind": "config", "latest": True, "backup_dir": backup_dir, "dest": dest, "confirm": dest})
    assert ok["changed"] is True and ok["plan"]["replace"] == [".env"], ok.get("msg")
    assert password_hash[:12] not in ok["_stdout"] and password_hash[:12] not in refused["_stdout"]
    assert open(os.path.join(dest, ".env")).read() == "POSTGRES_PASSWORD=it-secret\n"
    assert open(os.path.join(dest, "local.txt")).read() == "mine\n"


def test_volume_backup_four_steps_matches_the_container_copy(shared_stack, tmp_path):
    volume = "%s_models" % shared_stack.project
    results = four_steps({"kind": "volume", "src": volume, "backup_dir": str(tmp_path)})
    manifest = manifest_on_disk(results[1])
    assert manifest["source"]["volume"] == volume and manifest["source"]["live"] is False
    assert manifest["source"]["users"] == [shared_stack.container("api")]
    from_container = run_module(
        BACKUP, {"kind": "models", "container": shared_stack.container("api"), "backup_dir": str(tmp_path)}
    )
    # the same bytes seen through the volume and through the container: equal content digest
    assert from_container["content_sha256"] == results[1]["content_sha256"]
    leftovers = docker("ps", "-aq", "--filter", "label=io.ner11.helper=artifact", "--filter", "volume=%s" % volume).stdout.split()
    assert leftovers == []


def test_live_postgres_volume_is_refused_unless_allow_live(shared_stack, tmp_path):
    volume = "%s_postgres_data" % shared_stack.project
    refused = run_module(BACKUP, {"kind": "volume", "src": volume, "backup_dir": str(tmp_path)})
    assert refused.get("failed")
    assert (
        shared_stack.container("postgres") in refused["msg"]
        and "allow_live" in refused["msg"]
        and "crash-consistent" in refused["msg"]
    )
    assert not os.path.exists(os.path.join(str(tmp_path), "volume")) or os.listdir(os.path.join(str(tmp_path), "volume")) == [
        ".lock"
    ]
    live = run_module(BACKUP, {"kind": "volume", "src": volume, "backup_dir": str(tmp_path), "allow_live": True})
    assert live["changed"] is True, live.get("msg")
    assert any("crash-consistent" in w for w in live.get("warnings", []))
    paths = {e["path"] for e in manifest_on_disk(live)["contents"]}
    assert {"PG_VERSION", "global/pg_control"} <= paths


def test_restore_models_into_the_api_container(own_stack, tmp_path):
    stack = own_stack()
    api = stack.container("api")
    backup_dir = str(tmp_path)
    made = run_module(BACKUP, {"kind": "models", "container": api, "backup_dir": backup_dir})
    assert made["changed"] is True, made.get("msg")
    model = "/app/models/ner11-gazetteer/model.json"
    good = container_sha256(stack, model)

    # already identical: nothing to do
    same = run_module(
        RESTORE, {"kind": "models", "latest": True, "backup_dir": backup_dir, "container": api, "dest": "/app/models"}
    )
    assert same["changed"] is False and same["plan"]["identical"] is True, same.get("msg")

    # corrupt a model file and add a stray one: the API reports models_loaded false after a restart
    docker("exec", api, "sh", "-c", "printf 'garbage' >> %s && echo x > /app/models/stray.bin" % model)
    restart_api(stack)
    assert models_status(stack)["models_loaded"] is False

    args = {"kind": "models", "backup_id": made["backup_id"], "backup_dir": backup_dir, "container": api, "dest": "/app/models"}
    plan = run_module(RESTORE, args, check=True, diff=True)
    assert plan["changed"] is True and plan["restored"] is False
    assert plan["plan"]["replace"] == ["ner11-gazetteer/model.json"] and plan["plan"]["remove"] == ["stray.bin"]
    assert plan["plan"]["confirm_required"] is True and "ner11-gazetteer/model.json" in plan["diff"]["after"]
    assert container_sha256(stack, model) != good  # check mode touched nothing

    refused = run_module(RESTORE, args)
    assert refused.get("failed") and "confirm: /app/models" in refused["msg"]

    done = run_module(RESTORE, dict(args, confirm="/app/models"))
    assert done["changed"] is True and done["restored"] is True, done.get("msg")
    assert container_sha256(stack, model) == good
    listing = docker("exec", api, "ls", "-A", "/app/models").stdout.split()
    assert "stray.bin" not in listing and not [n for n in listing if n.startswith(".ner11-")]
    restart_api(stack)
    assert models_status(stack)["models_loaded"] is True

    again = run_module(RESTORE, dict(args, confirm="/app/models"))
    assert again["changed"] is False and again["restored"] is False
    after = run_module(RESTORE, args, check=True)
    assert after["changed"] is False and after["plan"]["identical"] is True, after.get("msg")  # check after apply

    # a corrupt backup is refused naming the file, and the target is left untouched
    docker("exec", api, "sh", "-c", "echo y > /app/models/stray2.bin")
    tar_path = os.path.join(made["path"], "data.tar")
    data = bytearray(open(tar_path, "rb").read())
    data[data.index(b'"name"') + 2] ^= 0x01
    with open(tar_path, "wb") as fh:
        fh.write(bytes(data))
    broken = run_module(RESTORE, dict(args, confirm="/app/models"))
    assert broken.get("failed") and "data.tar" in broken["msg"] and "ner11-gazetteer/model.json" in broken["msg"]
    assert "stray2.bin" in docker("exec", api, "ls", "-A", "/app/models").stdout.split()


def test_restore_into_a_new_volume_through_a_helper(shared_stack, tmp_path):
    volume = "%s_models" % shared_stack.project
    made = run_module(BACKUP, {"kind": "volume", "src": volume, "backup_dir": str(tmp_path)})
    assert not made.get("failed"), made.get("msg")
    target = "%s_restored_%s" % (shared_stack.project, uuid.uuid4().hex[:6])
    try:
        args = {"kind": "volume", "backup_id": made["backup_id"], "backup_dir": str(tmp_path), "volume": target}
        check = run_module(RESTORE, args, check=True)
        assert check["changed"] is True and check["plan"]["target_exists"] is False
        assert docker("volume", "inspect", target, check=False).returncode != 0
        first = run_module(RESTORE, args)
        assert first["changed"] is True and first["restored"] is True, first.get("msg")
        labels = json.loads(docker("volume", "inspect", target).stdout)[0]["Labels"]
        assert labels.get("io.ner11.project") == shared_stack.project  # recorded labels reapplied
        second = run_module(RESTORE, args)
        assert second["changed"] is False
        # check after apply: nothing to do; its read-only helper container was removed
        after = run_module(RESTORE, args, check=True)
        assert after["changed"] is False and after["plan"]["identical"] is True, after.get("msg")
        helpers = docker("ps", "-aq", "--filter", "label=io.ner11.helper=artifact", "--filter", "volume=%s" % target)
        assert helpers.stdout.split() == []
        # no container uses the new volume: the helper image must be named
        orphan = {"kind": "volume", "src": target, "backup_dir": str(tmp_path / "b2")}
        refused = run_module(BACKUP, orphan)
        assert refused.get("failed") and "helper_image" in refused["msg"]
        backup_again = run_module(BACKUP, dict(orphan, helper_image="ner11/ner-api:ref"))
        assert backup_again["content_sha256"] == made["content_sha256"], backup_again.get("msg")
    finally:
        docker("volume", "rm", "-f", target, check=False)


def test_bad_input_is_refused_clearly(tmp_path):
    backup_dir = str(tmp_path / "b")
    unknown = run_module(BACKUP, {"kind": "database", "src": "/x", "backup_dir": backup_dir})
    assert unknown.get("failed") and "models, config, volume" in unknown["msg"]
    escape = run_module(RESTORE, {"kind": "models", "backup_id": "../etc", "backup_dir": backup_dir, "dest": "/tmp/x"})
    assert escape.get("failed") and "invalid backup id" in escape["msg"]
    relative = run_module(RESTORE, {"kind": "models", "latest": True, "backup_dir": backup_dir, "dest": "relative/dir"})
    assert relative.get("failed") and "absolute" in relative["msg"]
    missing = run_module(
        BACKUP, {"kind": "models", "container": "no-such-container-%s" % uuid.uuid4().hex[:6], "backup_dir": backup_dir}
    )
    assert missing.get("failed") and "not found" in missing["msg"] and "docker ps -a" in missing["msg"]
    no_volume = run_module(
        BACKUP, {"kind": "volume", "src": "no-such-volume-%s" % uuid.uuid4().hex[:6], "backup_dir": backup_dir}
    )
    assert no_volume.get("failed") and "docker volume ls" in no_volume["msg"]
    relative_src = run_module(BACKUP, {"kind": "config", "src": ["etc/.env"], "backup_dir": backup_dir})
    assert relative_src.get("failed") and "not absolute" in relative_src["msg"]
    assert not os.path.exists(backup_dir) or not [n for n in os.listdir(backup_dir) if n not in ("models", "volume", "config")]

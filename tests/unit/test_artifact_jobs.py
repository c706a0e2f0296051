"""The artifact_backup / artifact_restore jobs end to end on a real catalog and real files.

Host sources run for real; containers and volumes go through a fake docker CLI
(tests/unit/fixtures/fake_docker.py: ``exec`` and ``run`` execute here, with volumes as
directories), so the jobs' plans, idempotence and refusals are unit-tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys

import pytest
from local_runner import run_command

from ansible_collections.ner11.ops.plugins.module_utils import artifacts as art
from ansible_collections.ner11.ops.plugins.module_utils.artifact_restorer import ArtifactRestore
from ansible_collections.ner11.ops.plugins.module_utils.artifact_tar import ArtifactError
from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import DockerCli
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fake_docker.py")


def _write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(data)
    os.chmod(path, mode)


@pytest.fixture
def env(tmp_path, monkeypatch):
    root = tmp_path / "engine"
    (root / "volumes").mkdir(parents=True)
    cli = tmp_path / "docker"
    cli.write_text('#!/bin/sh\nexec %s %s "$@"\n' % (sys.executable, FAKE))
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_DOCKER_ROOT", str(root))
    models = tmp_path / "models"
    _write(str(models / "m1" / "model.json"), '{"name": "m1"}')
    _write(str(models / "manifest.json"), "{}")

    class Env:
        backup_dir = str(tmp_path / "backups")
        docker = str(cli)
        base = tmp_path

        def state(self, **data):
            (root / "state.json").write_text(json.dumps(data))

        def volume(self, name):
            return str(root / "volumes" / name)

        def params(self, **extra):
            p = {"backup_dir": self.backup_dir, "docker_cli": self.docker, "source_host": "h1"}
            p.update(extra)
            return p

    e = Env()
    e.models = str(models)
    e.state(containers={"api": {"running": True}}, images=["img"])
    return e


def backup(env, check_mode=False, **params):
    return art.ArtifactBackup(env.params(**params), run_command, check_mode=check_mode).run()


def restore(env, check_mode=False, diff=False, **params):
    return ArtifactRestore(env.params(**params), run_command, check_mode=check_mode, diff=diff).run()


def test_host_models_backup_check_apply_check_apply(env):
    planned = backup(env, True, kind="models", src=[env.models])
    assert planned["changed"] and planned["plan"]["action"] == "create" and not os.path.exists(env.backup_dir + "/models")
    made = backup(env, kind="models", src=[env.models])
    assert made["changed"] and made["file_count"] == 2 and made["changed_paths"] is None
    again = backup(env, True, kind="models", src=[env.models])
    assert not again["changed"] and again["plan"]["action"] == "none"
    same = backup(env, kind="models", src=[env.models])
    assert not same["changed"] and same["backup_id"] == made["backup_id"] and same["freshness"]
    pinned = backup(env, kind="models", src=[env.models], keep_until="30d")
    assert pinned["changed"] and pinned["pins"]
    _write(env.models + "/m1/model.json", '{"name": "m2"}')
    changed = backup(env, kind="models", src=[env.models], period="daily")
    assert changed["changed"] and changed["changed_paths"] == ["m1/model.json"]


def test_host_restore_mirror_and_overlay(env):
    made = backup(env, kind="models", src=[env.models])
    dest = str(env.base / "restored")
    plan = restore(env, True, True, kind="models", latest=True, dest=dest)
    assert plan["changed"] and not plan["restored"] and not os.path.exists(dest)
    assert "m1/model.json" in plan["diff"]["after"]
    done = restore(env, kind="models", backup_id=made["backup_id"], dest=dest)
    assert done["restored"] and open(dest + "/m1/model.json").read() == '{"name": "m1"}'
    assert not restore(env, kind="models", latest=True, dest=dest)["changed"]
    # the fourth step: check mode after the apply plans nothing
    after = restore(env, True, True, kind="models", latest=True, dest=dest)
    assert not after["changed"] and after["plan"]["identical"] and after["diff"]["after"] == ""
    _write(dest + "/extra.txt", "x")
    with pytest.raises(ArtifactError, match="set confirm: %s" % dest):
        restore(env, kind="models", latest=True, dest=dest)
    assert restore(env, True, kind="models", latest=True, dest=dest)["plan"]["confirm_required"]
    assert restore(env, kind="models", latest=True, dest=dest, confirm=dest)["restored"]
    assert not os.path.exists(dest + "/extra.txt")
    assert not restore(env, True, kind="models", latest=True, dest=dest)["changed"]
    assert restore(env, kind="models", latest=True, dest=dest, force=True)["plan"]["strategy"] == "sibling-swap"
    # The old content a failed swap left (.ner11-old-<tag>) stops the restore before anything is touched.
    _write(dest + "/.ner11-old-t1/m1/model.json", "old")
    for check in (True, False):
        job = ArtifactRestore(env.params(kind="models", latest=True, dest=dest, confirm=dest, force=True), run_command, check)
        with pytest.raises(ArtifactError, match="left by an earlier restore whose swap failed.*nothing was changed"):
            job.run()
        assert job.touched == [] and open(dest + "/.ner11-old-t1/m1/model.json").read() == "old"
    shutil.rmtree(dest + "/.ner11-old-t1")

    conf = str(env.base / "etc")
    _write(conf + "/app/.env", "A=1\n", 0o600)
    _write(conf + "/app/other.conf", "x\n")
    backup(env, kind="config", src=[conf + "/app/.env"])
    os.unlink(conf + "/app/.env")
    out = restore(env, kind="config", latest=True)
    assert out["restored"] and out["plan"]["strategy"] == "overlay" and os.path.exists(conf + "/app/other.conf")
    assert stat.S_IMODE(os.stat(conf + "/app/.env").st_mode) == 0o600
    assert not restore(env, kind="config", latest=True)["changed"]
    assert not restore(env, True, kind="config", latest=True)["changed"]


def test_container_models_backup_and_restore(env):
    made = backup(env, kind="models", container="api", src=[env.models])
    assert made["changed"] and made["manifest"]["source"]["container"] == "api"
    assert not backup(env, kind="models", container="api", src=[env.models])["changed"]
    _write(env.models + "/m1/model.json", "changed")
    out = restore(env, kind="models", latest=True, confirm=env.models)
    assert out["restored"] and out["plan"]["strategy"] == "contents-swap" and out["plan"]["container"] == "api"
    assert open(env.models + "/m1/model.json").read() == '{"name": "m1"}'
    assert not restore(env, True, kind="models", latest=True)["changed"]
    env.state(containers={"api": {"running": False}})
    with pytest.raises(ArtifactError, match="not running"):
        backup(env, kind="models", container="api", src=[env.models])
    with pytest.raises(ArtifactError, match="container api is not running"):
        restore(env, kind="models", latest=True)
    with pytest.raises(ArtifactError, match="not found"):
        backup(env, kind="models", container="nope")


def test_volume_backup_restore_and_refusals(env):
    os.makedirs(env.volume("data"))
    _write(env.volume("data") + "/f.txt", "v1")
    with pytest.raises(ArtifactError, match="no local image"):
        backup(env, kind="volume", src=["data"])
    with pytest.raises(ArtifactError, match="not present locally"):
        backup(env, kind="volume", src=["data"], helper_image="absent")
    made = backup(env, kind="volume", src=["data"], helper_image="img")
    assert made["changed"] and made["manifest"]["source"]["helper_image"] == "img"
    assert not backup(env, True, kind="volume", src=["data"], helper_image="img")["changed"]
    plan = restore(env, True, kind="volume", latest=True, volume="copy")
    assert plan["changed"] and plan["plan"]["space"]["note"].startswith("not checked: volume copy does not exist")
    out = restore(env, kind="volume", latest=True, volume="copy")
    assert out["restored"] and open(env.volume("copy") + "/f.txt").read() == "v1"
    assert not restore(env, kind="volume", latest=True, volume="copy")["changed"]
    env.state(
        containers={"pg": {"running": True, "image": "img", "mounts": {"data": "/var/lib/postgresql/data"}}}, images=["img"]
    )
    with pytest.raises(ArtifactError, match="running PostgreSQL container pg"):
        backup(env, kind="volume", src=["data"])
    live = art.ArtifactBackup(env.params(kind="volume", src=["data"], allow_live=True), run_command)
    assert not live.run()["changed"] and live.warnings
    with pytest.raises(ArtifactError, match="stop pg before restoring"):
        restore(env, kind="volume", latest=True)
    with pytest.raises(ArtifactError, match="not found"):
        backup(env, kind="volume", src=["missing"])


def test_invalid_input_is_named(env):
    with pytest.raises(ArtifactError, match="invalid kind"):
        backup(env, kind="logs")
    with pytest.raises(ArtifactError, match="one volume name"):
        backup(env, kind="volume", src=["a", "b"])
    with pytest.raises(ArtifactError, match="one directory"):
        backup(env, kind="models", container="api", src=["/a", "/b"])
    with pytest.raises(ArtifactError, match="needs container"):
        backup(env, kind="models", src=[])
    with pytest.raises(ArtifactError, match="does not exist on this host"):
        backup(env, kind="models", src=[str(env.base / "none")])
    with pytest.raises(ArtifactError, match="not a directory in container"):
        backup(env, kind="models", container="api", src=[str(env.base / "none")])
    with pytest.raises(ArtifactError, match="must be an absolute path"):
        backup(env, kind="models", container="api", src=["rel"])
    with pytest.raises(ArtifactError, match="exactly one of backup_id or latest"):
        restore(env, kind="models")
    with pytest.raises(ArtifactError, match="take no dest"):
        restore(env, kind="models", latest=True, volume="v", dest="/x")
    with pytest.raises(ArtifactError, match="container needs dest"):
        restore(env, kind="models", latest=True, container="api")
    with pytest.raises(ArtifactError, match="no good models backup of host h1"):
        restore(env, kind="models", latest=True)


def test_corrupt_backup_is_refused(env):
    made = backup(env, kind="models", src=[env.models])
    with open(os.path.join(made["path"], "data.tar"), "r+b") as fh:
        fh.seek(600)
        fh.write(b"XXXX")
    with pytest.raises(ArtifactError, match="is corrupt, nothing was restored"):
        restore(env, kind="models", latest=True, dest=str(env.base / "r"))


def test_engine_failure_is_a_command_error(env):
    docker = DockerCli(run_command, env.docker)
    with pytest.raises(CommandError, match="fake docker: unsupported"):
        docker.call(["system", "df"], what="docker system df")


PASSWORD = "S3cretPassw0rd-for-the-test"


def _secret_traces(result):
    """Where a hash of the password shows up in the whole serialized result (full digest or 12-char prefix)."""
    text = json.dumps(result, default=str)
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    return [h for h in (digest, digest[:12]) if h in text] + ([PASSWORD] if PASSWORD in text else [])


def test_config_backup_returns_no_hash_of_a_secret_and_restore_still_checks_them(env):
    cfg = str(env.base / "stack")
    _write(cfg + "/secrets/db_password", PASSWORD, 0o600)
    _write(cfg + "/.env", "POSTGRES_USER=ner11\n", 0o600)
    _write(cfg + "/docker-compose.yml", "services: {}\n")
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    results = [backup(env, check, kind="config", src=[cfg]) for check in (True, False, True, False)]
    assert [r["changed"] for r in results] == [True, True, False, False]
    for r in results:
        assert _secret_traces(r) == [] and r["content_sha256"] is None
    made, unchanged = results[1], results[3]
    shown = {e["path"]: e for e in made["manifest"]["contents"]}
    assert shown["stack/secrets/db_password"]["size"] == len(PASSWORD) and "sha256" not in shown["stack/secrets/db_password"]
    assert made["manifest"]["redacted"] and made["manifest"]["sensitive"] is True and unchanged["freshness"]["confirmed_at"]
    # the manifest on disk (0600) keeps every hash
    on_disk_path = os.path.join(made["path"], "manifest.json")
    with open(on_disk_path) as fh:
        on_disk = json.load(fh)
    assert {e["path"]: e.get("sha256") for e in on_disk["contents"]}["stack/secrets/db_password"] == digest
    assert on_disk["content_sha256"] and stat.S_IMODE(os.stat(on_disk_path).st_mode) == 0o600

    # restore still compares against the hashes on disk: check, apply, apply, check (nothing of them returned)
    dest = str(env.base / "restored")
    steps = [restore(env, check, True, kind="config", latest=True, dest=dest) for check in (True, False, False, True)]
    assert [r["changed"] for r in steps] == [True, True, False, False]
    assert all(_secret_traces(r) == [] for r in steps)
    assert open(dest + "/stack/secrets/db_password").read() == PASSWORD
    _write(dest + "/stack/secrets/db_password", PASSWORD[::-1], 0o600)  # same size, other content
    tampered = restore(env, True, True, kind="config", latest=True, dest=dest)
    assert tampered["plan"]["replace"] == ["stack/secrets/db_password"] and _secret_traces(tampered) == []
    assert "stack/secrets/db_password" in tampered["diff"]["after"]

    # verification reads the archive against the hashes on disk: a damaged secret is named, nothing restored
    tar_path = os.path.join(made["path"], "data.tar")
    with open(tar_path, "r+b") as fh:
        data = fh.read()
        fh.seek(data.index(PASSWORD.encode()))
        fh.write(PASSWORD[::-1].encode())
    with pytest.raises(ArtifactError, match="damaged members: stack/secrets/db_password") as err:
        restore(env, kind="config", latest=True, dest=dest, confirm=dest)
    assert digest not in str(err.value)


def test_volume_with_a_secrets_directory_is_sensitive_too(env):
    os.makedirs(env.volume("cfg"))
    _write(env.volume("cfg") + "/secrets/db_password", PASSWORD, 0o600)
    made = backup(env, kind="volume", src=["cfg"], helper_image="img")
    assert made["changed"] and made["manifest"]["sensitive"] is True and _secret_traces(made) == []
    assert _secret_traces(backup(env, True, kind="volume", src=["cfg"], helper_image="img")) == []


def test_container_swap_failure_puts_the_old_content_back(env):
    """A real rename failure inside the swap script (an immutable entry): the old content is moved back."""
    import shutil
    import subprocess  # chattr sets up a real failure; plugins never use subprocess

    backup(env, kind="models", container="api", src=[env.models])
    _write(env.models + "/m1/model.json", "changed")
    _write(env.models + "/zz.bin", "pinned")
    victim = env.models + "/zz.bin"
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", victim], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root on a filesystem with the immutable flag)")
    try:
        with pytest.raises(CommandError, match="the entries already moved were put back") as err:
            restore(env, kind="models", latest=True, confirm=env.models)
    finally:
        subprocess.run(["chattr", "-i", victim], check=True)
    assert "fix the cause" in str(err.value).lower()
    assert open(env.models + "/m1/model.json").read() == "changed"  # the old content, not half of each
    assert sorted(os.listdir(env.models)) == ["m1", "manifest.json", "zz.bin"]
    assert restore(env, kind="models", latest=True, confirm=env.models)["restored"]


def test_os_errors_name_the_path_and_the_directory_to_check():
    # Injected: a full disk cannot be produced here; the OSError is built as the kernel reports it.
    full = OSError(28, "No space left on device", "/var/backups/ner11/config/.partial-x/data.tar")
    msg = art.os_error_message(full, "backing up config into /var/backups/ner11", ["/var/backups/ner11", "/srv/ner11"])
    assert msg == (
        "backing up config into /var/backups/ner11 failed: No space left on device "
        "(/var/backups/ner11/config/.partial-x/data.tar); check free space and permissions on /var/backups/ner11, "
        "then run again"
    )
    sibling = OSError(13, "Permission denied", "/srv/models.ner11-new-1/a")
    assert "permissions on /srv, then" in art.os_error_message(sibling, "restoring", ["/srv/models", "/srv", "/b"])
    assert "permissions on /b, then" in art.os_error_message(OSError(28, "No space left on device"), "x", ["/b"])

"""The artifact_backup / artifact_restore jobs end to end on a real catalog and real files.

Host sources run for real; containers and volumes go through a fake docker CLI
(tests/unit/fixtures/fake_docker.py: ``exec`` and ``run`` execute here, with volumes as
directories), so the jobs' plans, idempotence and refusals are unit-tested.
"""

from __future__ import annotations

import json
import os
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
    _write(dest + "/extra.txt", "x")
    with pytest.raises(ArtifactError, match="set confirm: %s" % dest):
        restore(env, kind="models", latest=True, dest=dest)
    assert restore(env, True, kind="models", latest=True, dest=dest)["plan"]["confirm_required"]
    assert restore(env, kind="models", latest=True, dest=dest, confirm=dest)["restored"]
    assert not os.path.exists(dest + "/extra.txt")
    assert restore(env, kind="models", latest=True, dest=dest, force=True)["plan"]["strategy"] == "sibling-swap"

    conf = str(env.base / "etc")
    _write(conf + "/app/.env", "A=1\n", 0o600)
    _write(conf + "/app/other.conf", "x\n")
    backup(env, kind="config", src=[conf + "/app/.env"])
    os.unlink(conf + "/app/.env")
    out = restore(env, kind="config", latest=True)
    assert out["restored"] and out["plan"]["strategy"] == "overlay" and os.path.exists(conf + "/app/other.conf")
    assert stat.S_IMODE(os.stat(conf + "/app/.env").st_mode) == 0o600
    assert not restore(env, kind="config", latest=True)["changed"]


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

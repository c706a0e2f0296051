"""Unit tests of the artifact core: listing, digests, change detection, restore plans, safe extraction."""

import io
import os
import stat
import tarfile

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import artifact_docker as adk
from ansible_collections.ner11.ops.plugins.module_utils import artifact_extract as ext
from ansible_collections.ner11.ops.plugins.module_utils import artifact_tar as tar


def _write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "models"
    _write(str(root / "manifest.json"), b"{}\n")
    _write(str(root / "m1" / "model.json"), b'{"name": "m1"}')
    _write(str(root / "m1" / "weights.safetensors"), b"\x00" * 1000, 0o640)
    _write(str(root / "m1" / "__pycache__" / "x.cpython-311.pyc"), b"pyc")
    _write(str(root / "tool.pyc"), b"pyc")
    os.symlink("m1", str(root / "current"))
    os.chmod(str(root), 0o755)  # noqa: S103 - a test fixture with ordinary modes
    return str(root)


def _tar_of(root, tmp_path, excludes=tar.DEFAULT_EXCLUDES, name="t.tar"):
    path = str(tmp_path / name)
    tar.write_tar(path, root, tar.list_host_tree(root, excludes))
    return path


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("a/b.pyc", True),
        ("__pycache__", True),
        ("m1/__pycache__/x.txt", True),
        ("m1/model.json", False),
        (".", False),
        ("pyc", False),
    ],
)
def test_excludes_match_any_component_like_gnu_tar(rel, expected):
    assert tar.is_excluded(rel, tar.DEFAULT_EXCLUDES) is expected


def test_listing_keeps_every_file_with_mode_and_skips_excludes(tree):
    listing = tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES)
    paths = [e["path"] for e in listing]
    assert paths == [".", "current", "m1", "m1/model.json", "m1/weights.safetensors", "manifest.json"]
    by = {e["path"]: e for e in listing}
    assert by["m1/weights.safetensors"]["mode"] == "0640"  # G27: not only *.pkl, modes kept
    assert by["m1/weights.safetensors"]["size"] == 1000
    assert by["current"] == {**by["current"], "type": "symlink", "link": "m1"}
    assert by["."]["mode"] == "0755"


def test_tar_scan_equals_host_listing_and_digest(tree, tmp_path):
    tar_path = _tar_of(tree, tmp_path)
    scanned = tar.scan_tar(tar_path)
    host = tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES)
    assert [tar._identity(e) for e in scanned] == [tar._identity(e) for e in host]
    assert tar.content_digest(scanned) == tar.content_digest(host)
    assert tar.summarize(scanned) == {"file_count": 3, "content_bytes": 1000 + 3 + 14, "entries": 6}


def test_digest_ignores_mtime_but_sees_mode_and_content(tree):
    before = tar.content_digest(tar.list_host_tree(tree))
    os.utime(os.path.join(tree, "manifest.json"), (1, 1))
    assert tar.content_digest(tar.list_host_tree(tree)) == before
    os.chmod(os.path.join(tree, "manifest.json"), 0o600)
    after_mode = tar.content_digest(tar.list_host_tree(tree))
    assert after_mode != before
    _write(os.path.join(tree, "manifest.json"), b"{} \n", 0o600)
    assert tar.content_digest(tar.list_host_tree(tree)) != after_mode


def test_changed_paths_names_only_the_changed_file(tree):
    old = tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES)
    _write(os.path.join(tree, "m1", "model.json"), b'{"name": "m1", "v": 2}')
    new = tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES)
    assert tar.changed_paths(old, new) == ["m1/model.json"]


def test_restore_plan_mirror_and_overlay():
    def f(path, sha, mode="0644"):
        return {"path": path, "type": "file", "mode": mode, "sha256": sha, "size": 1}

    backup = [f("a", "1"), f("b", "2"), f("c", "3")]
    target = [f("a", "1"), f("b", "X"), f("d", "4"), {"path": ".", "type": "dir", "mode": "0755"}]
    plan = tar.restore_plan(backup, target, "mirror")
    assert (plan["write"], plan["replace"], plan["remove"], plan["unchanged"]) == (["c"], ["b"], ["d"], 1)
    assert plan["identical"] is False and tar.plan_needs_confirm(plan, target)
    overlay = tar.restore_plan(backup, target, "overlay")
    assert overlay["remove"] == []
    mode_only = tar.restore_plan([f("a", "1", "0600")], [f("a", "1", "0644")], "overlay")
    assert mode_only["replace"] == ["a"]
    assert tar.restore_plan(backup, backup, "mirror")["identical"] is True
    missing = tar.restore_plan(backup, None, "mirror")
    assert missing["write"] == ["a", "b", "c"] and not missing["identical"]
    assert not tar.plan_needs_confirm(missing, None)
    with pytest.raises(tar.ArtifactError):
        tar.restore_plan(backup, target, "sideways")


def test_extract_restores_modes_and_links(tree, tmp_path):
    tar_path = _tar_of(tree, tmp_path)
    out = str(tmp_path / "out")
    os.mkdir(out)
    ext.extract_tar(tar_path, out, chown=False)
    assert tar.content_digest(tar.list_host_tree(out)) == tar.content_digest(tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES))
    assert stat.S_IMODE(os.stat(os.path.join(out, "m1", "weights.safetensors")).st_mode) == 0o640
    assert os.readlink(os.path.join(out, "current")) == "m1"


def _evil_tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = link
                tf.addfile(info)
            else:
                info.size = 1
                tf.addfile(info, io.BytesIO(b"x"))


@pytest.mark.parametrize("name", ["../escape", "/etc/evil", "a/../../b"])
def test_extract_and_scan_refuse_escaping_members(tmp_path, name):
    path = str(tmp_path / "evil.tar")
    _evil_tar(path, [(name, "file", None)])
    with pytest.raises(tar.ArtifactError, match="escapes"):
        tar.scan_tar(path)
    with pytest.raises(tar.ArtifactError, match="escapes"):
        ext.extract_tar(path, str(tmp_path), chown=False)


def test_extract_never_writes_through_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    path = str(tmp_path / "evil.tar")
    _evil_tar(path, [("link", "sym", str(outside)), ("link/pwned", "file", None)])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(OSError):
        ext.extract_tar(path, str(dest), chown=False)
    assert not (outside / "pwned").exists()


def test_unreadable_archive_is_named(tmp_path):
    path = tmp_path / "bad.tar"
    path.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(tar.ArtifactError, match="not a readable tar"):
        tar.scan_tar(str(path))


def test_corrupt_members_names_the_damaged_file(tree, tmp_path):
    tar_path = _tar_of(tree, tmp_path)
    contents = tar.scan_tar(tar_path)
    data = bytearray(open(tar_path, "rb").read())
    idx = data.index(b'{"name": "m1"}')
    data[idx + 3] ^= 0xFF
    open(tar_path, "wb").write(bytes(data))
    assert tar.corrupt_members(tar_path, contents) == ["m1/model.json"]


def test_config_listing_is_relative_to_the_common_parent(tmp_path):
    proj = tmp_path / "proj"
    _write(str(proj / "docker-compose.yml"), b"services: {}\n")
    _write(str(proj / ".env"), b"POSTGRES_PASSWORD=s3cret\n", 0o600)
    _write(str(proj / "scripts" / "a.sh"), b"#!/bin/sh\n", 0o755)
    _write(str(proj / "scripts" / "__pycache__" / "x.pyc"), b"x")
    root, listing = tar.list_config(
        [str(proj / "docker-compose.yml"), str(proj / ".env"), str(proj / "scripts")], tar.DEFAULT_EXCLUDES
    )
    assert root == str(proj)
    by = {e["path"]: e for e in listing}
    assert sorted(by) == [".env", "docker-compose.yml", "scripts", "scripts/a.sh"]
    assert by[".env"]["mode"] == "0600" and by["scripts/a.sh"]["mode"] == "0755"
    nested_root, nested = tar.list_config([str(proj / "scripts" / "a.sh"), str(proj / ".env")])
    assert nested_root == str(proj) and [e["path"] for e in nested] == [".env", "scripts", "scripts/a.sh"]


@pytest.mark.parametrize(
    "paths, match",
    [([], "no paths"), (["relative/.env"], "not absolute"), (["/a/x", "/a/x"], "twice")],
)
def test_config_root_rejects_bad_input(paths, match):
    with pytest.raises(tar.ArtifactError, match=match):
        tar.config_root(paths)


def test_config_missing_path_is_named(tmp_path):
    with pytest.raises(tar.ArtifactError, match="does not exist"):
        tar.list_config([str(tmp_path / "nope.yml")])


def test_overlay_restore_writes_only_listed_paths(tmp_path):
    proj = tmp_path / "proj"
    _write(str(proj / ".env"), b"A=1\n", 0o600)
    _write(str(proj / "compose.yml"), b"x\n")
    root, listing = tar.list_config([str(proj / ".env"), str(proj / "compose.yml")])
    tar_path = str(tmp_path / "c.tar")
    tar.write_tar(tar_path, root, listing)
    dest = tmp_path / "dest"
    _write(str(dest / "other.txt"), b"keep")
    _write(str(dest / ".env"), b"A=2\n", 0o644)
    plan = tar.restore_plan(listing, tar.list_config([str(dest / ".env"), str(dest / "other.txt")])[1], "overlay")
    assert plan["replace"] == [".env"] and plan["write"] == ["compose.yml"] and plan["remove"] == []
    ext.host_restore_overlay(tar_path, str(dest), plan["write"] + plan["replace"])
    assert (dest / ".env").read_bytes() == b"A=1\n"
    assert stat.S_IMODE(os.stat(dest / ".env").st_mode) == 0o600
    assert (dest / "other.txt").read_bytes() == b"keep"
    assert not [n for n in os.listdir(dest) if n.startswith(".ner11-")]


def test_mirror_restore_swaps_and_removes_the_old_tree(tree, tmp_path):
    tar_path = _tar_of(tree, tmp_path)
    dest = tmp_path / "restored"
    _write(str(dest / "stale.bin"), b"old")
    ext.host_restore_mirror(tar_path, str(dest), "t1")
    assert not (dest / "stale.bin").exists()
    assert tar.content_digest(tar.list_host_tree(str(dest))) == tar.content_digest(tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES))
    assert sorted(os.listdir(tmp_path)) == ["models", "restored", "t.tar"]


def test_mirror_restore_failure_leaves_dest_untouched(tmp_path):
    path = str(tmp_path / "evil.tar")
    _evil_tar(path, [("ok", "file", None), ("../escape", "file", None)])
    dest = tmp_path / "dest"
    _write(str(dest / "keep"), b"keep")
    with pytest.raises(tar.ArtifactError):
        ext.host_restore_mirror(path, str(dest), "t2")
    assert (dest / "keep").read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["dest", "evil.tar"]


def test_manifest_fields_and_digests(tree, tmp_path):
    tar_path = _tar_of(tree, tmp_path)
    contents = tar.scan_tar(tar_path)
    archive = {"path": "data.tar", "size": os.path.getsize(tar_path), "sha256": "ab" * 32, "mode": "0600"}
    source = {"host": "h", "path": "/srv/models"}
    m = tar.build_manifest(
        "config", "c-1", source, contents, archive, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "manual", None, 1.23456
    )
    assert m["sensitive"] is True and m["content_sha256"] == tar.content_digest(contents)
    assert m["sha256"] == tar.files_digest([archive]) and m["size_bytes"] == archive["size"]
    assert m["file_count"] == 3 and m["duration_s"] == 1.235
    assert tar.build_manifest("models", "m-1", source, contents, archive, "x", "y", "daily", "d", 0)["sensitive"] is False


def test_source_instance_identifies_each_kind():
    assert tar.source_instance("volume", {"volume": "p_models"}) == "volume:p_models"
    assert tar.source_instance("models", {"container": "c", "path": "/app/models"}) == "container:c:/app/models"
    assert tar.source_instance("models", {"host": "h", "path": "/m"}) == "host:h:/m"
    assert tar.source_instance("config", {"host": "h", "path": "/p", "paths": ["/p/a", "/p/b"]}) == "host:h:/p/a,/p/b"


def test_volume_users_and_live_postgres_detection():
    inspected = [
        {
            "Name": "/p-postgres-1",
            "State": {"Running": True},
            "Image": "sha256:aa",
            "Config": {"Image": "ner11/postgres:ref", "Env": ["PGDATA=/var/lib/postgresql/data"]},
            "Mounts": [{"Type": "volume", "Name": "p_pg", "Destination": "/var/lib/postgresql/data"}],
        },
        {
            "Name": "/other",
            "State": {"Running": True},
            "Image": "sha256:bb",
            "Config": {"Image": "x", "Env": []},
            "Mounts": [{"Type": "volume", "Name": "other_vol", "Destination": "/var/lib/postgresql/data"}],
        },
    ]
    users = adk.volume_users_from_inspect(inspected, "p_pg")
    assert [u["name"] for u in users] == ["p-postgres-1"]
    assert adk.live_postgres_users(users) == ["p-postgres-1"]
    users[0]["running"] = False
    assert adk.live_postgres_users(users) == []


def test_tar_args_put_excludes_before_the_operand():
    args = adk.tar_create_args("/app/models", ["*.pyc", "__pycache__"])
    assert args[-3:] == ["-cf", "-", "."]
    assert args.index("--exclude=*.pyc") < args.index(".")


def test_check_mode_stream_listing_equals_the_backup_scan_and_writes_nothing(tree, tmp_path):
    """The pipe check mode uses (tar stream -> the module's Python) lists exactly what scan_tar lists."""
    import json
    import subprocess  # the test drives the script as the module's run_command would; plugins never use subprocess
    import sys

    tar_path = _tar_of(tree, tmp_path)
    here = os.path.dirname(tar.__file__)
    with open(tar_path, "rb") as fh:
        out = subprocess.run(
            [sys.executable, "-c", tar.LIST_STREAM_SCRIPT, here, json.dumps(list(tar.DEFAULT_EXCLUDES))],
            stdin=fh, capture_output=True, check=True,
        ).stdout  # fmt: skip
    streamed = json.loads(out)
    assert streamed == tar.scan_tar(tar_path, tar.DEFAULT_EXCLUDES)
    assert tar.content_digest(streamed) == tar.content_digest(tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES))


def _tar_members(path, members):
    """A tar built member by member: (name, type, data) with type file/dir/hardlink/fifo."""
    with tarfile.open(path, "w") as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data
                tf.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_extract_hard_links_and_refuses_fifos(tmp_path):
    good = _tar_members(str(tmp_path / "h.tar"), [("a", "file", b"x"), ("b", "hardlink", "a")])
    ext.extract_tar(good, str(tmp_path / "out"), chown=False)
    assert os.stat(str(tmp_path / "out" / "a")).st_ino == os.stat(str(tmp_path / "out" / "b")).st_ino
    bad = _tar_members(str(tmp_path / "f.tar"), [("p", "fifo", None)])
    with pytest.raises(tar.ArtifactError, match="device, FIFO or socket"):
        ext.extract_tar(bad, str(tmp_path / "out2"), chown=False)


def test_overlay_replaces_files_by_directories_and_back(tmp_path):
    archive = _tar_members(str(tmp_path / "o.tar"), [("d", "dir", None), ("d/f", "file", b"new"), ("x", "file", b"x")])
    dest = tmp_path / "dest"
    _write(str(dest / "x" / "old"), b"a directory where the backup has a file")
    _write(str(dest / "d"), b"a file where the backup has a directory")
    _write(str(dest / "keep"), b"not in the backup")
    assert ext.host_restore_overlay(archive, str(dest), []) == "overlay"
    assert ext.host_restore_overlay(archive, str(dest), ["d", "d/f", "x"]) == "overlay"
    assert open(str(dest / "d" / "f"), "rb").read() == b"new" and open(str(dest / "x"), "rb").read() == b"x"
    assert os.path.exists(str(dest / "keep")) and not [n for n in os.listdir(str(dest)) if n.startswith(".ner11-")]


def test_mirror_into_a_mount_point_swaps_contents(tree, tmp_path, monkeypatch):
    # Mocked: making a real mount point needs privileges; os.path.ismount says yes for dest only.
    dest = tmp_path / "mnt"
    _write(str(dest / "old.txt"), b"old")
    monkeypatch.setattr(ext.os.path, "ismount", lambda p: p == str(dest))
    archive = _tar_of(tree, tmp_path)
    assert ext.host_restore_mirror(archive, str(dest), "t1") == "contents-swap"
    assert tar.list_host_tree(str(dest), tar.DEFAULT_EXCLUDES)[1:] == tar.list_host_tree(tree, tar.DEFAULT_EXCLUDES)[1:]
    assert not os.path.exists(str(dest / "old.txt"))


def test_mirror_removes_leftovers_of_an_interrupted_run(tree, tmp_path):
    dest = str(tmp_path / "d")
    os.makedirs(dest + ".ner11-new-t2" + "/junk")
    assert ext.host_restore_mirror(_tar_of(tree, tmp_path), dest, "t2") == "sibling-swap"
    assert not os.path.exists(dest + ".ner11-new-t2") and os.path.exists(dest + "/manifest.json")


def _immutable(path, on):
    """chattr +i / -i (root on ext4 and the like); False when the filesystem or the user cannot."""
    import shutil as _shutil
    import subprocess  # the test sets up a real failure; plugins never use subprocess

    if not _shutil.which("chattr") or os.geteuid() != 0:
        return False
    return subprocess.run(["chattr", "+i" if on else "-i", path], capture_output=True, check=False).returncode == 0


def _state(root):
    """Every entry under ``root`` with its bytes (files) or None (directories)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = None if os.path.isdir(full) else open(full, "rb").read()
    return out


def test_contents_swap_failure_is_rolled_back_for_real(tree, tmp_path, monkeypatch):
    """A rename that really fails halfway through the swap (an immutable entry): the old content comes back."""
    # Mocked: making a real mount point needs privileges; os.path.ismount says yes for dest only.
    dest = tmp_path / "mnt"
    _write(str(dest / "a.txt"), b"old a")
    _write(str(dest / "b" / "inner"), b"old b")
    _write(str(dest / "zz.bin"), b"old zz")
    monkeypatch.setattr(ext.os.path, "ismount", lambda p: p == str(dest))
    archive = _tar_of(tree, tmp_path)
    before = _state(str(dest))
    if not _immutable(str(dest / "zz.bin"), True):
        pytest.skip("chattr +i is not available here (needs root on a filesystem with the immutable flag)")
    try:
        # a.txt and b move out first; renaming zz.bin fails with EPERM; both are moved back
        with pytest.raises(tar.ArtifactError, match="were put back, %s holds its old content again" % dest) as err:
            ext.host_restore_mirror(archive, str(dest), "t5")
        assert "Operation not permitted" in str(err.value) and "zz.bin" in str(err.value)
    finally:
        _immutable(str(dest / "zz.bin"), False)
    assert _state(str(dest)) == before  # no half-old, half-new target, no leftovers
    assert ext.host_restore_mirror(archive, str(dest), "t6") == "contents-swap"  # once the cause is gone it works


def test_contents_swap_names_the_old_directory_when_the_rollback_fails(tree, tmp_path, monkeypatch):
    # Mocked: ismount (a real mount point needs privileges) and os.rename, injected to fail on the second
    # new entry moved in and again on putting old "b" back - a double failure cannot be produced for real.
    dest = tmp_path / "mnt"
    _write(str(dest / "a.txt"), b"old a")
    _write(str(dest / "b" / "inner"), b"old b")
    monkeypatch.setattr(ext.os.path, "ismount", lambda p: p == str(dest))
    archive = _tar_of(tree, tmp_path)
    real_rename = os.rename
    seen = []

    def rename(src, dst):
        seen.append((src, dst))
        if src.startswith(str(dest / ".ner11-restore-t7") + "/") and os.path.basename(src) == "m1":
            raise OSError(16, "Device or resource busy", src)
        if dst == str(dest / "b"):
            raise OSError(18, "Invalid cross-device link", src)
        return real_rename(src, dst)

    monkeypatch.setattr(ext.os, "rename", rename)
    with pytest.raises(tar.ArtifactError) as err:
        ext.host_restore_mirror(archive, str(dest), "t7")
    msg = str(err.value)
    old, stage = str(dest / ".ner11-old-t7"), str(dest / ".ner11-restore-t7")
    assert "Device or resource busy" in msg and "putting them back failed too" in msg
    assert "is in %s" % old in msg and "Move the entries of %s back into %s by hand" % (old, dest) in msg
    assert "the new content not yet moved is in %s" % stage in msg and os.path.isdir(os.path.join(stage, "current"))
    assert open(os.path.join(old, "b", "inner"), "rb").read() == b"old b"  # the old data is where the message says
    assert open(str(dest / "a.txt"), "rb").read() == b"old a"  # a.txt was moved back
    assert not os.path.exists(str(dest / "current"))  # the new entry moved in ("current") was moved back out
    monkeypatch.setattr(ext.os, "rename", real_rename)
    # a later restore refuses while that directory is there: a mirror would delete the only copy
    with pytest.raises(tar.ArtifactError, match="left by an earlier restore whose swap failed"):
        ext.host_restore_mirror(archive, str(dest), "t8")
    assert os.path.isdir(old)


def test_sibling_swap_failure_puts_the_old_directory_back(tree, tmp_path, monkeypatch):
    # Mocked: os.rename fails on the final rename (the new tree into dest), as EXDEV or EBUSY would.
    dest = str(tmp_path / "restored")
    _write(dest + "/keep.txt", b"old")
    real_rename = os.rename

    def rename(src, dst):
        if src.endswith(".ner11-new-t9"):
            raise OSError(16, "Device or resource busy", src)
        return real_rename(src, dst)

    monkeypatch.setattr(ext.os, "rename", rename)
    with pytest.raises(tar.ArtifactError, match="failed at the final rename: Device or resource busy") as err:
        ext.host_restore_mirror(_tar_of(tree, tmp_path), dest, "t9")
    assert "was left as it was" in str(err.value)
    assert _state(dest) == {"keep.txt": b"old"}
    assert sorted(os.listdir(str(tmp_path))) == ["models", "restored", "t.tar"]

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Artifact backups and restores: models, config files, Docker volumes (docs/artifacts.md).

A backup of kind ``models``, ``config`` or ``volume`` is one uncompressed tar
(``data.tar``) in the catalog plus a manifest listing **every** member with its
type, mode, owner, size and sha256 (``contents``, G27 — not only ``*.pkl``). The
tar keeps modes and numeric owners, so it restores with stock tools
(``tar -xpf data.tar --numeric-owner -C <dir>``); the manifest proves what it holds.

``content_sha256`` is a digest over the sorted ``(path, type, mode, sha256 or
link target)`` list: equal digests mean equal content (mtimes and owners are
ignored), which is how an unchanged source is detected.

This module is plain Python (no Ansible import): the pure core (listing,
digests, change detection, restore plans, safe extraction) is unit-tested in
tests/unit/test_artifacts.py; the Docker helpers take a ``runner`` with the
signature of ``AnsibleModule.run_command``.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import stat
import tarfile
import time

ARCHIVE = "data.tar"
KINDS = ("models", "config", "volume")
DEFAULT_EXCLUDES = ("*.pyc", "__pycache__")
PG_DATA = "/var/lib/postgresql/data"
DEFAULT_MODELS_PATH = "/app/models"
_CHUNK = 1024 * 1024


class ArtifactError(Exception):
    """An artifact backup or restore cannot proceed; the message names the cause and the fix."""


# -- listing -------------------------------------------------------------------
def is_excluded(rel, excludes):
    """True when ``rel`` (a relative path with ``/``) matches an exclude pattern.

    A pattern matches any single path component or the whole relative path,
    like GNU tar's default (unanchored) ``--exclude`` (G27).
    """
    if rel in (".", ""):
        return False
    parts = rel.split("/")
    for pattern in excludes or ():
        if fnmatch.fnmatchcase(rel, pattern) or any(fnmatch.fnmatchcase(p, pattern) for p in parts):
            return True
    return False


def mode_str(mode):
    return "%04o" % (stat.S_IMODE(mode) if mode > 0o7777 else mode)


def _sha256_stream(fh):
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = fh.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
    return digest.hexdigest(), size


def member_path(name):
    """Normalise a tar member name (``./a/b`` → ``a/b``, ``./`` → ``.``); refuse escapes."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name in ("", "."):
        return "."
    if name.startswith("/") or ".." in name.split("/"):
        raise ArtifactError("archive member %r escapes the target directory; the archive is unsafe" % name)
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _entry(path, kind, mode, size=0, sha256=None, link=None, uid=0, gid=0):
    out = {"path": path, "type": kind, "mode": mode_str(mode), "size": size, "uid": uid, "gid": gid}
    if sha256 is not None:
        out["sha256"] = sha256
    if link is not None:
        out["link"] = link
    return out


def scan_tar(tar_path, excludes=(), fileobj=None):
    """List every member of an (uncompressed) tar: type, mode, owner, size, sha256. Sorted by path.

    Hard links are listed as files with their target's size and sha256.
    Device files, FIFOs and sockets are refused (they are never model or config data).
    With ``fileobj`` the tar is read as a stream (a pipe) and ``tar_path`` only names it.
    """
    entries = {}
    try:
        how = {"fileobj": fileobj, "mode": "r|"} if fileobj is not None else {"name": tar_path, "mode": "r:"}
        with tarfile.open(**how) as tf:
            for m in tf:
                rel = member_path(m.name)
                if is_excluded(rel, excludes):
                    continue
                if m.isdir():
                    entries[rel] = _entry(rel, "dir", m.mode, uid=m.uid, gid=m.gid)
                elif m.isreg():
                    digest, size = _sha256_stream(tf.extractfile(m))
                    entries[rel] = _entry(rel, "file", m.mode, size, digest, uid=m.uid, gid=m.gid)
                elif m.issym():
                    entries[rel] = _entry(rel, "symlink", 0o777, link=m.linkname, uid=m.uid, gid=m.gid)
                elif m.islnk():
                    target = entries.get(member_path(m.linkname))
                    if not target or target["type"] != "file":
                        raise ArtifactError("hard link %s points to %s, which is not an earlier file" % (rel, m.linkname))
                    entries[rel] = _entry(rel, "file", m.mode, target["size"], target["sha256"], uid=m.uid, gid=m.gid)
                    entries[rel]["hardlink"] = target["path"]
                else:
                    raise ArtifactError(
                        "%s is a device, FIFO or socket; artifact backups hold regular files, directories "
                        "and symlinks only: add it to excludes" % rel
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError("%s is not a readable tar archive (%s)" % (tar_path, exc)) from None
    return [entries[k] for k in sorted(entries)]


# Check mode lists a container or volume without writing anything: the tar stream is piped into
# this script (run by the module's own Python), which prints the scan_tar listing as JSON.
# sys.argv[1]: this file's directory (module_utils/artifacts.py is plain Python, importable alone).
# df of the nearest existing directory of "$1" (a restore target that may not exist yet).
SPACE_SCRIPT = 'd="$1"; while [ ! -e "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done; df -P -k "$d"'

LIST_STREAM_SCRIPT = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); import artifacts; "
    "json.dump(artifacts.scan_tar('<stream>', json.loads(sys.argv[2]), fileobj=sys.stdin.buffer), sys.stdout)"
)


def list_host_tree(root, excludes=(), include_root=True):
    """List a host directory like :func:`scan_tar` lists a tar of it (symlinks are not followed)."""
    entries = []
    st = os.lstat(root)
    if include_root:
        entries.append(_entry(".", "dir", st.st_mode, uid=st.st_uid, gid=st.st_gid))
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        keep = []
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/" + name
            if is_excluded(rel, excludes):
                continue
            entries.append(host_entry(full, rel))
            if name in dirnames and entries[-1]["type"] == "dir":
                keep.append(name)
        dirnames[:] = sorted(keep)
    return sorted(entries, key=lambda e: e["path"])


def host_entry(full, rel):
    """One listing entry for a host path (lstat; regular files hashed)."""
    st = os.lstat(full)
    if stat.S_ISDIR(st.st_mode):
        return _entry(rel, "dir", st.st_mode, uid=st.st_uid, gid=st.st_gid)
    if stat.S_ISLNK(st.st_mode):
        return _entry(rel, "symlink", 0o777, link=os.readlink(full), uid=st.st_uid, gid=st.st_gid)
    if stat.S_ISREG(st.st_mode):
        with open(full, "rb") as fh:
            digest, size = _sha256_stream(fh)
        return _entry(rel, "file", st.st_mode, size, digest, uid=st.st_uid, gid=st.st_gid)
    raise ArtifactError(
        "%s is a device, FIFO or socket; artifact backups hold regular files, directories and symlinks "
        "only: add it to excludes" % full
    )


def config_root(paths):
    """The directory config paths are stored relative to: the common parent of every path."""
    if not paths:
        raise ArtifactError("src lists no paths; give the config files/directories as absolute paths")
    for p in paths:
        if not isinstance(p, str) or not os.path.isabs(p):
            raise ArtifactError("src path %r is not absolute; give absolute host paths (e.g. /srv/ner11/.env)" % (p,))
    norm = [os.path.normpath(p) for p in paths]
    if len(set(norm)) != len(norm):
        raise ArtifactError("src lists the same path twice: %s" % ", ".join(sorted(p for p in set(norm) if norm.count(p) > 1)))
    return os.path.commonpath([os.path.dirname(p) for p in norm])


def list_config(paths, excludes=()):
    """List config paths (files and directories) relative to :func:`config_root`.

    Directories between the root and each path are included (their modes are
    restored too); the root itself is not (a config restore only adds files).
    """
    root = config_root(paths)
    entries = {}
    for p in sorted(os.path.normpath(p) for p in paths):
        if not os.path.lexists(p):
            raise ArtifactError("config path %s does not exist; fix src or create it" % p)
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            entries.setdefault(parent, host_entry(os.path.join(root, parent), parent))
        entry = host_entry(p, rel)
        entries[rel] = entry
        if entry["type"] == "dir":
            for sub in list_host_tree(p, excludes, include_root=False):
                sub = dict(sub, path=rel + "/" + sub["path"])
                if not is_excluded(sub["path"], excludes):
                    entries[sub["path"]] = sub
    return root, [entries[k] for k in sorted(entries)]


def write_tar(tar_path, root, entries):
    """Write the listed host paths (relative to ``root``) into an uncompressed PAX tar, streaming."""
    fd = os.open(tar_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            full = root if e["path"] == "." else os.path.join(root, e["path"])
            try:
                tf.add(full, arcname=e["path"], recursive=False)
            except OSError as exc:
                raise ArtifactError("cannot read %s: %s; was it changed during the backup?" % (full, exc.strerror)) from None


# -- digests and manifests -------------------------------------------------------
def _identity(e):
    value = e.get("link") if e["type"] == "symlink" else e.get("sha256", "")
    return [e["path"], e["type"], e["mode"] if e["type"] != "symlink" else "", value or ""]


def content_digest(contents):
    """sha256 of the compact JSON list of ``[path, type, mode, sha256 | link target]``, sorted by path."""
    rows = sorted(_identity(e) for e in contents)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()


def files_digest(files):
    """The catalog's whole-backup digest: sha256 of ``"<sha256>  <path>\\n"`` lines (docs/backup-catalog.md)."""
    text = "".join("%s  %s\n" % (f["sha256"], f["path"]) for f in files)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def summarize(contents):
    files = [e for e in contents if e["type"] == "file"]
    return {"file_count": len(files), "content_bytes": sum(e["size"] for e in files), "entries": len(contents)}


def source_instance(kind, source):
    """The identity of a source; "unchanged" and ``latest`` compare backups of the same instance."""
    if source.get("volume"):
        return "volume:%s" % source["volume"]
    if source.get("container"):
        return "container:%s:%s" % (source["container"], source["path"])
    return "host:%s:%s" % (source.get("host", ""), source["path"] if kind != "config" else ",".join(source["paths"]))


def build_manifest(kind, backup_id, source, contents, archive, created_at, completed_at, period, period_key, duration_s, **extra):
    """The catalog manifest of an artifact backup (fields: docs/backup-catalog.md + docs/artifacts.md)."""
    files = [archive]
    manifest = {
        "kind": kind,
        "backup_id": backup_id,
        "created_at": created_at,
        "completed_at": completed_at,
        "period": period,
        "period_key": period_key,
        "source": source,
        "files": files,
        "size_bytes": sum(f["size"] for f in files),
        "sha256": files_digest(files),
        "duration_s": round(duration_s, 3),
        "format": "tar",
        "compression": "none",
        "artifact": archive["path"],
        "contents": contents,
        "content_sha256": content_digest(contents),
        "sensitive": kind == "config",
        "restore": {
            "workdir": "the backup directory",
            "placeholders": {"{dest}": "the directory to restore into"},
            "commands": ["mkdir -p {dest}", "tar -xpf %s --numeric-owner -C {dest}" % archive["path"]],
            "notes": [
                "contents lists every member with mode and sha256; compare after extracting",
                "config backups hold secrets (.env): keep them 0600 and encrypt any offsite copy",
            ],
        },
    }
    manifest.update(summarize(contents))
    manifest.update(extra)
    return manifest


# -- change detection and restore plans -------------------------------------------
def _same(a, b):
    return _identity(a) == _identity(b)


def restore_plan(backup, target, mode="mirror"):
    """What restoring ``backup`` contents over ``target`` contents (None: missing) changes.

    ``mirror`` (models, volume): the target becomes exactly the backup, extra
    entries are removed. ``overlay`` (config): backup entries are written, other
    files are left alone. Returns write/replace/remove path lists,
    ``unchanged`` (count) and ``identical``.
    """
    if mode not in ("mirror", "overlay"):
        raise ArtifactError("invalid restore mode %r" % mode)
    current = {e["path"]: e for e in (target or [])}
    wanted = {e["path"]: e for e in backup}
    write, replace, unchanged = [], [], 0
    for path in sorted(wanted):
        if path not in current:
            write.append(path)
        elif _same(wanted[path], current[path]):
            unchanged += 1
        else:
            replace.append(path)
    remove = []
    if mode == "mirror":
        remove = sorted(p for p in current if p not in wanted and p != ".")
    return {
        "mode": mode,
        "target_exists": target is not None,
        "write": write,
        "replace": replace,
        "remove": remove,
        "unchanged": unchanged,
        "identical": target is not None and not write and not replace and not remove,
    }


def plan_needs_confirm(plan, target):
    """A restore that replaces or removes something in a non-empty target needs ``confirm``."""
    non_empty = bool([e for e in (target or []) if e["path"] != "."])
    return non_empty and bool(plan["replace"] or plan["remove"])


def diff_lines(paths, listing):
    by_path = {e["path"]: e for e in listing or []}
    out = []
    for p in paths:
        e = by_path.get(p)
        if e is None:
            continue
        tail = e.get("sha256", "")[:12] if e["type"] == "file" else e.get("link", "")
        out.append("%s %s %s %s" % (e["type"], e["mode"], tail or "-", p))
    return "".join(line + "\n" for line in out)


def changed_paths(old_contents, new_contents):
    """Paths whose identity differs between two content listings (added, removed or modified)."""
    plan = restore_plan(new_contents, old_contents, "mirror")
    return sorted(plan["write"] + plan["replace"] + plan["remove"])


def corrupt_members(tar_path, contents):
    """Members of a damaged archive that no longer match the manifest (best effort, for messages)."""
    try:
        found = {e["path"]: e for e in scan_tar(tar_path)}
    except ArtifactError as exc:
        return ["(archive unreadable: %s)" % exc]
    bad = []
    for e in contents:
        other = found.get(e["path"])
        if other is None or not _same(e, other):
            bad.append(e["path"])
    return bad


# -- safe extraction on the host ----------------------------------------------------
def extract_tar(tar_path, root, only=None, chown=None):
    """Extract a tar under ``root`` without ever leaving it.

    Member names are validated; symlinks are created last, so no file is ever
    written through a link; devices are refused. Modes and mtimes are restored,
    numeric owners too when ``chown`` (default: when running as root). ``only``
    restricts extraction to a set of paths (overlay restores).
    """
    chown = (os.geteuid() == 0) if chown is None else chown
    dirs, links = [], []
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            rel = member_path(m.name)
            if only is not None and rel not in only:
                continue
            target = root if rel == "." else os.path.join(root, rel)
            if m.isdir():
                os.makedirs(target, mode=0o700, exist_ok=True)
                dirs.append((target, m))
                continue
            parent = os.path.dirname(target)
            os.makedirs(parent, mode=0o700, exist_ok=True)
            if m.isreg():
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(tf.extractfile(m), out, _CHUNK)
                _apply_meta(target, m, chown)
            elif m.islnk():
                os.link(os.path.join(root, member_path(m.linkname)), target)
            elif m.issym():
                links.append((target, m))
            else:
                raise ArtifactError("archive member %s is a device, FIFO or socket; refusing to extract it" % rel)
    for target, m in links:
        os.symlink(m.linkname, target)
        if chown:
            os.lchown(target, m.uid, m.gid)
    for target, m in sorted(dirs, key=lambda d: d[0].count(os.sep), reverse=True):
        _apply_meta(target, m, chown)


def _apply_meta(path, m, chown):
    if chown:
        os.chown(path, m.uid, m.gid)
    os.chmod(path, m.mode & 0o7777)
    os.utime(path, (m.mtime, m.mtime))


def host_restore_mirror(tar_path, dest, tag):
    """Make ``dest`` exactly the archive: extract into ``<dest>.ner11-new-<tag>``, swap, drop the old tree.

    The old directory is kept as ``<dest>.ner11-old-<tag>`` until the new one is
    in place and is removed after; any failure before the swap leaves ``dest``
    untouched. A mount point cannot be renamed: its contents are swapped instead
    (staging inside it, then one rename per top-level entry).
    """
    dest = os.path.normpath(dest)
    if os.path.isdir(dest) and os.path.ismount(dest):
        return _host_swap_contents(tar_path, dest, tag)
    new = "%s.ner11-new-%s" % (dest, tag)
    old = "%s.ner11-old-%s" % (dest, tag)
    for leftover in (new, old):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover)
    os.makedirs(os.path.dirname(dest) or "/", exist_ok=True)
    try:
        os.mkdir(new, 0o700)
        extract_tar(tar_path, new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    had_old = os.path.lexists(dest)
    if had_old:
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        if had_old:
            os.rename(old, dest)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
    return "sibling-swap"


def _host_swap_contents(tar_path, dest, tag):
    stage = os.path.join(dest, ".ner11-restore-%s" % tag)
    old = os.path.join(dest, ".ner11-old-%s" % tag)
    for leftover in (stage, old):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover)
    os.mkdir(stage, 0o700)
    try:
        extract_tar(tar_path, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.mkdir(old, 0o700)
    for name in os.listdir(dest):
        if name not in (os.path.basename(stage), os.path.basename(old)):
            os.rename(os.path.join(dest, name), os.path.join(old, name))
    for name in os.listdir(stage):
        os.rename(os.path.join(stage, name), os.path.join(dest, name))
    st = os.stat(stage)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    os.rmdir(stage)
    shutil.rmtree(old, ignore_errors=True)
    return "contents-swap"


def host_restore_overlay(tar_path, dest, paths):
    """Write only ``paths`` of the archive under ``dest``, each by rename from a staging dir in ``dest``.

    Other files in ``dest`` are left alone (config restores). Directories are
    handled shallow-first so parents exist (with their modes) before children.
    """
    paths = set(paths)
    if not paths:
        return "overlay"
    os.makedirs(dest, mode=0o700, exist_ok=True)
    stage = os.path.join(dest, ".ner11-restore-%s" % new_tag())
    os.mkdir(stage, 0o700)
    try:
        extract_tar(tar_path, stage, only=paths)
        for rel in sorted(paths, key=lambda p: (p.count("/"), p)):
            src = os.path.join(stage, rel)
            dst = os.path.join(dest, rel)
            if os.path.isdir(src) and not os.path.islink(src):
                if not (os.path.isdir(dst) and not os.path.islink(dst)):
                    if os.path.lexists(dst):
                        _remove(dst)
                    os.mkdir(dst, 0o700)
                st = os.stat(src)
                if os.geteuid() == 0:
                    os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
                continue
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            os.rename(src, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return "overlay"


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# -- containers and volumes ---------------------------------------------------------
SWAP_SCRIPT = r"""
set -eu
d=$1; tag=$2
s="$d/.ner11-restore-$tag"; o="$d/.ner11-old-$tag"
mkdir -p "$d"
rm -rf "$s" "$o"
mkdir "$s"
if ! tar -C "$s" -xpf - --numeric-owner; then rm -rf "$s"; echo "extracting the archive into $d failed" >&2; exit 3; fi
mkdir "$o"
for e in "$d"/* "$d"/.[!.]* "$d"/..?*; do
  { [ -e "$e" ] || [ -L "$e" ]; } || continue
  case "$e" in "$s"|"$o") continue;; esac
  mv "$e" "$o"/
done
for e in "$s"/* "$s"/.[!.]* "$s"/..?*; do
  { [ -e "$e" ] || [ -L "$e" ]; } || continue
  mv "$e" "$d"/
done
chmod "$(stat -c %a "$s")" "$d"
chown "$(stat -c %u:%g "$s")" "$d" 2>/dev/null || true
rmdir "$s"
rm -rf "$o"
"""


def tar_create_args(path, excludes):
    """``tar`` arguments that stream ``path``'s contents; excludes before the operand (G27)."""
    args = ["tar", "-C", path, "--numeric-owner"]
    args += ["--exclude=%s" % pattern for pattern in excludes or ()]
    return args + ["-cf", "-", "."]


class Docker:
    """The docker CLI through ``runner`` (``AnsibleModule.run_command``); records what ran."""

    def __init__(self, runner, cli="docker"):
        self.runner = runner
        self.cli = cli
        self.commands = []

    def run(self, args, check=True, what=None):
        cmd = [self.cli] + list(args)
        self.commands.append(shlex.join(cmd))
        rc, out, err = self.runner(cmd)
        if check and rc != 0:
            raise ArtifactError("%s failed (rc=%s): %s" % (what or shlex.join(cmd[:3]), rc, last_line(err or out)))
        return rc, out, err

    def pipe(self, args, into, ok_rcs=(0,), what=None):
        """Run docker with its stdout piped into the command ``into`` (argv); returns ``into``'s output."""
        line = "%s | %s" % (shlex.join([self.cli] + list(args)), shlex.join(into))
        self.commands.append(line)
        rc, out, err = self.runner(["/bin/bash", "-o", "pipefail", "-c", line])
        if rc not in ok_rcs:
            raise ArtifactError("%s failed (rc=%s): %s" % (what or "docker", rc, last_line(err or out)))
        return rc, out, err

    def shell(self, args, stdout_to=None, stdin_from=None, ok_rcs=(0,), what=None):
        """Run docker with stdout streamed to a file or stdin from a file (never held in memory)."""
        line = shlex.join([self.cli] + list(args))
        if stdout_to:
            line += " > %s" % shlex.quote(stdout_to)
        if stdin_from:
            line += " < %s" % shlex.quote(stdin_from)
        self.commands.append(line)
        rc, out, err = self.runner(line, use_unsafe_shell=True)
        if rc not in ok_rcs:
            raise ArtifactError("%s failed (rc=%s): %s" % (what or "docker", rc, last_line(err or out)))
        return rc, out, err

    def inspect(self, kind, name):
        rc, out, _err = self.run(["inspect", "--type", kind, name], check=False)
        if rc != 0:
            return None
        data = json.loads(out or "[]")
        return data[0] if data else None

    def volume_users(self, volume):
        """Containers (any state) that mount ``volume``: name, running, image id/name, mount destination."""
        _rc, out, _err = self.run(["ps", "-a", "--filter", "volume=%s" % volume, "--format", "{{.ID}}"])
        ids = out.split()
        if not ids:
            return []
        _rc, out, _err = self.run(["inspect", "--type", "container"] + ids)
        return volume_users_from_inspect(json.loads(out or "[]"), volume)

    def image_exists(self, image):
        return self.run(["image", "inspect", image], check=False)[0] == 0


def volume_users_from_inspect(inspected, volume):
    users = []
    for c in inspected:
        for m in c.get("Mounts") or []:
            if m.get("Type") == "volume" and m.get("Name") == volume:
                users.append(
                    {
                        "name": (c.get("Name") or "").lstrip("/"),
                        "running": bool((c.get("State") or {}).get("Running")),
                        "image_id": c.get("Image"),
                        "image": (c.get("Config") or {}).get("Image"),
                        "destination": m.get("Destination"),
                        "pgdata": _pgdata(c),
                    }
                )
    return sorted(users, key=lambda u: u["name"])


def _pgdata(container):
    for item in (container.get("Config") or {}).get("Env") or []:
        if item.startswith("PGDATA="):
            return item.split("=", 1)[1]
    return None


def live_postgres_users(users):
    """Running containers that use the volume as their PostgreSQL data directory (G2, G28)."""
    live = []
    for u in users:
        if not u["running"]:
            continue
        dest = (u["destination"] or "").rstrip("/")
        pgdata = (u.get("pgdata") or "").rstrip("/")
        if dest == PG_DATA or (pgdata and (pgdata == dest or pgdata.startswith(dest + "/"))):
            live.append(u["name"])
    return live


def mount_for_path(container, path):
    """The volume mounted at ``path`` in an inspected container (for messages), or None."""
    for m in container.get("Mounts") or []:
        if m.get("Destination", "").rstrip("/") == path.rstrip("/"):
            return m.get("Name") or m.get("Source")
    return None


def last_line(text):
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def new_tag():
    return "%d-%d" % (int(time.time()), os.getpid())


def is_enoent(exc):
    return isinstance(exc, OSError) and exc.errno == errno.ENOENT


# -- the jobs the modules run ---------------------------------------------------------
def _catalog():
    # imported lazily so the pure functions above stay importable on their own
    from ansible_collections.ner11.ops.plugins.module_utils import catalog

    return catalog


def _hostname():
    import socket

    return socket.gethostname()


def _abs(path, option):
    if not isinstance(path, str) or not path or not os.path.isabs(path):
        raise ArtifactError("%s must be an absolute path, got %r" % (option, path))
    return os.path.normpath(path)


HELPER_LABEL = "io.ner11.helper=artifact"
PIN_REASON = "pinned by artifact_backup keep_until"


def helper_run_args(image, volume, mount, read_only, stdin=False):
    """``docker run`` arguments of a short-lived helper container: no network, root, never pulled."""
    args = ["run", "--rm"]
    if stdin:
        args.append("-i")
    args += ["--pull=never", "--network", "none", "--user", "0:0", "--label", HELPER_LABEL]
    args += ["-v", "%s:%s%s" % (volume, mount, ":ro" if read_only else "")]
    return args + ["--entrypoint"]


class _ArtifactJob:
    """What backup and restore share: the validated kind, the catalog and the docker runner."""

    def __init__(self, params, runner):
        self.cat = _catalog()
        self.p = params
        self.kind = params.get("kind")
        if self.kind not in KINDS:
            raise ArtifactError("invalid kind %r: use one of %s" % (self.kind, ", ".join(KINDS)))
        self.catalog = self.cat.Catalog(params.get("backup_dir"))
        self.docker = Docker(runner, params.get("docker_cli") or "docker")


class ArtifactBackup(_ArtifactJob):
    """``artifact_backup``: stream a source into ``data.tar`` of a catalog partial, describe, publish."""

    def __init__(self, params, runner, check_mode=False, tmpdir=None, now=None):
        super().__init__(params, runner)
        cat = self.cat
        excludes = params.get("excludes")
        self.excludes = list(DEFAULT_EXCLUDES if excludes is None else excludes)
        self.period = params.get("period") or "manual"
        self.force = bool(params.get("force"))
        self.check_mode = check_mode
        self.tmpdir = tmpdir
        self.now = now or cat.utcnow()
        self.warnings = []
        cat.period_key(self.period, self.now)  # validates the period
        # source identity (docs/backup-catalog.md): the name the role passes, else this machine's
        self.source_host = params.get("source_host") or _hostname()
        self.pins = cat.new_backup_pins(params.get("keep_until"), params.get("keep_reason"), self.now, PIN_REASON)

    # -- sources -----------------------------------------------------------------------
    def resolve(self):
        """Return (source dict, id name, stream(tar_path), listing()).

        ``listing()`` lists the source's content like :func:`scan_tar` lists the
        tar ``stream`` writes, without writing anything (check mode).
        """
        src = self.p.get("src")
        if isinstance(src, str):
            src = [src]
        src = list(src or [])
        host = self.source_host
        if self.kind == "config":
            root = config_root(src)
            paths = sorted(os.path.normpath(p) for p in src)

            def stream(tar_path):
                _root, entries = list_config(paths, self.excludes)
                write_tar(tar_path, root, entries)

            def listing():
                return [e for e in list_config(paths, self.excludes)[1] if not is_excluded(e["path"], self.excludes)]

            source = {"host": host, "path": root, "paths": paths}
            return source, "config-%s" % (os.path.basename(root) or "root"), stream, listing
        if self.kind == "volume":
            if len(src) != 1:
                raise ArtifactError("kind volume takes one volume name in src, got %r" % (src,))
            return self._volume_source(src[0], host)
        container = self.p.get("container")
        if container:
            if len(src) > 1:
                raise ArtifactError("kind models takes one directory in src, got %r" % (src,))
            path = _abs(src[0] if src else DEFAULT_MODELS_PATH, "src")
            return self._container_source(container, path, host)
        if len(src) != 1:
            raise ArtifactError(
                "kind models needs container (the api container, src defaults to /app/models) "
                "or one absolute host directory in src"
            )
        path = _abs(src[0], "src")
        if not os.path.isdir(path):
            raise ArtifactError(
                "models directory %s does not exist on this host (/app/models is a path inside the api container); "
                "set container to the api container name, or src to the host directory" % path
            )

        def stream_host(tar_path):
            write_tar(tar_path, path, list_host_tree(path, self.excludes))

        def listing():
            return list_host_tree(path, self.excludes)

        return {"host": host, "path": path}, "models-%s" % (os.path.basename(path) or "root"), stream_host, listing

    def _container_source(self, container, path, host):
        info = self.docker.inspect("container", container)
        if info is None:
            raise ArtifactError("container %s not found; check the name with `docker ps -a`" % container)
        mount = mount_for_path(info, path)
        if not (info.get("State") or {}).get("Running"):
            hint = " or back up its volume instead: kind: volume, src: %s" % mount if mount else ""
            raise ArtifactError(
                "container %s is not running (state %s): start it%s" % (container, (info.get("State") or {}).get("Status"), hint)
            )
        rc, _out, _err = self.docker.run(["exec", container, "test", "-d", path], check=False)
        if rc != 0:
            raise ArtifactError("%s is not a directory in container %s; fix src (default /app/models)" % (path, container))
        source = {"host": host, "container": container, "path": path, "image": (info.get("Config") or {}).get("Image")}
        if mount:
            source["mount"] = mount

        def stream(tar_path):
            rc, _out, err = self.docker.shell(
                ["exec", container] + tar_create_args(path, self.excludes),
                stdout_to=tar_path,
                ok_rcs=(0, 1),
                what="streaming %s out of container %s" % (path, container),
            )
            if rc == 1:
                self.warnings.append("tar reported files changing during the copy: %s" % last_line(err))

        def listing():
            return self._list_stream(
                ["exec", container] + tar_create_args(path, self.excludes), "listing %s in %s" % (path, container)
            )

        return source, "models-%s" % container, stream, listing

    def _volume_source(self, volume, host):
        info = self.docker.inspect("volume", volume)
        if info is None:
            raise ArtifactError("Docker volume %s not found; list volumes with `docker volume ls`" % volume)
        users = self.docker.volume_users(volume)
        live = live_postgres_users(users)
        if live and not self.p.get("allow_live"):
            raise ArtifactError(
                "volume %s is the data directory of the running PostgreSQL container %s: a file copy of a live "
                "database is not crash-consistent. Stop %s first (e.g. ner11.ops.service), use pg_backup "
                "for a logical backup, or set allow_live: true to copy it anyway" % (volume, ", ".join(live), live[0])
            )
        if live:
            self.warnings.append(
                "copying the live PostgreSQL data volume %s (allow_live): the copy may not be crash-consistent" % volume
            )
        image, image_name = self._helper_image(volume, users, None)
        source = {
            "host": host,
            "volume": volume,
            "driver": info.get("Driver"),
            "labels": info.get("Labels") or {},
            "helper_image": image_name,
            "users": [u["name"] for u in users],
            "live": bool(live),
        }

        def stream(tar_path):
            args = helper_run_args(image, volume, "/src", True) + ["tar", image] + tar_create_args("/src", self.excludes)[1:]
            rc, _out, err = self.docker.shell(
                args, stdout_to=tar_path, ok_rcs=(0, 1) if live else (0,), what="copying volume %s" % volume
            )
            if rc == 1:
                self.warnings.append("tar reported files changing during the copy: %s" % last_line(err))

        def listing():
            args = helper_run_args(image, volume, "/src", True) + ["tar", image] + tar_create_args("/src", self.excludes)[1:]
            return self._list_stream(args, "listing volume %s" % volume)

        return source, volume, stream, listing

    def _list_stream(self, docker_args, what):
        """The tar the docker command streams, listed by the module's own Python reading the pipe: nothing is written."""
        import sys

        here = os.path.dirname(os.path.abspath(__file__))
        into = [sys.executable or "python3", "-c", LIST_STREAM_SCRIPT, here, json.dumps(self.excludes)]
        _rc, out, _err = self.docker.pipe(docker_args, into, ok_rcs=(0, 1), what=what)
        try:
            return json.loads(out)
        except ValueError:
            raise ArtifactError(
                "%s gave no listing (%s); check that tar exists in the container" % (what, last_line(out))
            ) from None

    def _helper_image(self, volume, users, recorded):
        return choose_helper_image(self.docker, self.p.get("helper_image"), volume, users, recorded)

    # -- the run -----------------------------------------------------------------------
    def _new_id(self, name):
        base = self.cat.new_backup_id(name, self.now)
        backup_id, n = base, 1
        while os.path.exists(self.catalog.path(self.kind, backup_id)) or os.path.exists(
            self.catalog.partial_path(self.kind, backup_id)
        ):
            n += 1
            backup_id = "%s-%d" % (base, n)
        return backup_id

    def run(self):
        started = time.monotonic()
        source, name, stream, listing = self.resolve()
        source["instance"] = source_instance(self.kind, source)
        source["machine"] = _hostname()
        if self.check_mode:
            # Decide from a listing of the source: nothing is written, not even a temp file.
            latest = self._latest(source)
            return self._check_result(source, name, listing(), None, latest)
        with self.catalog.lock(self.kind, wait=int(self.p.get("lock_timeout") or 0) > 0, timeout=self.p.get("lock_timeout") or 0):
            cleaned = [os.path.basename(p) for p in self.catalog.clean_stale_partials(self.kind, 0)]
            latest = self._latest(source)
            backup_id = self._new_id(name)
            partial = self.catalog.begin(self.kind, backup_id)
            try:
                tar_path = os.path.join(partial, ARCHIVE)
                stream(tar_path)
                contents = scan_tar(tar_path, self.excludes)
                digest = content_digest(contents)
                if latest and latest.get("content_sha256") == digest and not self.force:
                    self.catalog.discard(self.kind, backup_id)
                    return self._existing_result(latest, contents, cleaned, digest)
                sha = self.cat.sha256_file(tar_path)
                archive = {"path": ARCHIVE, "size": os.path.getsize(tar_path), "sha256": sha, "mode": "0600"}
                duration = time.monotonic() - started
                manifest = build_manifest(
                    self.kind,
                    backup_id,
                    source,
                    contents,
                    archive,
                    self.cat.isoformat(self.now),
                    self.cat.isoformat(self.cat.utcnow()),
                    self.period,
                    self.cat.period_key(self.period, self.now),
                    duration,
                    excludes=self.excludes,
                    tool={"name": "ner11.ops.artifact_backup", "version": None},
                    previous_backup_id=latest["backup_id"] if latest else None,
                )
                final = self.catalog.publish(self.kind, backup_id, manifest, pins=self.pins)
            except BaseException:
                self.catalog.discard(self.kind, backup_id)
                raise
        manifest = self.catalog.read_manifest(self.kind, backup_id)
        result = self._result(manifest, True, final)
        result["changed_paths"] = changed_paths(latest.get("contents") or [], contents) if latest else None
        result["cleaned_partials"] = cleaned
        result["pins"] = self.pins
        return result

    def _latest(self, source):
        """The newest good backup of this source identity (a failed verification does not count)."""
        return self.catalog.latest(self.kind, instance=source["instance"], host=self.source_host)

    def _plan(self, source, backup_id, contents, archive_size, latest, action, reason):
        summary = summarize(contents)
        return {
            "action": action,
            "reason": reason,
            "backup_id": backup_id,
            "kind": self.kind,
            "source": source,
            "file_count": summary["file_count"],
            "content_bytes": summary["content_bytes"],
            "archive_bytes": archive_size,
            "content_sha256": content_digest(contents),
            "unchanged": bool(latest and latest.get("content_sha256") == content_digest(contents)),
            "latest_backup_id": latest["backup_id"] if latest else None,
            "excludes": self.excludes,
        }

    def _check_result(self, source, name, contents, archive_size, latest):
        unchanged = bool(latest and latest.get("content_sha256") == content_digest(contents))
        if unchanged and not self.force:
            plan = self._plan(source, latest["backup_id"], contents, archive_size, latest, "none", "content unchanged")
            plan["freshness"] = "would record that %s is still current" % latest["backup_id"]
            pin_changed = cat_pin_plan(self, latest["backup_id"])
            result = self._result(latest, pin_changed, self.catalog.path(self.kind, latest["backup_id"]))
        else:
            backup_id = self.cat.new_backup_id(name, self.now)
            reason = "force" if unchanged else ("content changed" if latest else "no backup of this source yet")
            plan = self._plan(source, backup_id, contents, archive_size, latest, "create", reason)
            plan["pins"] = self.pins
            result = {
                "changed": True,
                "backup_id": backup_id,
                "path": self.catalog.path(self.kind, backup_id),
                "sha256": None,
                "content_sha256": plan["content_sha256"],
                "size_bytes": archive_size,
                "duration_s": 0.0,
                "file_count": plan["file_count"],
                "content_bytes": plan["content_bytes"],
                "changed_paths": changed_paths(latest.get("contents") or [], contents) if latest else None,
            }
        result["plan"] = plan
        return result

    def _existing_result(self, latest, contents, cleaned, digest):
        """Unchanged content: record that the latest backup is still current (an audit entry, not a change)."""
        backup_id = latest["backup_id"]
        freshness = self.catalog.record_freshness(self.kind, backup_id, digest, self.source_host, self.cat.utcnow(), self.period)
        pin_changed = cat_pin_plan(self, backup_id, apply=True)
        result = self._result(latest, pin_changed, self.catalog.path(self.kind, backup_id))
        result["changed_paths"] = []
        result["cleaned_partials"] = cleaned
        result["freshness"] = freshness
        result["pins"] = self.catalog.pins(self.kind, backup_id)
        result["plan"] = {"action": "none", "reason": "content unchanged", "backup_id": backup_id}
        return result

    def _result(self, manifest, changed, path):
        return {
            "changed": changed,
            "backup_id": manifest["backup_id"],
            "path": path,
            "manifest": manifest,
            "sha256": manifest.get("sha256"),
            "content_sha256": manifest.get("content_sha256"),
            "size_bytes": manifest.get("size_bytes"),
            "duration_s": manifest.get("duration_s", 0.0) if changed else 0.0,
            "file_count": manifest.get("file_count"),
            "content_bytes": manifest.get("content_bytes"),
        }


def cat_pin_plan(job, backup_id, apply=False):
    """keep_until on a run that makes no new backup pins the existing one; True when that pin changes.

    Called with the kind's lock held when ``apply`` (the real run), so plan and write are one step.
    """
    keep_until = job.p.get("keep_until")
    if not keep_until:
        return False
    reason = (job.p.get("keep_reason") or "").strip() or PIN_REASON
    changed, _before, after = job.catalog.plan_pin(job.kind, backup_id, keep_until, reason, "present", job.now)
    if changed and apply:
        job.catalog.set_pins(job.kind, backup_id, after)
    return changed


def choose_helper_image(docker, wanted, volume, users, recorded):
    """(image to run, image name to record): the option, else a user's image, else the recorded one."""
    if wanted:
        if not docker.image_exists(wanted):
            raise ArtifactError(
                "helper_image %s is not present locally; images are never pulled: build or load it, "
                "or name a local image that has tar" % wanted
            )
        return wanted, wanted
    for u in sorted(users, key=lambda u: not u["running"]):
        if u.get("image_id") and docker.image_exists(u["image_id"]):
            return u["image_id"], u.get("image") or u["image_id"]
    if recorded and docker.image_exists(recorded):
        return recorded, recorded
    raise ArtifactError(
        "no local image to run the copy of volume %s in (no container uses it%s): set helper_image to a local "
        "image that has tar, e.g. the stack's postgres or api image; images are never pulled"
        % (volume, ", and the recorded image %s is not present" % recorded if recorded else "")
    )


class ArtifactRestore(_ArtifactJob):
    """``artifact_restore``: verify a backup, plan against the target, swap it in, verify the target."""

    def __init__(self, params, runner, check_mode=False, diff=False, tmpdir=None):
        super().__init__(params, runner)
        cat = self.cat
        self.check_mode = check_mode
        self.diff = diff
        self.tmpdir = tmpdir
        self.warnings = []
        # What this run wrote to the target (reported as changed when it fails afterwards).
        self.touched = []
        if bool(params.get("backup_id")) == bool(params.get("latest")):
            raise ArtifactError("set exactly one of backup_id or latest: true")
        if params.get("backup_id"):
            cat.validate_backup_id(params["backup_id"])
        if params.get("dest") is not None:
            _abs(params["dest"], "dest")
        if params.get("volume") and (params.get("dest") or params.get("container")):
            raise ArtifactError("volume restores take no dest or container; set either volume, or dest (with container)")
        if params.get("container") and not params.get("dest"):
            raise ArtifactError("container needs dest: the absolute directory inside the container, e.g. /app/models")

    # -- selection and verification ------------------------------------------------------
    def manifest(self):
        if self.p.get("latest"):
            # the newest good backup of one source identity (never another host's by accident)
            good = self.catalog.list(self.kind)
            volume = self.p.get("volume")
            if volume:  # restoring a volume: its own backups first, when there are any
                good = [m for m in good if (m.get("source") or {}).get("volume") == volume] or good
            try:
                found, _ident = self.cat.choose_identity(good, "%s backups" % self.kind, self.p.get("source_host"))
            except self.cat.CatalogError as exc:
                raise ArtifactError(str(exc)) from None
            if not found:
                raise ArtifactError(
                    "no good %s backup%s in %s; run ner11.ops.artifact_backup first"
                    % (self.kind, " of host %s" % self.p["source_host"] if self.p.get("source_host") else "", self.catalog.root)
                )
            return found[-1]
        return self.catalog.read_manifest(self.kind, self.p["backup_id"])

    def verify(self, manifest):
        backup_id = manifest["backup_id"]
        if manifest.get("artifact") != ARCHIVE or not isinstance(manifest.get("contents"), list):
            raise ArtifactError(
                "backup %s/%s was not written by artifact_backup (no %s/contents)" % (self.kind, backup_id, ARCHIVE)
            )
        problems = self.catalog.verify(self.kind, backup_id)
        if problems:
            tar_path = os.path.join(self.catalog.path(self.kind, backup_id), ARCHIVE)
            members = corrupt_members(tar_path, manifest["contents"]) if os.path.exists(tar_path) else []
            detail = " (damaged members: %s)" % ", ".join(members[:10]) if members else ""
            raise ArtifactError(
                "backup %s/%s is corrupt, nothing was restored: %s%s; restore another backup (backup_id) or take a "
                "new one with artifact_backup" % (self.kind, backup_id, "; ".join(problems), detail)
            )

    # -- targets -----------------------------------------------------------------------
    def target(self, manifest):
        """(type, name, details): host / container / volume, defaulting to where the backup came from."""
        src = manifest.get("source") or {}
        if self.p.get("volume"):
            return "volume", self.p["volume"], {}
        if self.p.get("container"):
            return "container", self.p["dest"], {"container": self.p["container"]}
        if self.p.get("dest"):
            return "host", os.path.normpath(self.p["dest"]), {}
        if src.get("volume"):
            return "volume", src["volume"], {}
        if src.get("container"):
            return "container", src["path"], {"container": src["container"]}
        if src.get("path"):
            return "host", src["path"], {}
        raise ArtifactError("set dest (host path), container + dest, or volume: the backup records no source")

    def listing(self, ttype, name, details, manifest):
        """The target's current contents (None when it does not exist)."""
        excludes = manifest.get("excludes") or ()
        if ttype == "host":
            if self.kind == "config":
                found = []
                for e in manifest["contents"]:
                    full = os.path.join(name, e["path"])
                    if os.path.lexists(full):
                        found.append(host_entry(full, e["path"]))
                return found if os.path.isdir(name) else None
            if not os.path.lexists(name):
                return None
            if not os.path.isdir(name) or os.path.islink(name):
                raise ArtifactError("dest %s exists and is not a directory; remove it or choose another dest" % name)
            return list_host_tree(name, excludes)
        if ttype == "container":
            container = details["container"]
            if self.docker.run(["exec", container, "test", "-d", name], check=False)[0] != 0:
                return None
            return self._stream_listing(["exec", container] + tar_create_args(name, excludes), excludes)
        if self.docker.inspect("volume", name) is None:
            return None
        image, _name = choose_helper_image(
            self.docker, self.p.get("helper_image"), name, self._users(name), self._recorded(manifest)
        )
        args = helper_run_args(image, name, "/dst", True) + ["tar", image] + tar_create_args("/dst", excludes)[1:]
        return self._stream_listing(args, excludes)

    def _users(self, volume):
        if not hasattr(self, "_users_cache"):
            self._users_cache = self.docker.volume_users(volume)
        return self._users_cache

    @staticmethod
    def _recorded(manifest):
        return (manifest.get("source") or {}).get("helper_image") or (manifest.get("source") or {}).get("image")

    def _stream_listing(self, args, excludes):
        """The target's tar, listed from the pipe by the module's own Python: nothing is written (check mode too)."""
        import sys

        here = os.path.dirname(os.path.abspath(__file__))
        into = [sys.executable or "python3", "-c", LIST_STREAM_SCRIPT, here, json.dumps(list(excludes or ()))]
        _rc, out, _err = self.docker.pipe(args, into, ok_rcs=(0, 1), what="reading the restore target")
        try:
            return json.loads(out)
        except ValueError:
            raise ArtifactError(
                "reading the restore target gave no listing (%s); check that tar exists in the container" % last_line(out)
            ) from None

    # -- space pre-flight ------------------------------------------------------------------
    def space_check(self, ttype, name, details, manifest, plan, mode):
        """Free space on the target's filesystem before anything is touched.

        A mirror restore unpacks every file beside the old content and swaps (the old
        content stays until then), so it needs the backup's whole size; an overlay
        needs the files it writes. Returns the numbers and ``error`` when they do not fit.
        """
        sizes = {e["path"]: int(e.get("size") or 0) for e in manifest["contents"] if e.get("type") == "file"}
        if mode == "overlay":
            need = sum(sizes.get(p, 0) for p in plan["write"] + plan["replace"])
        else:
            need = sum(sizes.values())
        out = {"checked": False, "need_bytes": need}
        free, where = None, name
        if ttype == "host":
            probe = name
            while probe and not os.path.exists(probe):
                probe = os.path.dirname(probe)
            st = os.statvfs(probe or "/")
            free, where = st.f_bavail * st.f_frsize, probe
        else:
            if ttype == "container":
                args = ["exec", details["container"], "sh", "-c", SPACE_SCRIPT, "sh", name]
            elif self.docker.inspect("volume", name) is not None:
                image, _n = choose_helper_image(
                    self.docker, self.p.get("helper_image"), name, self._users(name), self._recorded(manifest)
                )
                args = helper_run_args(image, name, "/dst", True) + ["sh", image, "-c", SPACE_SCRIPT, "sh", "/dst"]
            else:
                out["note"] = "not checked: volume %s does not exist yet (it is created on Docker's data root)" % name
                return out
            rc, text, _err = self.docker.run(args, check=False)
            rows = [line.split() for line in (text or "").splitlines()[1:] if line.strip()]
            if rc != 0 or not rows or len(rows[-1]) < 6 or not rows[-1][3].isdigit():
                out["note"] = "not checked: df failed on the target (%s)" % last_line(text)
                return out
            free, where = int(rows[-1][3]) * 1024, rows[-1][-1]
        out.update(checked=True, free_bytes=free, filesystem=where)
        if need > free:
            out["error"] = (
                "not enough free space to restore %s/%s into %s: it needs %.1f MB (%s) but %s has %.1f MB free. "
                "Free space there (or restore to another dest); nothing was changed"
                % (
                    self.kind,
                    manifest["backup_id"],
                    name,
                    need / 1048576.0,
                    "the files it writes" if mode == "overlay" else "the backup's files; the old content stays until the swap",
                    where,
                    free / 1048576.0,
                )
            )
        return out

    # -- the run -----------------------------------------------------------------------
    def run(self):
        manifest = self.manifest()
        backup_id = manifest["backup_id"]
        self.verify(manifest)
        ttype, name, details = self.target(manifest)
        if self.kind == "config" and ttype != "host":
            raise ArtifactError("config backups restore to a host directory: set dest (default: the original directory)")
        mode = "overlay" if self.kind == "config" else "mirror"
        contents = manifest["contents"]
        if ttype == "container":
            info = self.docker.inspect("container", details["container"])
            if info is None or not (info.get("State") or {}).get("Running"):
                raise ArtifactError(
                    "container %s is not running; start it (docker start %s), or restore into its volume with volume: <name>"
                    % (details["container"], details["container"])
                )
        if ttype == "volume":
            live = live_postgres_users(self._users(name)) if self.docker.inspect("volume", name) else []
            if live:
                raise ArtifactError(
                    "volume %s is the data directory of the running PostgreSQL container %s: stop %s before restoring "
                    "its files" % (name, ", ".join(live), live[0])
                )
        current = self.listing(ttype, name, details, manifest)
        plan = restore_plan(contents, current, mode)
        plan.update({"backup_id": backup_id, "target_type": ttype, "target": name})
        if details.get("container"):
            plan["container"] = details["container"]
        needs_confirm = plan_needs_confirm(plan, current)
        plan["confirm_required"] = needs_confirm
        force = bool(self.p.get("force"))
        result = {"backup_id": backup_id, "plan": plan, "files": summarize(contents)["file_count"], "target": name}
        if not plan["identical"] or force:
            plan["space"] = self.space_check(ttype, name, details, manifest, plan, mode)
            if plan["space"].get("error"):
                raise ArtifactError(plan["space"]["error"])
        if self.diff:
            changed = plan["write"] + plan["replace"] + plan["remove"]
            result["diff"] = {
                "before_header": "%s %s" % (ttype, name),
                "after_header": "%s/%s" % (self.kind, backup_id),
                "before": diff_lines(changed, current),
                "after": diff_lines(changed, contents),
            }
        if plan["identical"] and not force:
            result.update(changed=False, restored=False)
            return result
        if self.check_mode:
            if needs_confirm and self.p.get("confirm") != name:
                self.warnings.append("the real run needs confirm: %s (it replaces or removes data in the target)" % name)
            result.update(changed=True, restored=False)
            return result
        if needs_confirm and self.p.get("confirm") != name:
            raise ArtifactError(
                "restoring %s/%s would replace %d and remove %d entries in %s %s; set confirm: %s to proceed "
                "(take an artifact_backup of the target first if its content matters)"
                % (self.kind, backup_id, len(plan["replace"]), len(plan["remove"]), ttype, name, name)
            )
        tar_path = os.path.join(self.catalog.path(self.kind, backup_id), ARCHIVE)
        tag = new_tag()
        self.touched.append("started writing %s %s" % (ttype, name))
        if ttype == "host":
            if mode == "overlay":
                paths = [e["path"] for e in contents] if force else plan["write"] + plan["replace"]
                plan["strategy"] = host_restore_overlay(tar_path, name, paths)
            else:
                plan["strategy"] = host_restore_mirror(tar_path, name, tag)
        elif ttype == "container":
            self.docker.shell(
                ["exec", "-i", details["container"], "sh", "-c", SWAP_SCRIPT, "sh", name, tag],
                stdin_from=tar_path,
                what="restoring into %s:%s" % (details["container"], name),
            )
            plan["strategy"] = "contents-swap"
        else:
            if self.docker.inspect("volume", name) is None:
                labels = (manifest.get("source") or {}).get("labels") or {}
                args = ["volume", "create"]
                for key in sorted(labels):
                    args += ["--label", "%s=%s" % (key, labels[key])]
                self.docker.run(args + [name], what="creating volume %s" % name)
            image, _n = choose_helper_image(
                self.docker, self.p.get("helper_image"), name, self._users(name), self._recorded(manifest)
            )
            args = helper_run_args(image, name, "/dst", False, stdin=True) + ["sh", image, "-c", SWAP_SCRIPT, "sh", "/dst", tag]
            self.docker.shell(args, stdin_from=tar_path, what="restoring volume %s" % name)
            plan["strategy"] = "contents-swap"
        after = self.listing(ttype, name, details, manifest)
        check = restore_plan(contents, after, mode)
        if not check["identical"]:
            raise ArtifactError(
                "restore of %s/%s into %s finished but the target differs from the backup: %s; check free space and "
                "permissions, then run again"
                % (self.kind, backup_id, name, ", ".join((check["write"] + check["replace"] + check["remove"])[:10]))
            )
        result.update(changed=True, restored=True)
        return result

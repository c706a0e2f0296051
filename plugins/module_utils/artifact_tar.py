# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Artifact tar listing, digests, manifests and restore plans (docs/artifacts.md): pure Python.

A backup of kind ``models``, ``config`` or ``volume`` is one uncompressed tar
(``data.tar``) in the catalog plus a manifest listing **every** member with its
type, mode, owner, size and sha256 (``contents``, G27 — not only ``*.pkl``). The
tar keeps modes and numeric owners, so it restores with stock tools
(``tar -xpf data.tar --numeric-owner -C <dir>``); the manifest proves what it holds.

``content_sha256`` is a digest over the sorted ``(path, type, mode, sha256 or
link target)`` list: equal digests mean equal content (mtimes and owners are
ignored), which is how an unchanged source is detected.

This file imports nothing of the collection: check mode runs it alone (by path)
in the module's Python to list a tar stream (``LIST_STREAM_SCRIPT``). The other
artifact files: ``artifact_extract`` (safe extraction on the host),
``artifact_docker`` (containers and volumes), ``artifacts`` (the backup job),
``artifact_restorer`` (the restore job).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import stat
import tarfile

ARCHIVE = "data.tar"
DEFAULT_EXCLUDES = ("*.pyc", "__pycache__")
CHUNK = 1024 * 1024


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
        chunk = fh.read(CHUNK)
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
# sys.argv[1]: this file's directory (module_utils/artifact_tar.py is plain Python, importable alone).
LIST_STREAM_SCRIPT = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); import artifact_tar; "
    "json.dump(artifact_tar.scan_tar('<stream>', json.loads(sys.argv[2]), fileobj=sys.stdin.buffer), sys.stdout)"
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


# -- sensitive backups ---------------------------------------------------------------
SECRET_DIRS = ("secrets",)
REDACTED = (
    "per-file sha256 and content_sha256 are left out of what the module returns for a sensitive backup "
    "(an unsalted hash of a secret file can be cracked offline); manifest.json on disk (0600) keeps them "
    "and restores and verification check them there"
)


def is_secret_path(rel):
    """True for an entry inside a ``secrets`` directory (Docker secrets: the bare password in a file)."""
    return any(part in SECRET_DIRS for part in rel.split("/")[:-1])


def is_sensitive(kind, contents):
    """A config backup, or any backup holding files under ``secrets/``: its hashes are never returned."""
    return kind == "config" or any(is_secret_path(e["path"]) for e in contents or () if e.get("type") == "file")


def public_manifest(manifest):
    """The manifest as a module returns it: a sensitive one without per-file sha256 nor ``content_sha256``.

    The caller's dict is not changed (restore and verification read the manifest on disk).
    """
    if not (manifest.get("sensitive") or is_sensitive(manifest.get("kind"), manifest.get("contents"))):
        return manifest
    out = dict(manifest)
    out["contents"] = [{k: v for k, v in e.items() if k != "sha256"} for e in manifest.get("contents") or ()]
    out["content_sha256"] = None
    out["redacted"] = REDACTED
    return out


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
        "sensitive": is_sensitive(kind, contents),
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


def diff_lines(paths, listing, key=None):
    """``type mode sha256-prefix path`` lines for --diff.

    With ``key`` (a sensitive backup) the prefix is of an HMAC of the file's sha256 under that
    key instead: equal files still show equal prefixes within one run, but with the key never
    returned nothing in the output can be checked against a guessed secret.
    """
    by_path = {e["path"]: e for e in listing or []}
    out = []
    for p in paths:
        e = by_path.get(p)
        if e is None:
            continue
        digest = e.get("sha256", "")
        if digest and key is not None:
            digest = hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()
        tail = digest[:12] if e["type"] == "file" else e.get("link", "")
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

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup catalog (DESIGN section 4, "Backup catalog").

Layout::

    <backup_dir>/<kind>/<backup_id>/            a published, verified backup
        manifest.json                           the catalog entry (schema below)
        <artifact files>                        0600
    <backup_dir>/<kind>/.partial-<backup_id>/   work in progress: never listed
    <backup_dir>/<kind>/.lock                   one writer per kind (flock)

A backup becomes visible only after it is complete, fsynced and verified: it is
written under ``.partial-<id>``, hashed, its manifest written atomically, and
the directory renamed into place (G58). Directories are 0700, files 0600.

Plain Python: no Ansible import, unit-tested in tests/unit.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import time

SCHEMA = "ner11.backup/v1"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
LOCK_FILE = ".lock"
KINDS = ("database", "models", "config", "volume")
PERIODS = ("daily", "weekly", "monthly", "manual")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 1024 * 1024


class CatalogError(Exception):
    """A catalog operation failed; the message names the cause and the fix."""


class CatalogLocked(CatalogError):
    """Another backup of the same kind holds the lock."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def isoformat(dt):
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """Parse the catalog's UTC timestamps (``2026-11-29T02:00:00Z``)."""
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        raise CatalogError("invalid timestamp %r in a manifest; expected YYYY-MM-DDTHH:MM:SSZ" % (text,)) from None


def validate_backup_id(backup_id):
    """Reject ids that could escape the catalog (``../``, ``/``, hidden names)."""
    if not isinstance(backup_id, str) or not _ID_RE.match(backup_id) or ".." in backup_id:
        raise CatalogError(
            "invalid backup id %r: use letters, digits, '.', '_' and '-' only "
            "(no '/', no '..', at most 128 characters), e.g. ner11_db-20261129T020000Z" % (backup_id,)
        )
    return backup_id


def validate_kind(kind):
    if kind not in KINDS:
        raise CatalogError("invalid backup kind %r: use one of %s" % (kind, ", ".join(KINDS)))
    return kind


def new_backup_id(name, now=None):
    """``<name>-<YYYYmmddTHHMMSSZ>``: sortable by time, safe as a path component."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._-") or "backup"
    return validate_backup_id("%s-%s" % (safe[:80], (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")))


def period_key(period, dt):
    """The calendar bucket a backup of ``period`` covers: one per day, ISO week or month."""
    dt = dt.astimezone(datetime.timezone.utc)
    if period == "daily":
        return dt.strftime("%Y-%m-%d")
    if period == "weekly":
        year, week, _day = dt.isocalendar()
        return "%04d-W%02d" % (year, week)
    if period == "monthly":
        return dt.strftime("%Y-%m")
    if period == "manual":
        return None
    raise CatalogError("invalid period %r: use one of %s" % (period, ", ".join(PERIODS)))


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root, exclude=(MANIFEST,)):
    """Every regular file below ``root`` with relative path, size and sha256, sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel in exclude:
                continue
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append({"path": rel, "size": st.st_size, "sha256": sha256_file(full)})
    return files


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root):
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                fsync_path(full)
        fsync_path(dirpath)


def secure_tree(root):
    """Directories 0700, files 0600 (backups may hold credentials and data)."""
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o700)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o600)


def atomic_write(path, data, mode=0o600):
    """Write bytes to ``path`` atomically: temp file in the same directory, fsync, rename."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.tmp-%d" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(directory)


def dump_manifest(manifest):
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def disk_free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Catalog:
    """The backups of one ``backup_dir``, one sub-directory per kind."""

    def __init__(self, backup_dir):
        if not backup_dir or not os.path.isabs(backup_dir):
            raise CatalogError("backup_dir must be an absolute path, got %r" % (backup_dir,))
        self.root = os.path.normpath(backup_dir)

    # -- paths ---------------------------------------------------------------
    def kind_dir(self, kind, create=False):
        path = os.path.join(self.root, validate_kind(kind))
        if create:
            for directory in (self.root, path):
                if not os.path.isdir(directory):
                    try:
                        os.makedirs(directory, mode=0o700, exist_ok=True)
                    except OSError as exc:
                        raise CatalogError(
                            "cannot create %s: %s; check the path and permissions" % (directory, exc.strerror)
                        ) from None
                    os.chmod(directory, 0o700)
        return path

    def path(self, kind, backup_id):
        return os.path.join(self.kind_dir(kind), validate_backup_id(backup_id))

    def partial_path(self, kind, backup_id):
        return os.path.join(self.kind_dir(kind), PARTIAL_PREFIX + validate_backup_id(backup_id))

    # -- locking -------------------------------------------------------------
    def lock(self, kind, wait=False, timeout=0):
        return _KindLock(os.path.join(self.kind_dir(kind, create=True), LOCK_FILE), kind, wait, timeout)

    # -- writing -------------------------------------------------------------
    def begin(self, kind, backup_id):
        """Create an empty ``.partial-<id>`` work directory (0700) and return its path."""
        if os.path.exists(self.path(kind, backup_id)):
            raise CatalogError("backup %s/%s already exists; choose another id" % (kind, backup_id))
        partial = self.partial_path(kind, backup_id)
        if os.path.exists(partial):
            shutil.rmtree(partial)
        os.makedirs(partial, mode=0o700)
        os.chmod(partial, 0o700)
        return partial

    def publish(self, kind, backup_id, manifest):
        """Secure, hash-check, fsync and rename a partial backup into place.

        ``manifest['files']`` must already hold the checksums the caller
        verified; they are checked once more against the bytes on disk so a
        backup that changed after verification never becomes visible.
        """
        partial = self.partial_path(kind, backup_id)
        final = self.path(kind, backup_id)
        secure_tree(partial)
        on_disk = {f["path"]: f for f in hash_tree(partial)}
        recorded = {f["path"]: f for f in manifest.get("files", [])}
        if set(on_disk) != set(recorded):
            raise CatalogError(
                "backup %s: files on disk %s differ from the manifest %s" % (backup_id, sorted(on_disk), sorted(recorded))
            )
        for rel, entry in recorded.items():
            if on_disk[rel]["sha256"] != entry["sha256"] or on_disk[rel]["size"] != entry["size"]:
                raise CatalogError("backup %s: %s changed after it was verified" % (backup_id, rel))
        manifest = dict(manifest)
        manifest.setdefault("schema", SCHEMA)
        manifest.setdefault("schema_version", SCHEMA_VERSION)
        manifest["backup_id"] = backup_id
        manifest["kind"] = kind
        manifest["status"] = "verified"
        atomic_write(os.path.join(partial, MANIFEST), dump_manifest(manifest))
        fsync_tree(partial)
        os.rename(partial, final)
        fsync_path(os.path.dirname(final))
        return final

    def discard(self, kind, backup_id):
        partial = self.partial_path(kind, backup_id)
        if os.path.exists(partial):
            shutil.rmtree(partial, ignore_errors=True)

    def stale_partials(self, kind, grace_s=3600, now=None):
        """``.partial-*`` directories older than ``grace_s`` (left by a killed run)."""
        directory = self.kind_dir(kind)
        if not os.path.isdir(directory):
            return []
        now = now if now is not None else time.time()
        out = []
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            if name.startswith(PARTIAL_PREFIX) and os.path.isdir(full) and now - os.lstat(full).st_mtime >= grace_s:
                out.append(full)
        return out

    def clean_stale_partials(self, kind, grace_s=3600, now=None):
        """Remove stale partials; call with the kind's lock held."""
        removed = self.stale_partials(kind, grace_s, now)
        for full in removed:
            shutil.rmtree(full, ignore_errors=True)
        return removed

    # -- reading -------------------------------------------------------------
    def read_manifest(self, kind, backup_id):
        path = os.path.join(self.path(kind, backup_id), MANIFEST)
        try:
            with open(path, "rb") as fh:
                manifest = json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            raise CatalogError("backup %s/%s has no manifest at %s" % (kind, backup_id, path)) from None
        except (OSError, ValueError) as exc:
            raise CatalogError("manifest of backup %s/%s is unreadable: %s" % (kind, backup_id, exc)) from None
        problems = manifest_problems(manifest, kind, backup_id)
        if problems:
            raise CatalogError("manifest of backup %s/%s is invalid: %s" % (kind, backup_id, "; ".join(problems)))
        return manifest

    def entries(self, kind):
        """(backup_id, manifest or None, error or None) for every published directory, oldest first."""
        directory = self.kind_dir(kind)
        if not os.path.isdir(directory):
            return []
        out = []
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            if name.startswith(".") or not os.path.isdir(full) or not _ID_RE.match(name):
                continue
            try:
                out.append((name, self.read_manifest(kind, name), None))
            except CatalogError as exc:
                out.append((name, None, str(exc)))
        out.sort(key=lambda e: (e[1]["created_at"] if e[1] else "", e[0]))
        return out

    def list(self, kind, **match):
        """Verified backups of ``kind`` (oldest first) whose manifest matches ``match``.

        ``match`` compares top-level keys or ``source.<key>`` (e.g. ``db_name``).
        """
        out = []
        for _backup_id, manifest, _error in self.entries(kind):
            if manifest is None or manifest.get("status") != "verified":
                continue
            if all(_lookup(manifest, key) == value for key, value in match.items()):
                out.append(manifest)
        return out

    def latest(self, kind, **match):
        found = self.list(kind, **match)
        return found[-1] if found else None

    def verify(self, kind, backup_id):
        """Recompute every checksum; return a list of problems naming the files (empty when sound)."""
        try:
            manifest = self.read_manifest(kind, backup_id)
        except CatalogError as exc:
            return [str(exc)]
        root = self.path(kind, backup_id)
        errors = []
        for entry in manifest["files"]:
            full = os.path.join(root, entry["path"])
            if os.path.relpath(full, root).startswith(".."):
                errors.append("%s: path escapes the backup directory" % entry["path"])
                continue
            try:
                size = os.path.getsize(full)
            except OSError:
                errors.append("%s: missing" % entry["path"])
                continue
            if size != entry["size"]:
                errors.append("%s: size %d, manifest says %d" % (entry["path"], size, entry["size"]))
                continue
            if sha256_file(full) != entry["sha256"]:
                errors.append("%s: sha256 mismatch" % entry["path"])
        listed = {e["path"] for e in manifest["files"]}
        for extra in hash_tree(root):
            if extra["path"] not in listed:
                errors.append("%s: not in the manifest" % extra["path"])
        return errors

    def delete(self, kind, backup_id):
        """Remove a published backup: rename it out of sight first, then delete."""
        final = self.path(kind, backup_id)
        doomed = os.path.join(os.path.dirname(final), ".deleting-" + backup_id)
        os.rename(final, doomed)
        shutil.rmtree(doomed)


def _lookup(manifest, key):
    if key in manifest:
        return manifest[key]
    return (manifest.get("source") or {}).get(key)


def manifest_problems(manifest, kind=None, backup_id=None):
    """Structural problems of a manifest (empty list when valid)."""
    problems = []
    if not isinstance(manifest, dict):
        return ["not a JSON object"]
    if manifest.get("schema") != SCHEMA:
        problems.append("schema is %r, expected %r" % (manifest.get("schema"), SCHEMA))
    for key in ("backup_id", "kind", "created_at", "files", "status"):
        if key not in manifest:
            problems.append("missing key %r" % key)
    if kind and manifest.get("kind") != kind:
        problems.append("kind is %r, expected %r" % (manifest.get("kind"), kind))
    if backup_id and manifest.get("backup_id") != backup_id:
        problems.append("backup_id is %r but the directory is %r" % (manifest.get("backup_id"), backup_id))
    files = manifest.get("files")
    if isinstance(files, list):
        for entry in files:
            if not isinstance(entry, dict) or not {"path", "size", "sha256"} <= set(entry):
                problems.append("a files entry lacks path/size/sha256")
                break
            if entry["path"].startswith("/") or ".." in entry["path"].split("/"):
                problems.append("file path %r escapes the backup" % entry["path"])
    elif "files" in manifest:
        problems.append("files is not a list")
    if "created_at" in manifest:
        try:
            parse_time(manifest["created_at"])
        except CatalogError as exc:
            problems.append(str(exc))
    return problems


class _KindLock:
    """flock on ``<kind>/.lock``; the file names the holder for the error message."""

    def __init__(self, path, kind, wait, timeout):
        self.path = path
        self.kind = kind
        self.wait = wait
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + (self.timeout or 0)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not self.wait or time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(self.fd)
                    self.fd = None
                    raise CatalogLocked(
                        "another %s backup is running (lock %s held by %s); wait for it to finish, "
                        "or set wait/lock_timeout to queue behind it" % (self.kind, self.path, holder)
                    ) from None
                time.sleep(0.2)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid=%d host=%s since=%s\n" % (os.getpid(), socket.gethostname(), isoformat(utcnow()))).encode())
        return self

    def _holder(self):
        try:
            with open(self.path) as fh:
                return fh.read().strip() or "an unknown process"
        except OSError:
            return "an unknown process"

    def __exit__(self, *exc):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False

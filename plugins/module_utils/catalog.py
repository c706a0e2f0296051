# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup catalog (DESIGN section 4, "Backup catalog").

Layout::

    <backup_dir>/<kind>/<backup_id>/            a published, verified backup
        manifest.json                           the catalog entry (immutable once published)
        <artifact files>                        0600
        pins.json                               optional: pins (keep_until + reason), see set_pin
        verify.json                             optional: the last backup_verify result (+ history)
        freshness.json                          optional: when unchanged content was confirmed current
    <backup_dir>/<kind>/.partial-<backup_id>/   work in progress: never listed
    <backup_dir>/<kind>/.deleting-<backup_id>/  a deletion that could not finish: never listed, removed
                                                by the next cleanup (clean_stale_partials)
    <backup_dir>/<kind>/.lock                   one writer per kind (flock)

A backup becomes visible only after it is complete, fsynced and verified: it is
written under ``.partial-<id>``, hashed, its manifest written atomically, and
the directory renamed into place (G58). Directories are 0700, files 0600.

The three optional files beside the manifest are *records about* a backup, not
part of it: they are written atomically after publication, never listed in the
manifest's ``files`` and ignored by checksum verification, so the manifest and
its checksums keep meaning the same (docs/backup-catalog.md).

Source identity (:func:`source_identity`): kind, host (the name the role passes,
by default the inventory hostname), instance (container or server) and object
(database, volume, container path or config paths). Retention, ``latest``,
period idempotence and RPO work per identity. 1.0.0 manifests already carry
``source.host`` (the machine's hostname) and ``source.instance``.

Plain Python: no Ansible import, unit-tested in tests/unit.

Why one file of ~1000 lines (issue 11 asks for a reason above ~500): everything here
reads or writes the on-disk catalog format and its invariants (publish by rename,
records beside a backup, pins, the lock, what a damaged manifest or record is); keeping that contract in one place is the
point. Callers' logic lives elsewhere: retention in ``retention.py``, database dumps
in ``pgbackup*.py``, restores in ``pgrestore*.py``.
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
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import is_file_name

SCHEMA = "ner11.backup/v1"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PINS = "pins.json"
VERIFY_RECORD = "verify.json"
FRESHNESS = "freshness.json"
SIDECARS = (PINS, VERIFY_RECORD, FRESHNESS)
VERIFY_HISTORY = 10
PARTIAL_PREFIX = ".partial-"
DELETING_PREFIX = ".deleting-"
LOCK_FILE = ".lock"
KINDS = ("database", "models", "config", "volume")
PERIODS = ("daily", "weekly", "monthly", "manual")
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
    if not is_file_name(backup_id):
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


_RELATIVE_RE = re.compile(r"^\s*(\d{1,5})\s*([dh])\s*$")


def parse_keep_until(value, base):
    """``keep_until`` as a UTC datetime: ``YYYY-MM-DDTHH:MM:SSZ`` or ``<n>d`` / ``<n>h`` after ``base``.

    ``base`` is the backup's creation time (for a new backup: now), so a relative
    pin of an existing backup means the same on every run (idempotent).
    """
    if value is None or value == "":
        return None
    text = str(value).strip()
    match = _RELATIVE_RE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return base + datetime.timedelta(**{"days" if unit == "d" else "hours": amount})
    try:
        return parse_time(text)
    except CatalogError:
        raise CatalogError(
            "keep_until %r is not a time: use a UTC time like 2026-12-31T00:00:00Z, or a duration after the "
            "backup was made like 14d or 36h" % (value,)
        ) from None


def is_sidecar(rel):
    """True for the records kept beside a manifest (and their atomic-write temp files)."""
    if rel in SIDECARS:
        return True
    return any(rel.startswith(".%s.tmp-" % name) for name in SIDECARS)


def source_identity(manifest):
    """What a backup is a backup *of*: {kind, host, instance, object, key}.

    Works for 1.0.0 manifests too (they have ``source.host`` = the machine's
    hostname and ``source.instance``); missing parts are derived from the other
    source fields, or are ``"?"``.
    """
    kind = manifest.get("kind") or "?"
    src = manifest.get("source") or {}
    host = src.get("host") or "?"
    instance = src.get("instance")
    if not instance:
        if src.get("volume"):
            instance = "volume:%s" % src["volume"]
        elif src.get("container"):
            instance = "container:%s" % src["container"] + (":%s" % src["path"] if kind != "database" and src.get("path") else "")
        elif src.get("login_host"):
            instance = "host:%s:%s" % (src["login_host"], src.get("login_port") or 5432)
        elif src.get("path"):
            instance = "host:%s:%s" % (host, src["path"])
        else:
            instance = "?"
    if kind == "database":
        obj = src.get("db_name") or "?"
    elif src.get("volume"):
        obj = src["volume"]
    elif kind == "config" and src.get("paths"):
        obj = ",".join(src["paths"])
    else:
        obj = src.get("path") or "?"
    return {
        "kind": kind,
        "host": host,
        "instance": instance,
        "object": obj,
        "key": "%s|%s|%s|%s" % (kind, host, instance, obj),
    }


def identity_key(manifest):
    return source_identity(manifest)["key"]


def effective_keep_until(pins, now=None):
    """The latest ``keep_until`` of the pins (datetime), or None; with ``now``, only pins still active."""
    best = None
    for pin in pins if isinstance(pins, list) else []:
        if not isinstance(pin, dict):
            continue  # a damaged pins.json is reported (and keeps its backup) by Catalog.read_pins
        try:
            until = parse_time(pin.get("keep_until"))
        except CatalogError:
            continue
        if now is not None and until <= now:
            continue
        if best is None or until > best:
            best = until
    return best


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def list_tree(root, exclude=(MANIFEST,)):
    """Every regular file below ``root`` with relative path and size (``sha256`` None), sorted; reads no data.

    The records beside the manifest (:data:`SIDECARS`) are never part of a backup.
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel in exclude or is_sidecar(rel):
                continue
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append({"path": rel, "size": st.st_size, "sha256": None})
    return files


def hash_tree(root, exclude=(MANIFEST,)):
    """Every regular file below ``root`` with relative path, size and sha256, sorted (see :func:`list_tree`)."""
    files = list_tree(root, exclude)
    digests = sha256_files([os.path.join(root, f["path"]) for f in files])
    for index, entry in enumerate(files):  # (no zip(strict=): Python 3.9 managed nodes)
        entry["sha256"] = digests[index]
    return files


def sha256_files(paths):
    """The sha256 of every file of ``paths``, in order."""
    # hashlib releases the GIL on large buffers: a directory dump's files hash on every core at once.
    workers = min(len(paths), os.cpu_count() or 1, 4)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(sha256_file, paths))
    return [sha256_file(p) for p in paths]


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


def os_error_message(exc, directory, action="cannot write the backup catalog"):
    """An OSError (full disk, read-only or foreign directory) in plain words with the path and the fix."""
    where = exc.filename or directory
    return "%s: %s: %s; check free space and permissions on %s" % (action, where, exc.strerror or exc, directory)


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
        """``<backup_dir>/<kind>``; with ``create`` it exists and is 0700 afterwards.

        The kind directory belongs to the catalog: it is made 0700 even when it existed
        with a wider mode. ``backup_dir`` itself may be a shared directory of the user: it
        is made 0700 only when this code creates it, never changed when it exists.
        """
        path = os.path.join(self.root, validate_kind(kind))
        if create:
            for directory in (self.root, path):
                try:
                    if not os.path.isdir(directory):
                        os.makedirs(directory, mode=0o700, exist_ok=True)
                        os.chmod(directory, 0o700)
                    elif directory == path and stat.S_IMODE(os.stat(path).st_mode) != 0o700:
                        os.chmod(path, 0o700)
                except OSError as exc:
                    raise CatalogError(os_error_message(exc, directory, "cannot prepare the catalog directory")) from None
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

    def publish(self, kind, backup_id, manifest, pins=None, hashed_now=False):
        """Secure, check, fsync and rename a partial backup into place.

        ``manifest['files']`` must already hold the checksums the caller
        verified. By default they are checked once more against the bytes on
        disk, so a backup that changed after verification never becomes
        visible. ``hashed_now=True``: the caller hashed the finished tree just
        before (no writer is left), so only the names and sizes are checked
        (:func:`list_tree`) instead of reading every byte a second time; the
        checksums are re-read by :meth:`verify` (``backup_verify``).
        """
        partial = self.partial_path(kind, backup_id)
        final = self.path(kind, backup_id)
        secure_tree(partial)
        on_disk = {f["path"]: f for f in (list_tree(partial) if hashed_now else hash_tree(partial))}
        recorded = {f["path"]: f for f in manifest.get("files", [])}
        if set(on_disk) != set(recorded):
            raise CatalogError(
                "backup %s: files on disk %s differ from the manifest %s" % (backup_id, sorted(on_disk), sorted(recorded))
            )
        for rel, entry in recorded.items():
            same_hash = hashed_now or on_disk[rel]["sha256"] == entry["sha256"]
            if not same_hash or on_disk[rel]["size"] != entry["size"]:
                raise CatalogError("backup %s: %s changed after it was verified" % (backup_id, rel))
        manifest = dict(manifest)
        manifest.setdefault("schema", SCHEMA)
        manifest.setdefault("schema_version", SCHEMA_VERSION)
        manifest["backup_id"] = backup_id
        manifest["kind"] = kind
        manifest["status"] = "verified"
        atomic_write(os.path.join(partial, MANIFEST), dump_manifest(manifest))
        if pins:
            # pinned before it becomes visible: no prune can ever see it unpinned
            atomic_write(os.path.join(partial, PINS), dump_manifest({"pins": pins}))
        fsync_tree(partial)
        os.rename(partial, final)
        fsync_path(os.path.dirname(final))
        return final

    def discard(self, kind, backup_id):
        partial = self.partial_path(kind, backup_id)
        if os.path.exists(partial):
            shutil.rmtree(partial, ignore_errors=True)

    def stale_partials(self, kind, grace_s=3600, now=None):
        """``.partial-*`` directories older than ``grace_s`` (left by a killed run), and every ``.deleting-*``.

        A ``.deleting-<id>`` directory is a backup already taken out of the catalog whose
        removal failed (:meth:`delete`); with the kind's lock held it is always a leftover.
        """
        directory = self.kind_dir(kind)
        if not os.path.isdir(directory):
            return []
        now = now if now is not None else time.time()
        out = []
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            if not os.path.isdir(full) or os.path.islink(full):
                continue
            if name.startswith(DELETING_PREFIX) or (name.startswith(PARTIAL_PREFIX) and now - os.lstat(full).st_mtime >= grace_s):
                out.append(full)
        return out

    def clean_stale_partials(self, kind, grace_s=3600, now=None):
        """Remove stale partials and ``.deleting-*`` leftovers; call with the kind's lock held.

        Returns the paths removed; one that could not be removed stays (and is tried again next time).
        """
        removed = []
        for full in self.stale_partials(kind, grace_s, now):
            shutil.rmtree(full, ignore_errors=True)
            if not os.path.lexists(full):
                removed.append(full)
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
            if name.startswith(".") or not os.path.isdir(full) or not is_file_name(name):
                continue
            try:
                out.append((name, self.read_manifest(kind, name), None))
            except CatalogError as exc:
                out.append((name, None, str(exc)))
        out.sort(key=lambda e: (e[1]["created_at"] if e[1] else "", e[0]))
        return out

    def list(self, kind, include_failed=False, **match):
        """Good backups of ``kind`` (oldest first) whose manifest matches ``match``.

        Good: published as verified and not failed by a later recorded
        verification (``verify.json``), unless ``include_failed``.
        ``match`` compares top-level keys or ``source.<key>`` (e.g. ``db_name``).
        """
        out = []
        for backup_id, manifest, _error in self.entries(kind):
            if manifest is None or manifest.get("status") != "verified":
                continue
            if all(_lookup(manifest, key) == value for key, value in match.items()):
                if not include_failed and self.verification_failed(kind, backup_id):
                    continue
                out.append(manifest)
        return out

    def latest(self, kind, **match):
        found = self.list(kind, **match)
        return found[-1] if found else None

    # -- records beside the manifest (pins, verification, freshness) ----------------
    def record_status(self, kind, backup_id, name):
        """(record, problem) of a record file beside the manifest.

        ``(None, None)`` when absent; ``(None, message)`` when it exists but cannot be read,
        is not JSON or not of the documented shape (:func:`record_problem`); the message
        names the file, what is wrong and the fix.
        """
        path = os.path.join(self.path(kind, backup_id), name)
        try:
            with open(path, "rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            problem = str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
        else:
            problem = record_problem(name, data)
            if problem is None:
                return data, None
        return None, "%s of %s is unreadable: fix or remove it (%s: %s)" % (name, backup_id, path, problem)

    def read_record(self, kind, backup_id, name):
        """A record file beside the manifest as a dict; None when absent, unreadable or of the wrong shape."""
        return self.record_status(kind, backup_id, name)[0]

    def write_record(self, kind, backup_id, name, data):
        if name not in SIDECARS:
            raise CatalogError("%s is not a catalog record file" % name)
        final = self.path(kind, backup_id)
        if not os.path.isfile(os.path.join(final, MANIFEST)):
            raise CatalogError("backup %s/%s not found in %s; list the catalog for valid ids" % (kind, backup_id, self.root))
        try:
            atomic_write(os.path.join(final, name), dump_manifest(data))
        except OSError as exc:
            raise CatalogError(os_error_message(exc, final, "cannot write %s of %s" % (name, backup_id))) from None

    def read_pins(self, kind, backup_id):
        """(pins, problem): the pins, or ``([], message)`` when ``pins.json`` is damaged (that backup must be kept)."""
        data, problem = self.record_status(kind, backup_id, PINS)
        return (list(data["pins"]) if data else []), problem

    def pins(self, kind, backup_id):
        """The pins of a backup for reports ([] when none, or when ``pins.json`` is damaged: see :meth:`read_pins`)."""
        return self.read_pins(kind, backup_id)[0]

    def verification(self, kind, backup_id):
        return self.read_record(kind, backup_id, VERIFY_RECORD)

    def verification_failed(self, kind, backup_id):
        """True when the last verification failed, or when its record cannot be read (the safe
        direction: a restore does not pick a backup whose result is unknown, prune leaves it alone)."""
        record, problem = self.record_status(kind, backup_id, VERIFY_RECORD)
        return bool(problem or (record and record.get("status") == "failed"))

    def freshness(self, kind, backup_id):
        return self.read_record(kind, backup_id, FRESHNESS)

    def plan_pin(self, kind, backup_id, keep_until=None, reason=None, state="present", now=None):
        """(changed, pins before, pins after) for pinning or unpinning; writes nothing.

        One pin per ``reason``: pinning again with the same reason and time is a
        no-op, with another time it moves that pin. ``state=absent`` removes the
        pin of ``reason`` (every pin when ``reason`` is empty).
        """
        manifest = self.read_manifest(kind, backup_id)
        before, problem = self.read_pins(kind, backup_id)
        if problem:
            raise CatalogError(problem + "; pinning never overwrites it, and backup_prune keeps the backup meanwhile")
        reason = (reason or "").strip()
        if state == "absent":
            after = [p for p in before if reason and p.get("reason") != reason]
            return after != before, before, after
        if state != "present":
            raise CatalogError("state must be present or absent, got %r" % (state,))
        if not reason:
            raise CatalogError(
                "a pin needs a reason (e.g. 'before maintenance window 2026-12-02'), so a human knows why it is kept"
            )
        until = parse_keep_until(keep_until, parse_time(manifest["created_at"]))
        if until is None:
            raise CatalogError(
                "a pin needs keep_until (a UTC time or a duration like 14d) so the catalog cannot grow without bound"
            )
        pin = {"reason": reason, "keep_until": isoformat(until)}
        after = [p for p in before if p.get("reason") != reason]
        old = [p for p in before if p.get("reason") == reason]
        if old and old[0].get("keep_until") == pin["keep_until"]:
            return False, before, before
        pin["pinned_at"] = isoformat(now or utcnow())
        after.append(pin)
        after.sort(key=lambda p: (p.get("keep_until") or "", p.get("reason") or ""))
        return True, before, after

    def set_pins(self, kind, backup_id, pins):
        self.write_record(kind, backup_id, PINS, {"pins": pins})

    def record_verification(self, kind, backup_id, status, checks, errors, now=None):
        """Keep a backup_verify result beside the backup (the previous ones in ``history``)."""
        previous = self.verification(kind, backup_id) or {}  # a damaged verify.json starts a new history
        history = list(previous.get("history") or [])
        if previous.get("verified_at"):
            history.insert(0, {k: previous.get(k) for k in ("verified_at", "status", "errors")})
        record = {
            "verified_at": isoformat(now or utcnow()),
            "status": status,
            "checks": list(checks),
            "errors": list(errors),
            "history": history[:VERIFY_HISTORY],
        }
        self.write_record(kind, backup_id, VERIFY_RECORD, record)
        return record

    def record_freshness(self, kind, backup_id, content_sha256, source_host, now=None, period=None):
        """An unchanged source was confirmed equal to this backup at ``now`` (an audit entry, not a change)."""
        previous = self.freshness(kind, backup_id) or {}  # a damaged freshness.json starts counting again
        record = {
            "confirmed_at": isoformat(now or utcnow()),
            "content_sha256": content_sha256,
            "source_host": source_host,
            "period": period,
            "confirmations": int(previous.get("confirmations") or 0) + 1,
        }
        self.write_record(kind, backup_id, FRESHNESS, record)
        return record

    def records(self, kind):
        """Every published entry of ``kind`` with what the policies need, oldest first.

        Dicts with ``backup_id``, ``manifest`` (or None), ``error``, ``identity``,
        ``state`` (``good`` / ``failed`` / ``unverified``), ``pins``,
        ``verification``, ``freshness`` and ``damaged`` (record file name to the message
        of :meth:`record_status`: such a record counts as absent, except that a damaged
        ``pins.json`` keeps its backup).
        """
        out = []
        for backup_id, manifest, error in self.entries(kind):
            rec = {"backup_id": backup_id, "manifest": manifest, "error": error, "identity": None, "pins": [],
                   "verification": None, "freshness": None, "state": "unverified", "damaged": {}}  # fmt: skip
            if manifest is not None:
                rec["identity"] = source_identity(manifest)
                for name, key in ((PINS, "pins"), (VERIFY_RECORD, "verification"), (FRESHNESS, "freshness")):
                    data, problem = self.record_status(kind, backup_id, name)
                    rec[key] = data
                    if problem:
                        rec["damaged"][name] = "%s; %s" % (problem, _RECORD_MEANWHILE[name])
                rec["pins"] = list(rec["pins"]["pins"]) if rec["pins"] else []
                if manifest.get("status") == "verified":
                    failed = VERIFY_RECORD in rec["damaged"] or (
                        rec["verification"] and rec["verification"].get("status") == "failed"
                    )
                    rec["state"] = "failed" if failed else "good"
            out.append(rec)
        return out

    def verify(self, kind, backup_id):
        """Recompute every checksum; return a list of problems naming the files (empty when sound)."""
        try:
            manifest = self.read_manifest(kind, backup_id)
        except CatalogError as exc:
            return [str(exc)]
        root = self.path(kind, backup_id)
        found = []  # per manifest entry: a problem, or None when its checksum is to be compared
        for entry in manifest["files"]:
            full = os.path.join(root, entry["path"])
            if os.path.relpath(full, root).startswith(".."):
                found.append("%s: path escapes the backup directory" % entry["path"])
                continue
            try:
                size = os.path.getsize(full)
            except OSError:
                found.append("%s: missing" % entry["path"])
                continue
            wrong = size != entry["size"]
            found.append("%s: size %d, manifest says %d" % (entry["path"], size, entry["size"]) if wrong else None)
        # Each file is read once, every file of a directory dump at the same time.
        compared = [i for i, problem in enumerate(found) if problem is None]
        digests = sha256_files([os.path.join(root, manifest["files"][i]["path"]) for i in compared])
        for index, i in enumerate(compared):
            if digests[index] != manifest["files"][i]["sha256"]:
                found[i] = "%s: sha256 mismatch" % manifest["files"][i]["path"]
        errors = [problem for problem in found if problem]
        listed = {e["path"] for e in manifest["files"]}
        for extra in list_tree(root):  # names only: a file the manifest does not list is a problem whatever its content
            if extra["path"] not in listed:
                errors.append("%s: not in the manifest" % extra["path"])
        return errors

    def delete(self, kind, backup_id):
        """Remove a published backup: rename it out of sight first, then delete.

        When the files cannot be removed the backup is already out of the catalog: the
        CatalogError says where its remains are; the next :meth:`clean_stale_partials`
        (every backup and prune run, under the kind's lock) tries again.
        """
        final = self.path(kind, backup_id)
        doomed = os.path.join(os.path.dirname(final), DELETING_PREFIX + backup_id)
        try:
            os.rename(final, doomed)
        except OSError as exc:
            raise CatalogError(os_error_message(exc, os.path.dirname(final), "cannot delete backup %s" % backup_id)) from None
        try:
            shutil.rmtree(doomed)
        except OSError as exc:
            raise CatalogError(
                "backup %s is out of the catalog but its files could not be removed (%s: %s); they still use disk "
                "in %s: check permissions and remove it (rm -rf %s), or the next backup or backup_prune run of %s "
                "removes it" % (backup_id, exc.filename or doomed, exc.strerror or exc, doomed, doomed, kind)
            ) from None


_RECORD_MEANWHILE = {
    PINS: "until then the backup is kept (never pruned)",
    VERIFY_RECORD: (
        "until then the backup counts as failed verification: restores do not pick it and prune leaves it alone "
        "(run backup_verify to write a new result)"
    ),
    FRESHNESS: "until then the backup's content counts as not confirmed current",
}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value):
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _pins_problem(data):
    pins = data.get("pins")
    if not isinstance(pins, list):
        return 'expected {"pins": [{"reason": ..., "keep_until": ...}, ...]}'
    for pin in pins:
        if not isinstance(pin, dict) or not isinstance(pin.get("reason"), str):
            return "a pin is not an object with a text reason: %r" % (pin,)
        try:
            parse_time(pin.get("keep_until"))
        except CatalogError:
            return "keep_until %r of pin %r is not a UTC time like 2026-12-31T00:00:00Z" % (pin.get("keep_until"), pin["reason"])
    return None


def _verify_problem(data):
    if not isinstance(data.get("verified_at"), str) or not isinstance(data.get("status"), str):
        return "verified_at and status must be text"
    for key in ("checks", "errors"):
        if not isinstance(data.get(key, []), list):
            return "%s must be a list" % key
    history = data.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "history must be a list of objects"
    return None


def _freshness_problem(data):
    if not isinstance(data.get("confirmed_at"), str):
        return "confirmed_at must be text"
    if not _is_int(data.get("confirmations", 0)) or data.get("confirmations", 0) < 0:
        return "confirmations must be a whole number"
    for key in ("content_sha256", "period", "source_host"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return "%s must be text" % key
    return None


def record_problem(name, data):
    """What is wrong with the parsed JSON of record file ``name`` (None when it has the documented shape)."""
    if not isinstance(data, dict):
        return "not a JSON object"
    return {PINS: _pins_problem, VERIFY_RECORD: _verify_problem, FRESHNESS: _freshness_problem}[name](data)


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
        problems += _files_problems(files)
    elif "files" in manifest:
        problems.append("files is not a list")
    if "created_at" in manifest:
        try:
            parse_time(manifest["created_at"])
        except CatalogError as exc:
            problems.append(str(exc))
    source = manifest.get("source")
    if source is not None and not isinstance(source, dict):
        problems.append("source is not an object")
    problems += _type_problems(manifest, _MANIFEST_TYPES, "")
    if isinstance(source, dict):
        problems += _type_problems(source, _SOURCE_TYPES, "source.")
    return problems


def _files_problems(files):
    for entry in files:
        if not isinstance(entry, dict) or not {"path", "size", "sha256"} <= set(entry):
            return ["a files entry lacks path/size/sha256"]
        path, size = entry["path"], entry["size"]
        if not isinstance(path, str) or not path or not isinstance(entry["sha256"], str) or not _is_int(size) or size < 0:
            return ["files entry %r: path and sha256 must be text, size a whole number of bytes" % (entry,)]
        if path.startswith("/") or ".." in path.split("/"):
            return ["file path %r escapes the backup" % path]
    return []


# What readers of a manifest rely on (docs/backup-catalog.md); None (or absent) is always allowed.
_TEXT, _INT, _NUMBER, _TEXTS, _OBJECTS = "text", "a whole number", "a number", "a list of texts", "a list of objects"
_COUNTS = "an object of row counts"
_MANIFEST_TYPES = dict(
    {k: _TEXT for k in ("backup_id", "kind", "status", "schema", "completed_at", "period", "period_key", "sha256",
                        "content_sha256", "format", "compression", "artifact", "dump_path", "globals", "client_image",
                        "pg_dump_version", "scope")},
    **{k: _INT for k in ("size_bytes", "toc_entries", "jobs", "db_size_bytes", "file_count", "content_bytes")},
    duration_s=_NUMBER, canary_tables=_TEXTS, tables=_TEXTS, excludes=_TEXTS, row_counts=_COUNTS, row_counts_after=_COUNTS,
    contents=_OBJECTS,
)  # fmt: skip
_SOURCE_TYPES = dict(
    {k: _TEXT for k in ("host", "instance", "volume", "container", "path", "login_host", "db_name", "machine")},
    paths=_TEXTS, db_size_bytes=_INT,
)  # fmt: skip


def _has_type(value, expected):
    if expected == _TEXT:
        return isinstance(value, str)
    if expected == _INT:
        return _is_int(value)
    if expected == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == _TEXTS:
        return _is_str_list(value)
    if expected == _OBJECTS:
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    return isinstance(value, dict) and all(v is None or _is_int(v) for v in value.values())


def _type_problems(data, types, prefix):
    return [
        "%s%s is %r, expected %s" % (prefix, key, data[key], expected)
        for key, expected in sorted(types.items())
        if data.get(key) is not None and not _has_type(data[key], expected)
    ]


class _KindLock:
    """flock on ``<kind>/.lock``; the file names the holder for the error message."""

    def __init__(self, path, kind, wait, timeout):
        self.path = path
        self.kind = kind
        self.wait = wait
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CatalogError(os_error_message(exc, os.path.dirname(self.path), "cannot open the catalog lock")) from None
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


def apply_pin(
    catalog, kind, backup_id, keep_until=None, reason=None, state="present", check_mode=False, lock_timeout=60, now=None
):
    """Pin or unpin one backup (module ``backup_pin``); under the kind's lock so no prune races it.

    Returns ``changed``, ``backup_id``, ``path``, ``pins`` (after), ``pins_before``, ``keep_until``
    (the latest active pin, or None).
    """
    validate_kind(kind)
    validate_backup_id(backup_id)
    if not os.path.isdir(catalog.path(kind, backup_id)):
        raise CatalogError("backup %s/%s not found in %s; list the catalog for valid ids" % (kind, backup_id, catalog.root))

    def decide():
        return catalog.plan_pin(kind, backup_id, keep_until, reason, state, now)

    if check_mode:
        changed, before, after = decide()
    else:
        with catalog.lock(kind, wait=lock_timeout > 0, timeout=lock_timeout):
            changed, before, after = decide()
            if changed:
                catalog.set_pins(kind, backup_id, after)
    until = effective_keep_until(after, now or utcnow())
    return {
        "changed": changed,
        "backup_id": backup_id,
        "path": catalog.path(kind, backup_id),
        "pins": after,
        "pins_before": before,
        "keep_until": isoformat(until) if until else None,
    }


def new_backup_pins(keep_until, keep_reason, created, default_reason):
    """The pins a new backup is published with (``keep_until`` / ``keep_reason`` of the backup modules)."""
    until = parse_keep_until(keep_until, created)
    if until is None:
        if keep_reason:
            raise CatalogError("keep_reason needs keep_until (a UTC time or a duration like 14d): until when to keep it?")
        return []
    return [
        {"reason": (keep_reason or "").strip() or default_reason, "keep_until": isoformat(until), "pinned_at": isoformat(created)}
    ]


def pin_existing(catalog, kind, backup_id, keep_until, keep_reason, default_reason, check_mode, lock_timeout=30):
    """Pin a backup a backup module returned instead of making a new one; True when the pin changed."""
    if not keep_until:
        return False
    result = apply_pin(
        catalog, kind, backup_id, keep_until, (keep_reason or "").strip() or default_reason, "present", check_mode, lock_timeout
    )
    return result["changed"]


def choose_identity(manifests, what, source_host=None):
    """Restore's choice of source: the good ``manifests`` of one object (a database, a volume...) of one identity.

    With ``source_host`` only that host's backups count. When one identity remains,
    returns (its manifests oldest first, identity); none: ([], None). When several
    hosts or instances hold backups of it, raises CatalogError listing them - a
    restore never guesses between two sources (DR onto a new host names the source).
    """
    groups = {}
    for manifest in manifests:
        ident = source_identity(manifest)
        if source_host and ident["host"] != source_host:
            continue
        groups.setdefault(ident["key"], (ident, []))[1].append(manifest)
    if not groups:
        return [], None
    if len(groups) == 1:
        ident, found = next(iter(groups.values()))
        return found, ident
    rows = []
    for ident, found in sorted(groups.values(), key=lambda g: g[1][-1]["created_at"], reverse=True):
        rows.append(
            "host %s (%s): newest %s of %s" % (ident["host"], ident["instance"], found[-1]["backup_id"], found[-1]["created_at"])
        )
    hosts = sorted({ident["host"] for ident, _found in groups.values()})
    hint = (
        "set source_host to one of %s" % ", ".join(hosts)
        if len(hosts) > 1
        else "name the backup with backup_id (the same host has several instances)"
    )
    raise CatalogError("backups of %s come from several sources: %s; %s" % (what, "; ".join(rows), hint))

# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ordered, safe space recovery on one filesystem: the pure core of ``disk_cleanup``.

Runbook b.8 (DISK_SPACE_ISSUES) done safely:

* measure first (the filesystem of ``path``), then take the actions in the given order and
  stop as soon as ``target_free_percent`` is reached;
* only what lives on the measured filesystem is a candidate (freeing another disk does not help);
* ``tmp_files``: regular files older than ``tmp_age_days`` under ``tmp_paths`` (G45: never
  everything in /tmp; never sockets, fifos, symlinks, lock or pid files);
* ``rotated_logs``: rotated log files (``*.gz``, ``*.1``, ``*.old``, ``*-YYYYMMDD``) older than
  ``log_age_days`` under ``log_paths`` (G15: one retention rule, active logs are left alone);
* the file walks never enter (nor list a file of) a **protected tree**, whatever the roots:
  a PostgreSQL data directory (holds ``PG_VERSION``: ``base/16384/24576.1`` is a table segment,
  not a rotated log), a backup catalog entry (holds ``manifest.json``: ``dump/3456.dat.gz`` is a
  dump member) or a backup being written or deleted (``.partial-*``, ``.deleting-*``), and Docker's
  data root (volumes, container filesystems). A root inside such a tree is not walked at all. Each
  skipped tree is reported with the reason (``protected``), in check mode too;
* ``stopped_containers``: exited containers that belong to no protected project (never the
  stack's, G43) and are not named in ``protect``;
* ``dangling_images``: untagged images older than ``image_age_hours`` not used by any container;
* **never a volume** (G43: no ``--volumes``, no volume prune).

``changed``: something was removed (check mode: something would be removed). A removal that
fails is not a change; it is reported in the action's ``errors`` with the file and the cause.

Check mode returns the exact plan (each item, its size, why). Plain Python: the caller injects
``runner`` (the signature of ``AnsibleModule.run_command``) for the docker actions, which run
through ``docker_cli.DockerCli``.
"""

from __future__ import annotations

import calendar
import errno
import fnmatch
import json
import os
import re
import stat
import time

from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import DockerCli, cli_path
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError

ACTIONS = ("tmp_files", "rotated_logs", "stopped_containers", "dangling_images")
FILE_ACTIONS = ("tmp_files", "rotated_logs")
DOCKER_ROOT = "/var/lib/docker"  # Docker's default data root (also protected when the engine names another)
PG_MARKER = "PG_VERSION"  # in every PostgreSQL data directory
CATALOG_MARKER = "manifest.json"  # in every published backup (catalog.MANIFEST)
CATALOG_WORK_PREFIXES = (".partial-", ".deleting-")  # a backup being written / deleted (catalog.py)
_TABLESPACE_RE = re.compile(r"^PG_[0-9]+_[0-9]+$")  # <tablespace>/PG_<major>_<catalog version>/<db oid>/<file>
DEFAULTS = {
    "target_free_percent": 20.0,
    "tmp_paths": ["/tmp", "/var/tmp"],  # noqa: S108 - directories to clean, not files to create
    "tmp_age_days": 7.0,
    "log_paths": ["/var/log"],
    "log_age_days": 30.0,
    "image_age_hours": 72.0,
    "protect": [],
    "protect_projects": [],
}
_ROTATED_RE = re.compile(r"(\.gz|\.xz|\.bz2|\.zst|\.old|\.[0-9]+|-[0-9]{8}(\.gz)?)$")
_NEVER_RE = re.compile(r"(\.lock|\.pid|\.sock)$")
_SIZE_RE = re.compile(r"^([0-9.]+)\s*([kKMGT]?B)")
_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


class CleanupError(Exception):
    """Invalid input or a failed step; the message names the cause and the fix."""


def validate(params):
    p = dict(DEFAULTS)
    p.update({k: v for k, v in params.items() if v is not None})
    if not p.get("path") or not os.path.isabs(p["path"]):
        raise CleanupError("path must be an absolute path on the filesystem to free, got %r" % p.get("path"))
    if not os.path.exists(p["path"]):
        raise CleanupError("path %s does not exist; give a directory on the filesystem to free" % p["path"])
    if not 0 < float(p["target_free_percent"]) < 100:
        raise CleanupError("target_free_percent must be between 0 and 100, got %s" % p["target_free_percent"])
    actions = list(p.get("actions") or ACTIONS)
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise CleanupError("unknown action(s) %s; use %s (volumes are never cleaned)" % (", ".join(unknown), ", ".join(ACTIONS)))
    p["actions"] = actions
    for key in ("tmp_paths", "log_paths"):
        bad = [d for d in p[key] if not os.path.isabs(d) or os.path.realpath(d) == "/"]
        if bad:
            raise CleanupError("%s must be absolute directories other than /, got %s" % (key, ", ".join(bad)))
    for key in ("tmp_age_days", "log_age_days", "image_age_hours"):
        if float(p[key]) < 0:
            raise CleanupError("%s must be 0 or more, got %s" % (key, p[key]))
    return p


def usage(path):
    """(total, free, used_percent) of the filesystem holding ``path``."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = 100.0 * (total - free) / total if total else 100.0
    return total, free, round(used, 1)


def free_percent(total, free):
    return round(100.0 * free / total, 1) if total else 0.0


def _protected_path(path, protect):
    return any(fnmatch.fnmatch(path, pat) or path.startswith(pat.rstrip("/") + "/") for pat in protect if pat.startswith("/"))


def dir_ids(paths):
    """{(st_dev, st_ino)} of the directories among ``paths`` that exist (a bind mount has the same pair)."""
    ids = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            ids.add((st.st_dev, st.st_ino))
    return ids


def protected_reason(path, docker_ids=()):
    """Why the directory ``path`` must never be cleaned, or None.

    ``docker_ids``: :func:`dir_ids` of Docker's data root(s).
    """
    name = os.path.basename(os.path.normpath(path))
    if _TABLESPACE_RE.match(name):
        return (
            "a PostgreSQL tablespace (%s): its numbered files are table data, not logs; "
            "free space inside PostgreSQL (VACUUM, pg_maintenance) instead" % name
        )
    if name.startswith(CATALOG_WORK_PREFIXES):
        return (
            "a backup being written or deleted (%s*): its files belong to a running backup or retention step; "
            "leave it to the backup role" % name[: name.index("-") + 1]
        )
    if os.path.lexists(os.path.join(path, PG_MARKER)):
        return (
            "a PostgreSQL data directory (holds %s): its numbered and compressed files are table data, not logs; "
            "free space inside PostgreSQL (VACUUM, pg_maintenance) instead" % PG_MARKER
        )
    if os.path.lexists(os.path.join(path, CATALOG_MARKER)):
        return (
            "a backup (holds %s): its files are the backup itself; "
            "remove old backups with the backup retention, not file by file" % CATALOG_MARKER
        )
    if docker_ids:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) in docker_ids:
            return (
                "Docker's data root (volumes, images and container filesystems); "
                "use the stopped_containers and dangling_images actions for Docker's space"
            )
    return None


def _protected_ancestor(root, docker_ids):
    """``(directory, why)`` when ``root`` is, or lies inside, a protected tree; else None."""
    path = os.path.realpath(root)
    while True:
        why = protected_reason(path, docker_ids)
        if why:
            return path, why
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def file_candidates(action, roots, age_days, device, protect, now=None, docker_ids=(), protected=None):
    """Files under ``roots`` on ``device`` that ``action`` may delete, oldest first.

    Protected trees (:func:`protected_reason`) are neither entered nor listed; each one met is
    added to ``protected`` (a dict path -> why) when given.
    """
    now = time.time() if now is None else now
    limit = now - float(age_days) * 86400
    found = []
    seen = set()
    skipped = {} if protected is None else protected
    for root in roots:
        if not os.path.isdir(root):
            continue
        inside = _protected_ancestor(root, docker_ids)
        if inside:
            skipped.setdefault(inside[0], inside[1])
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            # Never follow a symlinked directory, never enter a protected tree; files count only
            # when they live on the measured filesystem (a mount below a root is walked, its files
            # are on their own device).
            keep = []
            for d in dirnames:
                sub = os.path.join(dirpath, d)
                if os.path.islink(sub):
                    continue
                why = protected_reason(sub, docker_ids)
                if why:
                    skipped.setdefault(sub, why)
                    continue
                keep.append(d)
            dirnames[:] = keep
            for name in filenames:
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_dev != device or st.st_mtime > limit:
                    continue
                if (st.st_dev, st.st_ino) in seen:  # overlapping roots (/var/log and a directory below it)
                    continue
                seen.add((st.st_dev, st.st_ino))
                if _NEVER_RE.search(name) or _protected_path(full, protect):
                    continue
                if action == "rotated_logs" and not _ROTATED_RE.search(name):
                    continue
                age = (now - st.st_mtime) / 86400
                why = "%s, %.0f day(s) old (older than %s)" % (
                    "rotated log" if action == "rotated_logs" else "temporary file",
                    age,
                    age_days,
                )
                found.append(
                    {
                        "item": full,
                        "size_bytes": st.st_blocks * 512,
                        "why": why,
                        "mtime": st.st_mtime,  # internal (sort), dropped from the result
                        "file_id": (st.st_dev, st.st_ino),  # internal (removal), dropped from the result
                    }
                )
    found.sort(key=lambda c: (c["mtime"], c["item"]))
    return found


def _same_dev(path, device):
    try:
        return os.lstat(path).st_dev == device and not os.path.islink(path)
    except OSError:
        return False


def _docker(docker, args):
    """stdout of ``docker <args>`` (a DockerCli); a failure is a CleanupError naming the fix."""
    try:
        return docker.call(args, what="docker %s" % args[0], hint="check that the Docker engine answers")[1]
    except CommandError as exc:
        raise CleanupError(str(exc)) from None
    except OSError as exc:
        raise CleanupError(
            "cannot run the docker client %s (%s); install it or set docker_cli to its path" % (docker.cli, exc)
        ) from None


def find_docker_root(docker):
    """Docker's data root as the engine reports it; DOCKER_ROOT when no client or engine answers."""
    if docker is None:
        return DOCKER_ROOT
    try:
        rc, out, _err = docker.call(["info", "--format", "{{.DockerRootDir}}"], check=False)
    except (OSError, CommandError):
        return DOCKER_ROOT
    root = (out or "").strip()
    return root if rc == 0 and os.path.isabs(root) else DOCKER_ROOT


def _size(text):
    match = _SIZE_RE.match(text or "")
    if not match:
        return 0
    return int(float(match.group(1)) * _UNITS.get(match.group(2), 1))


def container_candidates(docker, protect, projects):
    out = _docker(
        docker,
        ["ps", "-a", "--size", "--filter", "status=exited", "--filter", "status=created", "--format", "{{json .}}"],
    )
    found = []
    for line in out.splitlines():
        try:
            c = json.loads(line)
        except ValueError:
            continue
        labels = dict(kv.split("=", 1) for kv in (c.get("Labels") or "").split(",") if "=" in kv)
        project = labels.get("io.ner11.project") or labels.get("com.docker.compose.project")
        name = c.get("Names", "")
        if project and project in projects:
            continue
        if any(fnmatch.fnmatch(name, pat) for pat in protect):
            continue
        found.append(
            {
                "item": name,
                "id": c.get("ID"),
                "size_bytes": _size(c.get("Size")),
                "why": "stopped container (%s)" % c.get("Status"),
            }
        )
    return found


def image_candidates(docker, age_hours, protect, now=None):
    now = time.time() if now is None else now
    ids = _docker(docker, ["image", "ls", "-q", "--no-trunc", "--filter", "dangling=true"]).split()
    if not ids:
        return []
    used = set(_docker(docker, ["ps", "-a", "--no-trunc", "--format", "{{.Image}}"]).split())
    info = json.loads(_docker(docker, ["image", "inspect"] + sorted(set(ids))) or "[]")
    found = []
    for img in info:
        created = img.get("Created", "")[:19]
        try:
            age_h = (now - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%S"))) / 3600
        except ValueError:
            continue
        if age_h < float(age_hours) or img["Id"] in used or any(fnmatch.fnmatch(img["Id"], p) for p in protect):
            continue
        found.append(
            {
                "item": img["Id"],
                "size_bytes": int(img.get("Size") or 0),
                "why": "dangling image, %.0f h old (older than %s)" % (age_h, age_hours),
            }
        )
    return found


def plan_action(action, p, device, docker, now=None, docker_ids=(), protected=None):
    if action == "tmp_files":
        return file_candidates(action, p["tmp_paths"], p["tmp_age_days"], device, p["protect"], now, docker_ids, protected)
    if action == "rotated_logs":
        return file_candidates(action, p["log_paths"], p["log_age_days"], device, p["protect"], now, docker_ids, protected)
    if action == "stopped_containers":
        return container_candidates(docker, p["protect"], p["protect_projects"])
    return image_candidates(docker, p["image_age_hours"], p["protect"], now)


def unlink_planned(item):
    """Remove the file planned in ``item``, only if it is still that file.

    The name is removed relative to its directory opened without following a symlink, after
    checking that it still names the planned inode: a directory swapped for a symlink, or a file
    replaced since the walk, is refused (ESTALE) rather than followed into another tree.
    """
    parent, name = os.path.split(item["item"])
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != tuple(item["file_id"]):
            raise OSError(errno.ESTALE, "it was replaced since the plan was made", item["item"])
        os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def remove(action, item, docker):
    if action in FILE_ACTIONS:
        unlink_planned(item)
    elif action == "stopped_containers":
        _docker(docker, ["rm", item["id"]])
    else:
        _docker(docker, ["rmi", item["item"]])


def removal_error(action, item, exc):
    """The operator's message for a removal that failed: the item, the cause, what to do."""
    if isinstance(exc, OSError):
        cause = exc.strerror or str(exc)
        if exc.errno == errno.EROFS:
            fix = "the filesystem is mounted read-only; remount it read-write or remove the file once it is writable"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            fix = "run the task as root (become: true) and check the file's attributes (lsattr) and its directory's permissions"
        elif exc.errno in (errno.ESTALE, errno.ELOOP, errno.ENOTDIR):
            fix = "the file or its directory changed while the cleanup ran; run the cleanup again to plan anew"
        else:
            fix = "check the file and its directory, then remove it by hand or run the cleanup again"
        return "could not remove %s (%s): %s: %s" % (item["item"], action, cause, fix)
    return "could not remove %s (%s): %s" % (item["item"], action, exc)


def run(params, check_mode, runner=None, now=None, stat_fn=usage, docker_root=None):
    """Measure, then clean action by action until the target is met. The module's result.

    ``docker_root``: Docker's data root to protect; by default the engine's answer to
    ``docker info`` (or DOCKER_ROOT when no engine answers). DOCKER_ROOT is protected in any case.
    """
    p = validate(params)
    docker = DockerCli(runner, cli_path(p)) if runner is not None else None
    device = os.stat(p["path"]).st_dev
    total, free, used = stat_fn(p["path"])
    before = {"total_bytes": total, "free_bytes": free, "used_percent": used, "free_percent": free_percent(total, free)}
    target_free = float(p["target_free_percent"])
    expected_free = free
    results = {}
    freed_total = 0
    removed_total = 0
    data_root = None
    for action in p["actions"]:
        if free_percent(total, expected_free) >= target_free:
            results[action] = {"candidates": [], "freed_bytes": 0, "skipped": "target already met"}
            continue
        docker_ids = ()
        protected = {}
        if action in FILE_ACTIONS:
            if data_root is None:
                data_root = docker_root or find_docker_root(docker)
            docker_ids = dir_ids([data_root, DOCKER_ROOT])
        else:
            if docker is None:
                raise CleanupError(
                    "%s needs the docker command line client, which was not found; install Docker, "
                    "set docker_cli to the client's path, or leave %s out of actions" % (action, action)
                )
            root = _docker(docker, ["info", "--format", "{{.DockerRootDir}}"]).strip()
            if not _same_dev(root, device):
                results[action] = {
                    "candidates": [],
                    "freed_bytes": 0,
                    "skipped": "Docker's data root %s is on another filesystem: removing containers or images "
                    "would not free space on %s" % (root, p["path"]),
                }
                continue
        candidates = plan_action(action, p, device, docker, now, docker_ids, protected)
        done = []
        freed = 0
        errors = []
        for item in candidates:
            if free_percent(total, expected_free) >= target_free:
                break
            if not check_mode:
                try:
                    remove(action, item, docker)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # gone meanwhile (logrotate): nothing to report
                        errors.append(removal_error(action, item, exc))
                    continue
                except CleanupError as exc:
                    errors.append(removal_error(action, item, exc))
                    continue
            item.pop("mtime", None)
            item.pop("file_id", None)
            done.append(item)
            expected_free += item["size_bytes"]
            freed += item["size_bytes"]
        results[action] = {"candidates": done, "freed_bytes": freed, "errors": errors}
        if action in FILE_ACTIONS:
            results[action]["protected"] = [{"item": k, "why": protected[k]} for k in sorted(protected)]
        freed_total += freed
        removed_total += len(done)
    if check_mode:
        after_free = min(total, free + freed_total)
    else:
        total, after_free, _used = stat_fn(p["path"])
    after = {"free_bytes": after_free, "free_percent": free_percent(total, after_free)}
    result = {
        "changed": removed_total > 0,
        "path": p["path"],
        "before": before,
        "after": after,
        "target_free_percent": target_free,
        "target_met": after["free_percent"] >= target_free,
        "actions": results,
        "freed_bytes": freed_total,
    }
    if data_root is not None:
        result["docker_data_root"] = data_root
    return result

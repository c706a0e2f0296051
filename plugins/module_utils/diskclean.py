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
* ``stopped_containers``: exited containers that belong to no protected project (never the
  stack's, G43) and are not named in ``protect``;
* ``dangling_images``: untagged images older than ``image_age_hours`` not used by any container;
* **never a volume** (G43: no ``--volumes``, no volume prune).

Check mode returns the exact plan (each item, its size, why). Plain Python: the caller injects
``runner`` (the signature of ``AnsibleModule.run_command``) for the docker actions, which run
through ``docker_cli.DockerCli``.
"""

from __future__ import annotations

import calendar
import fnmatch
import json
import os
import re
import stat
import time

from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import DockerCli, cli_path
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandError

ACTIONS = ("tmp_files", "rotated_logs", "stopped_containers", "dangling_images")
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


def file_candidates(action, roots, age_days, device, protect, now=None):
    """Files under ``roots`` on ``device`` that ``action`` may delete, oldest first."""
    now = time.time() if now is None else now
    limit = now - float(age_days) * 86400
    found = []
    seen = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            # Never follow a symlinked directory; files count only when they live on the measured
            # filesystem (a mount below a root is walked, its files are on their own device).
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
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
                found.append({"item": full, "size_bytes": st.st_blocks * 512, "mtime": st.st_mtime, "why": why})
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


def plan_action(action, p, device, docker, now=None):
    if action == "tmp_files":
        return file_candidates(action, p["tmp_paths"], p["tmp_age_days"], device, p["protect"], now)
    if action == "rotated_logs":
        return file_candidates(action, p["log_paths"], p["log_age_days"], device, p["protect"], now)
    if action == "stopped_containers":
        return container_candidates(docker, p["protect"], p["protect_projects"])
    return image_candidates(docker, p["image_age_hours"], p["protect"], now)


def remove(action, item, docker):
    if action in ("tmp_files", "rotated_logs"):
        os.unlink(item["item"])
    elif action == "stopped_containers":
        _docker(docker, ["rm", item["id"]])
    else:
        _docker(docker, ["rmi", item["item"]])


def run(params, check_mode, runner=None, now=None, stat_fn=usage):
    """Measure, then clean action by action until the target is met. The module's result."""
    p = validate(params)
    docker = DockerCli(runner, cli_path(p)) if runner is not None else None
    device = os.stat(p["path"]).st_dev
    total, free, used = stat_fn(p["path"])
    before = {"total_bytes": total, "free_bytes": free, "used_percent": used, "free_percent": free_percent(total, free)}
    target_free = float(p["target_free_percent"])
    expected_free = free
    results = {}
    freed_total = 0
    for action in p["actions"]:
        if free_percent(total, expected_free) >= target_free:
            results[action] = {"candidates": [], "freed_bytes": 0, "skipped": "target already met"}
            continue
        if action in ("stopped_containers", "dangling_images"):
            if docker is None:
                raise CleanupError("%s needs the docker client; none was given" % action)
            root = _docker(docker, ["info", "--format", "{{.DockerRootDir}}"]).strip()
            if not _same_dev(root, device):
                results[action] = {
                    "candidates": [],
                    "freed_bytes": 0,
                    "skipped": "Docker's data root %s is on another filesystem" % root,
                }
                continue
        candidates = plan_action(action, p, device, docker, now)
        chosen = []
        for item in candidates:
            if free_percent(total, expected_free) >= target_free:
                break
            chosen.append(item)
            expected_free += item["size_bytes"]
        freed = 0
        errors = []
        for item in chosen:
            if check_mode:
                freed += item["size_bytes"]
                continue
            try:
                remove(action, item, docker)
                freed += item["size_bytes"]
            except (OSError, CleanupError) as exc:
                errors.append("%s: %s" % (item["item"], exc))
        for item in chosen:
            item.pop("mtime", None)
        results[action] = {"candidates": chosen, "freed_bytes": freed, "errors": errors}
        freed_total += freed
    if check_mode:
        after_free = min(total, free + freed_total)
    else:
        total, after_free, _used = stat_fn(p["path"])
    after = {"free_bytes": after_free, "free_percent": free_percent(total, after_free)}
    return {
        "changed": freed_total > 0 or any(r.get("candidates") for r in results.values()),
        "path": p["path"],
        "before": before,
        "after": after,
        "target_free_percent": target_free,
        "target_met": after["free_percent"] >= target_free,
        "actions": results,
        "freed_bytes": freed_total,
    }

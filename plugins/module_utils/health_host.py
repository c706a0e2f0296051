# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host health checks (container:<name>, disk:<mount>, memory) from observed data.

G37: each container's state is read on its own (``docker inspect`` JSON), disk and
memory are compared as numbers: G13's one disk threshold map (warn >= 80 % used,
fail >= 90 % used or below a free-space floor) and the a.11 memory floor.
"""

from __future__ import annotations

from ansible_collections.ner11.ops.plugins.module_utils.health_result import fmt_num as _fmt_num
from ansible_collections.ner11.ops.plugins.module_utils.health_result import make_check
from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line as _last_line

# d.5: restart attempts before escalating.
RESTARTS_WARN = 3
GIB = 1024**3


def eval_container(name, info, at=None, latency_ms=None):
    """container:<name> -- running, Docker health, restart count, OOMKilled (G37: each container on its own)."""
    if not info:
        return make_check(
            "container",
            name,
            "fail",
            "container %s does not exist: deploy the stack (playbooks/deploy.yml)" % name,
            "missing",
            None,
            latency_ms,
            at,
        )
    state = info.get("State") or {}
    restarts = int(info.get("RestartCount") or 0)
    status = state.get("Status") or ("running" if state.get("Running") else "unknown")
    health = (state.get("Health") or {}).get("Status")
    value = "%s/%s" % (status, health) if health else status
    oom = bool(state.get("OOMKilled"))
    facts = "%d restart(s)%s" % (restarts, ", OOM-killed" if oom else "")
    if state.get("Paused") or status == "paused":
        return make_check("container", name, "fail", "paused (frozen): docker unpause %s" % name, value, None, latency_ms, at)
    if state.get("Restarting") or status == "restarting":
        return make_check(
            "container",
            name,
            "fail",
            "restarting (%s): crash loop? read docker logs %s" % (facts, name),
            value,
            None,
            latency_ms,
            at,
        )
    if not state.get("Running"):
        why = "exited with code %s" % state.get("ExitCode") if status == "exited" else status
        if oom:
            why += ", killed by the OOM killer (raise its memory limit)"
        return make_check(
            "container", name, "fail", "not running (%s): start it (playbooks/service.yml)" % why, value, None, latency_ms, at
        )
    if health == "unhealthy":
        log = (state.get("Health") or {}).get("Log") or []
        last = _last_line(log[-1].get("Output")) if log else "no probe output"
        return make_check(
            "container", name, "fail", "running but unhealthy (%s); last probe: %s" % (facts, last), value, None, latency_ms, at
        )
    if health == "starting":
        return make_check(
            "container", name, "warn", "running, healthcheck still starting (%s)" % facts, value, None, latency_ms, at
        )
    if oom or restarts >= RESTARTS_WARN:
        return make_check(
            "container",
            name,
            "warn",
            "running but unstable (%s): read docker logs %s" % (facts, name),
            value,
            None,
            latency_ms,
            at,
        )
    if not health:
        return make_check("container", name, "pass", "running (%s; no healthcheck defined)" % facts, value, None, latency_ms, at)
    return make_check("container", name, "pass", "running, %s (%s)" % (health, facts), value, None, latency_ms, at)


def eval_disk(mount, st, params, at=None, latency_ms=None):
    """disk:<mount> -- G13 thresholds: warn >= 80 % used, fail >= 90 % used or free below the floor."""
    if st is None:
        return make_check(
            "disk", mount, "fail", "%s does not exist on this host: fix the disks option" % mount, None, "percent", latency_ms, at
        )
    blocks, bfree, bavail, frsize = st
    used_blocks = blocks - bfree
    usable = used_blocks + bavail
    pct = round(100.0 * used_blocks / usable, 1) if usable else 0.0
    free = bavail * frsize
    total = blocks * frsize
    text = "%s%% used, %.1f GiB free of %.1f GiB" % (_fmt_num(pct), free / GIB, total / GIB)
    floor = params["disk_min_free_gb"] * GIB
    fix = ": free space (playbooks/incident_disk.yml)"
    if pct >= params["disk_fail_percent"]:
        return make_check(
            "disk",
            mount,
            "fail",
            text + " (>= %s%% used)%s" % (_fmt_num(params["disk_fail_percent"]), fix),
            pct,
            "percent",
            latency_ms,
            at,
        )
    if free < floor:
        return make_check(
            "disk",
            mount,
            "fail",
            text + " (below the %s GiB floor)%s" % (_fmt_num(params["disk_min_free_gb"]), fix),
            pct,
            "percent",
            latency_ms,
            at,
        )
    if pct >= params["disk_warn_percent"]:
        return make_check(
            "disk",
            mount,
            "warn",
            text + " (>= %s%% used)%s" % (_fmt_num(params["disk_warn_percent"]), fix),
            pct,
            "percent",
            latency_ms,
            at,
        )
    return make_check("disk", mount, "pass", text, pct, "percent", latency_ms, at)


def parse_meminfo(text):
    """/proc/meminfo -> {key: bytes}."""
    out = {}
    for line in (text or "").splitlines():
        key, _sep, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            factor = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            out[key.strip()] = int(parts[0]) * factor
    return out


def eval_memory(meminfo, params, at=None, latency_ms=None):
    """memory -- MemAvailable against the a.11 floor (4 GB before startup); below it warns."""
    available = meminfo.get("MemAvailable")
    if available is None:
        return make_check("memory", "available", "warn", "MemAvailable not found in /proc/meminfo", None, "GiB", latency_ms, at)
    total = meminfo.get("MemTotal") or 0
    gib = round(available / GIB, 2)
    text = "%.1f GiB available of %.1f GiB" % (available / GIB, total / GIB)
    floor = params["memory_min_available_gb"]
    if gib < floor:
        return make_check(
            "memory",
            "available",
            "warn",
            text + " (below %s GiB): stop other workloads or add memory" % _fmt_num(floor),
            gib,
            "GiB",
            latency_ms,
            at,
        )
    return make_check("memory", "available", "pass", text, gib, "GiB", latency_ms, at)

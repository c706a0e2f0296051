# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The startup role's summary and report, for every host of a batch at once (issue 14).

The role's per-host work is the pre-flight health check (ner11.ops.ner_health with the stack
model) and, when anything is to start, the gated path (start_one per service, then the verify).
What each host did is in its registered results; the summary of every host is built here in one
task for the batch (a run_once filter) instead of two tasks per host: each task of each host is a
worker process on the controller. Plain Python, no Ansible imports: unit-tested directly.
"""

from __future__ import annotations


def _resources(first):
    """The disk and memory checks of the pre-flight (disks: / and Docker's data root)."""
    checks = first.get("checks") or {}
    return {k: v for k, v in checks.items() if k.startswith("disk:") or k == "memory"}


def _health(first, verified, check_mode):
    """The final health report: none in check mode (the plan), else the verify when it ran, else the
    pre-flight check of a running stack that stood."""
    if check_mode:
        return {}
    if isinstance(verified, dict) and verified.get("status") and not verified.get("skipped"):
        return verified
    return first


def host_summary(first, verified=None, steps=None, check_mode=False, now=None):
    """One host's ``ner11_startup`` entry.

    ``first``: the registered pre-flight result; ``verified``: the registered verify result (or
    nothing when the gated path did not run); ``steps``: the step records of the gated path's starts
    (empty when the host did not take it); ``now``: seconds since the epoch at the summary.
    """
    first = first if isinstance(first, dict) else {}
    discovered = first.get("discovered") or {}
    model = discovered.get("model") or {}
    found = discovered.get("found") or {}
    order = list(discovered.get("order") or [])
    running = [s for s in order if s in (found.get("running") or [])]
    health = _health(first, verified, check_mode)
    steps = list(steps or [])
    if not steps:
        # Nothing started on this host (no gate ran): every service was already running.
        steps = [
            {
                "service": s,
                "container": (found.get("containers") or {}).get(s),
                "started": False,
                "was_running": True,
                "health": health.get("status") or "not checked (check mode)",
                "duration_s": 0.0,
                "gated": False,
            }
            for s in order
        ]
    started_epoch = first.get("started_epoch")
    total_s = round(float(now) - float(started_epoch), 1) if now is not None and started_epoch is not None else None
    return {
        "project": model.get("project"),
        "check_mode": bool(check_mode),
        "status": health.get("status") or ("planned" if check_mode else "unknown"),
        "started": [s.get("service") for s in steps if s.get("started")],
        "already_running": running,
        "steps": steps,
        "preflight": _resources(first),
        "failed_checks": list(health.get("failed_checks") or []),
        "warnings": [k for k, v in (health.get("checks") or {}).items() if (v or {}).get("status") == "warn"],
        "total_s": total_s,
    }


def batch_summary(hosts, firsts, verifieds=None, steps=None, check_mode=False, now=None):
    """``{host: host_summary(...)}`` for the hosts of a batch; the lists are in the order of ``hosts``."""
    hosts = list(hosts or [])
    firsts, verifieds, steps = list(firsts or []), list(verifieds or []), list(steps or [])

    def at(values, i):
        return values[i] if i < len(values) else None

    out = {}
    for i, h in enumerate(hosts):
        summary = host_summary(at(firsts, i), at(verifieds, i), at(steps, i), check_mode, now)
        summary["report"] = report_lines(summary, check_mode)
        out[h] = summary
    return out


def report_lines(summary, check_mode=False):
    """The lines an operator reads for one host: the total, then each step next to the runbook's time."""
    lines = [
        "startup of %s: %s in %s s (runbook: 3-5 min; escalate after 10 min)"
        % (summary.get("project"), summary.get("status"), summary.get("total_s"))
    ]
    for s in summary.get("steps") or []:
        if "gated" in s:  # a record of a host that started nothing (host_summary)
            text = "%s: already running, %s in the final check (nothing to start, no gate)"
            lines.append(text % (s.get("service"), s.get("health")))
            continue
        if s.get("started"):
            what = "started"
        elif check_mode and not s.get("was_running"):
            what = "would start"
        else:
            what = "already running"
        slower = ""
        if s.get("expected_max_s") is not None and float(s.get("duration_s") or 0) > float(s["expected_max_s"]):
            slower = "; SLOWER than the runbook maximum of %s s" % s["expected_max_s"]
        values = (s.get("service"), what, s.get("health"), s.get("duration_s"), s.get("expected"), slower)
        lines.append("%s: %s, %s in %s s (runbook: %s)%s" % values)
    return lines

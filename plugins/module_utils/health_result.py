# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health results (DESIGN section 5): the check shape, the status order and the aggregation.

Each check is named ``component:measurement`` and evaluated to ``pass``, ``warn``
or ``fail`` with an observed value, its unit, a latency and a one-line output, in
the shape of the IETF api-health-check draft. The evaluators live in
``health_http`` (api, frontend), ``health_db`` (db) and ``health_host``
(container, disk, memory); ``health`` validates options and runs them.
"""

from __future__ import annotations

import datetime
import json
import time

STATUSES = ("pass", "warn", "fail")
_RANK = {"pass": 0, "warn": 1, "fail": 2}


def utc_iso(wall=None):
    ts = time.time() if wall is None else wall
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_name(component, measurement):
    """The key of a check: ``component:measurement``; the host memory check is just ``memory``."""
    if component == "memory" or not measurement:
        return component
    return "%s:%s" % (component, measurement)


def make_check(component, measurement, status, output, observed_value=None, observed_unit=None, latency_ms=None, at=None):
    """One check result (IETF api-health-check shape, snake_case keys)."""
    if status not in _RANK:
        raise ValueError("status must be one of %s" % ", ".join(STATUSES))
    return {
        "status": status,
        "component": component,
        "measurement": measurement,
        "observed_value": observed_value,
        "observed_unit": observed_unit,
        "latency_ms": None if latency_ms is None else round(float(latency_ms), 1),
        "output": output,
        "time": at or utc_iso(),
    }


def worst(statuses):
    out = "pass"
    for status in statuses:
        if _RANK[status] > _RANK[out]:
            out = status
    return out


def aggregate(checks):
    """Overall status, counts per status and the names of failing checks."""
    summary = {s: 0 for s in STATUSES}
    for item in checks.values():
        summary[item["status"]] += 1
    status = worst(item["status"] for item in checks.values())
    failed = sorted(name for name, item in checks.items() if item["status"] == "fail")
    return status, summary, failed


def satisfies(status, wait_for):
    """Whether an overall status ends a wait for ``wait_for`` (pass, or warn = warn or better)."""
    if wait_for in (None, "none"):
        return True
    return _RANK[status] <= _RANK[wait_for]


def should_fail(status, fail_on):
    if fail_on == "never":
        return False
    return _RANK[status] >= _RANK[fail_on]


def failure_message(result, fail_on):
    """The module's failure message: every check at or above ``fail_on`` with its output."""
    level = _RANK["warn"] if fail_on == "warn" else _RANK["fail"]
    bad = [(n, c) for n, c in sorted(result["checks"].items()) if _RANK[c["status"]] >= level]
    parts = ["%s %s: %s" % (name, c["status"], c["output"]) for name, c in bad]
    attempts = result.get("attempts", 1)
    waited = " after %d attempts" % attempts if attempts > 1 else ""
    return "NER11 stack health is %s%s (%d of %d checks at %s or worse): %s" % (
        result["status"],
        waited,
        len(bad),
        len(result["checks"]),
        "warn" if fail_on == "warn" else "fail",
        "; ".join(parts),
    )


def fmt_num(value):
    value = float(value)
    return ("%d" % value) if value == int(value) else ("%.1f" % value)


def _report_value(check):
    value = check.get("observed_value")
    if value is None:
        text = "-"
    elif isinstance(value, dict):
        text = json.dumps(value)
    else:
        text = str(value)
    if check.get("observed_unit") and value is not None and text != "-":
        text += " " + str(check["observed_unit"])
    return text if len(text) <= 24 else text[:23] + "~"


def report_lines(result):
    """The health table an operator reads (one line per check, then the summary line)."""
    fmt = "%-30s %-6s %-24s %9s  %s"
    lines = [fmt % ("CHECK", "STATUS", "VALUE", "LATENCY", "OUTPUT")]
    for name, check in (result.get("checks") or {}).items():
        latency = check.get("latency_ms")
        lat = "-" if latency is None else "%.0f ms" % latency
        lines.append(fmt % (name, check["status"], _report_value(check), lat, check["output"]))
    if result.get("summary") is not None:
        summ = result["summary"]
        counts = (summ["pass"], summ["warn"], summ["fail"], result["duration_ms"], result.get("attempts", 1))
        lines.append("%s: %d pass, %d warn, %d fail in %.0f ms (%d attempt(s))" % ((result["status"].upper(),) + counts))
    return lines

# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The maintenance window guard (runbooks f.1, G43-G47): is now inside the configured window,
which window is it (its id), and how much of it is left for new steps.

A window is ``{weekday, start, end, nth, months}`` in UTC: ``weekday`` a day name (or a list),
``start``/``end`` ``HH:MM`` (an end before the start ends the next day), ``nth`` the n-th such
weekday of the month (1 = the first Sunday; empty = every week), ``months`` the months it
applies to (quarterly: 1, 4, 7, 10). Plain Python 3.9-compatible: unit-tested without Ansible.
"""

from __future__ import annotations

import calendar
import re
import time

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM_RE = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")


class WindowError(ValueError):
    """The window configuration is invalid; the message names the fix."""


def _day(value):
    key = str(value).strip().lower()[:3]
    if key not in DAYS:
        raise WindowError("window weekday %r is not a day name; use monday..sunday" % (value,))
    return DAYS.index(key)


def _minutes(value, name):
    match = _HHMM_RE.match(str(value or "").strip())
    if not match:
        raise WindowError("window %s %r must be a UTC time HH:MM such as 02:00" % (name, value))
    return int(match.group(1)) * 60 + int(match.group(2))


def parse(spec):
    """The validated window: weekdays (0=Monday), start/end minutes, nth, months."""
    if not isinstance(spec, dict) or not spec:
        raise WindowError(
            "no maintenance window is configured: set ner11_maintenance_window (weekday, start, end in UTC) "
            "in the inventory, or run with ner11_force_window=true"
        )
    unknown = sorted(set(spec) - {"weekday", "start", "end", "nth", "months"})
    if unknown:
        raise WindowError("unknown window key(s) %s; valid keys are weekday, start, end, nth, months" % ", ".join(unknown))
    days = spec.get("weekday")
    days = days if isinstance(days, list) else [days]
    if not days or days == [None]:
        raise WindowError("window weekday is required (e.g. sunday)")
    nth = spec.get("nth")
    if nth not in (None, ""):
        nth = _number(nth)
        if nth is None or not 1 <= nth <= 5:
            raise WindowError("window nth must be a number 1..5 (the n-th weekday of the month), got %r" % (spec.get("nth"),))
    else:
        nth = None
    months = spec.get("months") or []
    months = [_number(m) for m in (months if isinstance(months, list) else [months])]
    if any(m is None or not 1 <= m <= 12 for m in months):
        raise WindowError(
            "window months must be month numbers 1..12 (a list, e.g. [1, 4, 7, 10]), got %r" % (spec.get("months"),)
        )
    start = _minutes(spec.get("start"), "start")
    end = _minutes(spec.get("end"), "end")
    if end == start:
        raise WindowError("window end must differ from its start")
    return {"weekdays": sorted({_day(d) for d in days}), "start": start, "end": end, "nth": nth, "months": months}


def _number(value):
    """An int from an int or a string of digits; None for anything else (a word, a float, a bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.isdecimal() and text.isascii() else None


def _applies(window, year, month, day):
    weekday = calendar.weekday(year, month, day)
    if weekday not in window["weekdays"]:
        return False
    if window["months"] and month not in window["months"]:
        return False
    return not window["nth"] or (day - 1) // 7 + 1 == window["nth"]


def evaluate(spec, now=None, force=False, force_budget_s=4 * 3600, tier="weekly"):
    """Where ``now`` (epoch seconds) stands against the window.

    Returns ``{inside, forced, allowed, window_id, start, end, deadline, remaining_s, reason}``;
    ``deadline`` is the epoch by which new steps must have finished (the window's end, or now +
    ``force_budget_s`` when forced outside a window).
    """
    now = time.time() if now is None else float(now)
    window = None
    error = None
    try:
        window = parse(spec)
    except WindowError as exc:
        if not force:
            raise
        error = str(exc)
    found = None
    if window:
        length = (window["end"] - window["start"]) % (24 * 60)
        day0 = int(now // 86400) * 86400
        for back in (0, 1):  # today's window, or yesterday's running past midnight
            base = day0 - back * 86400
            y, m, d = time.gmtime(base)[:3]
            if not _applies(window, y, m, d):
                continue
            start = base + window["start"] * 60
            end = start + length * 60
            if start <= now < end:
                found = (start, end)
                break
    if found:
        start, end = found
        window_id = "%s-%s" % (tier, time.strftime("%Y%m%dT%H%MZ", time.gmtime(start)))
        return {
            "inside": True, "forced": False, "allowed": True, "window_id": window_id,
            "start": start, "end": end, "deadline": end, "remaining_s": int(end - now),
            "reason": "inside the window %s (ends %s UTC)" % (window_id, time.strftime("%H:%M", time.gmtime(end))),
        }  # fmt: skip
    window_id = "%s-forced-%s" % (tier, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
    outside = error or "now (%s UTC) is outside the maintenance window %s" % (
        time.strftime("%a %Y-%m-%d %H:%M", time.gmtime(now)),
        describe(window),
    )
    if force:
        return {
            "inside": False, "forced": True, "allowed": True, "window_id": window_id,
            "start": now, "end": now + force_budget_s, "deadline": now + force_budget_s,
            "remaining_s": int(force_budget_s), "reason": outside + "; forced (ner11_force_window=true)",
        }  # fmt: skip
    return {
        "inside": False, "forced": False, "allowed": False, "window_id": None,
        "start": None, "end": None, "deadline": None, "remaining_s": 0,
        "reason": outside + ". Run it inside the window, or set ner11_force_window=true to run now.",
    }  # fmt: skip


def describe(window):
    if not window:
        return "(none configured)"
    days = "/".join(DAYS[d] for d in window["weekdays"])
    nth = ("the %s " % ("1st", "2nd", "3rd", "4th", "5th")[window["nth"] - 1]) if window["nth"] else "every "
    months = (" in months %s" % ",".join(str(m) for m in window["months"])) if window["months"] else ""
    return "%s%s %02d:%02d-%02d:%02d UTC%s" % (
        nth, days, window["start"] // 60, window["start"] % 60, window["end"] // 60, window["end"] % 60, months,
    )  # fmt: skip


def fits(deadline, now, estimate_s, margin_s):
    """Whether a step estimated at ``estimate_s`` may start now and end ``margin_s`` before the deadline."""
    return float(deadline) - float(now) >= float(estimate_s) + float(margin_s)

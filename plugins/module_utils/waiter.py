# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one wait loop of the cores: poll until a condition holds or a deadline passes.

G7 (DESIGN section 5): no fixed sleeps. A probe runs, its result is judged, and
the loop sleeps at most ``interval`` (never past the deadline) before the next
probe. ``clock`` and ``sleep`` are injected so tests run without waiting.
"""

from __future__ import annotations

import time


def poll(probe, done, timeout, interval, clock=time.monotonic, sleep=time.sleep, delay_first=False):
    """Call ``probe()`` until ``done(result)`` or ``timeout`` seconds pass.

    Returns ``(last result, attempts, elapsed seconds)``; the probe runs at least once.
    ``delay_first`` sleeps one interval before the first probe (give a signal time to act).
    """
    started = clock()
    deadline = started + float(timeout)
    attempts = 0
    if delay_first:
        sleep(max(0.0, min(float(interval), deadline - clock())))
    while True:
        attempts += 1
        result = probe()
        if done(result):
            break
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(float(interval), remaining))
    return result, attempts, clock() - started

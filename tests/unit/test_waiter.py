"""waiter.poll: the one wait loop (fake clock and sleep, no real waiting)."""

from __future__ import annotations

from fake_clock import FakeClock

from ansible_collections.ner11.ops.plugins.module_utils import waiter


def test_stops_when_done():
    clock = FakeClock(100.0)
    values = iter([1, 2, 3, 4])
    result, attempts, elapsed = waiter.poll(lambda: next(values), lambda v: v >= 3, 10, 2, clock, clock.sleep)
    assert (result, attempts, elapsed) == (3, 3, 4.0)
    assert clock.sleeps == [2, 2]


def test_deadline_bounds_the_last_sleep():
    clock = FakeClock(100.0)
    result, attempts, elapsed = waiter.poll(lambda: "no", lambda v: False, 5, 2, clock, clock.sleep)
    assert result == "no" and attempts == 4 and elapsed == 5.0
    assert clock.sleeps == [2, 2, 1]


def test_zero_timeout_probes_once():
    clock = FakeClock(100.0)
    assert waiter.poll(lambda: 0, lambda v: False, 0, 1, clock, clock.sleep) == (0, 1, 0.0)
    assert clock.sleeps == []


def test_delay_first():
    clock = FakeClock(100.0)
    _r, attempts, elapsed = waiter.poll(lambda: 1, lambda v: True, 10, 0.5, clock, clock.sleep, delay_first=True)
    assert attempts == 1 and elapsed == 0.5 and clock.sleeps == [0.5]

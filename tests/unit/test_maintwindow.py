"""Unit tests of plugins/module_utils/maintwindow.py (the maintenance window guard)."""

from __future__ import annotations

import calendar

import pytest

from ansible_collections.ner11.ops.plugins.module_utils import maintwindow as W

FIRST_SUNDAY = {"weekday": "sunday", "nth": 1, "start": "02:00", "end": "06:00"}


def at(text):
    import time

    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M"))


def test_inside_the_first_sunday_window_gives_its_id_and_deadline():
    out = W.evaluate(FIRST_SUNDAY, now=at("2026-12-06 03:00"), tier="monthly")  # 6 Dec 2026 is the first Sunday
    assert out["inside"] and out["allowed"] and not out["forced"]
    assert out["window_id"] == "monthly-20261206T0200Z"
    assert out["deadline"] == at("2026-12-06 06:00") and out["remaining_s"] == 3 * 3600


@pytest.mark.parametrize("when", ["2026-12-13 03:00", "2026-12-06 06:00", "2026-12-06 01:59", "2026-12-05 03:00"])
def test_outside_is_refused_with_the_window_in_words(when):
    out = W.evaluate(FIRST_SUNDAY, now=at(when))
    assert not out["allowed"] and out["window_id"] is None
    assert "outside the maintenance window the 1st sun 02:00-06:00 UTC" in out["reason"]
    assert "ner11_force_window=true" in out["reason"]


def test_forced_outside_gets_a_budget_and_a_forced_id():
    out = W.evaluate(FIRST_SUNDAY, now=at("2026-12-13 03:00"), force=True, force_budget_s=600)
    assert out["allowed"] and out["forced"] and out["remaining_s"] == 600
    assert out["window_id"] == "weekly-forced-20261213T030000Z"
    # Forcing also works with no window configured at all.
    assert W.evaluate({}, now=0, force=True)["allowed"]


def test_a_window_across_midnight_and_quarter_months():
    spec = {"weekday": ["saturday"], "start": "23:00", "end": "01:00", "months": [1, 4, 7, 10]}
    assert W.evaluate(spec, now=at("2026-04-05 00:30"))["window_id"] == "weekly-20260404T2300Z"
    assert not W.evaluate(spec, now=at("2026-05-03 00:30"))["allowed"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ({}, "no maintenance window is configured"),
        ({"weekday": "someday", "start": "02:00", "end": "03:00"}, "not a day name"),
        ({"weekday": "sun", "start": "2am", "end": "03:00"}, "HH:MM"),
        ({"weekday": "sun", "start": "02:00", "end": "02:00"}, "must differ"),
        ({"weekday": "sun", "start": "02:00", "end": "03:00", "nth": 6}, "nth must be a number 1..5"),
        ({"weekday": "sun", "start": "02:00", "end": "03:00", "nth": "first"}, "nth must be a number 1..5"),
        ({"weekday": "sun", "start": "02:00", "end": "03:00", "months": "jan"}, "months must be month numbers"),
        ({"weekday": "sun", "start": "02:00", "end": "03:00", "months": [1, "x"]}, "months must be month numbers"),
        ({"weekday": "sun", "start": "02:00", "end": "03:00", "tz": "CET"}, "unknown window key"),
    ],
)
def test_invalid_windows_name_the_fix(spec, words):
    with pytest.raises(W.WindowError, match=words):
        W.evaluate(spec, now=0)


def test_nth_and_months_read_from_numbers_or_digits_and_a_bad_one_is_forced_past():
    spec = {"weekday": "sun", "start": "02:00", "end": "04:00", "nth": "1", "months": 4}
    assert W.parse(spec)["nth"] == 1 and W.parse(spec)["months"] == [4]
    forced = W.evaluate(dict(spec, nth="first"), now=0, force=True)
    assert forced["allowed"] and "nth must be a number" in forced["reason"]


def test_fits_keeps_a_margin_before_the_deadline():
    assert W.fits(1000, 100, 600, 300)
    assert not W.fits(1000, 200, 600, 300)

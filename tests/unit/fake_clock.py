"""A clock for wait-loop tests: callable for the time, ``sleep`` advances it (no real waiting)."""

from __future__ import annotations


class FakeClock:
    def __init__(self, start=1000.0):
        self.now = start
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

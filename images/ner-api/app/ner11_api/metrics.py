"""Prometheus text exposition without prometheus_client (thread-safe, plain Python)."""

from __future__ import annotations

import threading

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values, extra=None):
    pairs = ['%s="%s"' % (n, _escape(v)) for n, v in zip(names, values)]
    if extra:
        pairs.append('%s="%s"' % extra)
    return "{%s}" % ",".join(pairs) if pairs else ""


def _num(value):
    if value == float("inf"):
        return "+Inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return repr(value) if isinstance(value, float) else str(value)


class Registry:
    def __init__(self):
        self._lock = threading.Lock()
        self._requests = {}  # (method, path, status) -> count
        self._durations = {}  # (method, path) -> [bucket counts..., sum, count]
        self._counters = {}  # name -> value
        self._gauge_fns = []  # (name, help, fn)
        self._counter_help = {}

    def observe_request(self, method, path, status, seconds):
        with self._lock:
            key = (method, path, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            series = self._durations.get((method, path))
            if series is None:
                series = self._durations[(method, path)] = [0] * len(BUCKETS) + [0.0, 0]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    series[i] += 1
            series[-2] += seconds
            series[-1] += 1

    def counter(self, name, help_text):
        with self._lock:
            self._counters.setdefault(name, 0)
            self._counter_help[name] = help_text

    def inc(self, name, amount=1):
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def gauge(self, name, help_text, fn):
        self._gauge_fns.append((name, help_text, fn))

    def render(self):
        lines = []
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted((k, list(v)) for k, v in self._durations.items())
            counters = sorted(self._counters.items())
            counter_help = dict(self._counter_help)
        lines.append("# HELP http_requests_total Total HTTP requests by method, route and status.")
        lines.append("# TYPE http_requests_total counter")
        for (method, path, status), count in requests:
            lines.append("http_requests_total%s %d" % (_labels(("method", "path", "status"), (method, path, status)), count))
        lines.append("# HELP http_request_duration_seconds HTTP request duration in seconds.")
        lines.append("# TYPE http_request_duration_seconds histogram")
        for (method, path), series in durations:
            names, values = ("method", "path"), (method, path)
            for i, bound in enumerate(BUCKETS):
                lines.append(
                    "http_request_duration_seconds_bucket%s %d" % (_labels(names, values, ("le", _num(bound))), series[i])
                )
            lines.append(
                "http_request_duration_seconds_bucket%s %d" % (_labels(names, values, ("le", "+Inf")), series[-1])
            )
            lines.append("http_request_duration_seconds_sum%s %r" % (_labels(names, values), series[-2]))
            lines.append("http_request_duration_seconds_count%s %d" % (_labels(names, values), series[-1]))
        for name, value in counters:
            lines.append("# HELP %s %s" % (name, counter_help.get(name, name)))
            lines.append("# TYPE %s counter" % name)
            lines.append("%s %s" % (name, _num(value)))
        for name, help_text, fn in self._gauge_fns:
            try:
                value = fn()
            except Exception:  # noqa: BLE001 - a broken gauge must not break /metrics
                continue
            lines.append("# HELP %s %s" % (name, help_text))
            lines.append("# TYPE %s gauge" % name)
            if isinstance(value, tuple):  # (labels dict, value)
                labels, value = value
                lines.append("%s%s %s" % (name, _labels(tuple(labels), tuple(labels.values())), _num(value)))
            else:
                lines.append("%s %s" % (name, _num(value)))
        return "\n".join(lines) + "\n"

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health of a NER11 stack (DESIGN section 5): the pure core of ``ner_health``.

Each check is named ``component:measurement`` and evaluated to ``pass``,
``warn`` or ``fail`` with an observed value, its unit, a latency and a one-line
output, in the shape of the IETF api-health-check draft. The evaluation rules
work on observed data only (HTTP responses, psql output, ``docker inspect``
JSON, ``statvfs`` numbers, ``/proc/meminfo``), so they are unit-tested without
a stack and without Ansible.

How this differs from the runbooks' scripts (c.1 ``startup_verify.sh``, c.2
``health_check.sh``):

* G37: JSON fields are compared exactly -- ``"unhealthy"`` is not ``"healthy"``
  and ``"disconnected"`` is not ``"connected"``; each container's state is read
  individually; disk and memory are compared as numbers against the gates.
* G4: only the stable keys are asserted (``status``, ``database``,
  ``models_loaded``); every other key is reported, never required.
* G7: no fixed sleeps. ``wait_until`` polls with an interval and a deadline (``waiter.poll``).
* G13: one disk threshold map (warn >= 80 % used, fail >= 90 % used or below
  a free-space floor), G71: the pool is judged relative to ``max_connections``.
* G32: nothing runs inside the API or frontend containers; HTTP goes to the
  published ports and SQL runs with ``psql`` (PgTarget).
* G36: every check returns explicit fields instead of exit codes.

Checks run concurrently, each with its own deadline, so a frozen API (``docker
pause``) makes its checks fail after ``check_timeout`` instead of hanging the
whole run.

Layout (each file plain Python, unit-tested without a stack): ``health_result``
(check shape, aggregation), ``health_http`` (api, frontend), ``health_db`` (db),
``health_host`` (container, disk, memory), ``waiter`` (the wait loop); this file
validates the options and runs one attempt's checks concurrently.

Plain Python: the caller injects ``http_get(url, timeout) -> HttpResponse`` and
``runner`` (the signature of ``AnsibleModule.run_command``).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
import time

from ansible_collections.ner11.ops.plugins.module_utils.docker_cli import DockerCli, cli_path
from ansible_collections.ner11.ops.plugins.module_utils.health_db import DEFAULT_CANARY_TABLES, db_sql, eval_db
from ansible_collections.ner11.ops.plugins.module_utils.health_host import eval_container, eval_disk, eval_memory, parse_meminfo
from ansible_collections.ner11.ops.plugins.module_utils.health_http import (
    DEFAULT_BUNDLE,
    LATENCY_SAMPLES,
    HttpResponse,
    eval_api_db,
    eval_api_http,
    eval_api_latency,
    eval_api_model,
    eval_api_modules,
    eval_frontend,
    frontend_bundle_path,
)
from ansible_collections.ner11.ops.plugins.module_utils.health_result import aggregate, check_name, make_check, satisfies
from ansible_collections.ner11.ops.plugins.module_utils.health_result import fmt_num as _fmt_num
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import NAME_RULE, is_file_name, is_table
from ansible_collections.ner11.ops.plugins.module_utils.runner import CommandRunner
from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line as _last_line
from ansible_collections.ner11.ops.plugins.module_utils.waiter import poll

COMPONENTS = ("api", "db", "frontend", "container", "disk", "memory")
WAIT_FOR = ("none", "pass", "warn")
FAIL_ON = ("fail", "warn", "never")
# a.7: the six module health paths (B2, B3, B4, E10, E11, E12).
DEFAULT_MODULES = (
    "vendor-equipment",
    "threat-intelligence",
    "compliance",
    "economic-impact",
    "demographics",
    "prioritization",
)

DEFAULTS = {
    "db_name": "ner11_db",
    "disks": ["/"],
    "modules": list(DEFAULT_MODULES),
    "canary_tables": list(DEFAULT_CANARY_TABLES),
    "disk_warn_percent": 80.0,
    "disk_fail_percent": 90.0,
    "disk_min_free_gb": 5.0,
    "memory_min_available_gb": 4.0,
    "pool_warn_percent": 80.0,
    "pool_fail_percent": 95.0,
    "latency_warn_ms": 200.0,
    "latency_samples": LATENCY_SAMPLES,
    "check_timeout": 5.0,
    "wait_for": "none",
    "timeout": 120.0,
    "interval": 2.0,
    "fail_on": "fail",
}


class HealthError(ValueError):
    """Invalid options; the message names the option and the fix."""


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------
def validate(params):
    """Fill defaults, validate values and select the components; returns a new dict."""
    p = dict(DEFAULTS)
    p.update({k: v for k, v in params.items() if v is not None})
    for key in ("api_url", "frontend_url"):
        url = p.get(key)
        if url:
            if not re.match(r"^https?://[^/\s]+", url):
                raise HealthError("%s must be an http(s) URL such as http://127.0.0.1:18000, got %r" % (key, url))
            p[key] = url.rstrip("/")
    for key in ("disk_warn_percent", "disk_fail_percent", "pool_warn_percent", "pool_fail_percent"):
        if not 0 < float(p[key]) <= 100:
            raise HealthError("%s must be a percentage between 0 and 100, got %s" % (key, p[key]))
        p[key] = float(p[key])
    if p["disk_warn_percent"] > p["disk_fail_percent"]:
        raise HealthError(
            "disk_warn_percent (%s) must not exceed disk_fail_percent (%s)" % (p["disk_warn_percent"], p["disk_fail_percent"])
        )
    if p["pool_warn_percent"] > p["pool_fail_percent"]:
        raise HealthError(
            "pool_warn_percent (%s) must not exceed pool_fail_percent (%s)" % (p["pool_warn_percent"], p["pool_fail_percent"])
        )
    for key in ("disk_min_free_gb", "memory_min_available_gb", "latency_warn_ms"):
        if float(p[key]) < 0:
            raise HealthError("%s must not be negative, got %s" % (key, p[key]))
        p[key] = float(p[key])
    if not 1 <= int(p["latency_samples"]) <= 50:
        raise HealthError("latency_samples must be a number of requests from 1 to 50, got %s" % p["latency_samples"])
    p["latency_samples"] = int(p["latency_samples"])
    for key in ("check_timeout", "interval"):
        if not 0 < float(p[key]) <= 3600:
            raise HealthError("%s must be a number of seconds above 0, got %s" % (key, p[key]))
        p[key] = float(p[key])
    if not 0 <= float(p["timeout"]) <= 86400:
        raise HealthError("timeout must be between 0 and 86400 seconds, got %s" % p["timeout"])
    p["timeout"] = float(p["timeout"])
    if p["wait_for"] not in WAIT_FOR:
        raise HealthError("wait_for must be one of %s" % ", ".join(WAIT_FOR))
    if p["fail_on"] not in FAIL_ON:
        raise HealthError("fail_on must be one of %s" % ", ".join(FAIL_ON))
    for module in p["modules"]:
        if not is_file_name(module):
            raise HealthError("modules entry %r is not a module path name such as 'vendor-equipment'" % (module,))
    for table in p["canary_tables"]:
        if not is_table(table):
            raise HealthError("canary_tables entry %r is not a table name (name or schema.name): %s" % (table, NAME_RULE))
    for disk in p["disks"]:
        if not str(disk).startswith("/"):
            raise HealthError("disks entry %r must be an absolute path (a mount point)" % (disk,))
    has_db = bool(p.get("container") or p.get("login_host"))
    available = {
        "api": bool(p.get("api_url")),
        "db": has_db,
        "frontend": bool(p.get("frontend_url")),
        "container": bool(p.get("containers")),
        "disk": bool(p["disks"]),
        "memory": True,
    }
    needs = {
        "api": "api_url",
        "db": "container or login_host",
        "frontend": "frontend_url",
        "container": "containers",
        "disk": "disks",
        "memory": "nothing",
    }
    wanted = p.get("checks")
    if wanted:
        unknown = sorted(set(wanted) - set(COMPONENTS))
        if unknown:
            raise HealthError("checks names unknown component(s) %s; use %s" % (", ".join(unknown), ", ".join(COMPONENTS)))
        missing = [c for c in wanted if not available[c]]
        if missing:
            raise HealthError(
                "checks includes %s but its input is not set: %s"
                % (", ".join(missing), "; ".join("%s needs %s" % (c, needs[c]) for c in missing))
            )
        p["components"] = [c for c in COMPONENTS if c in wanted]
    else:
        p["components"] = [c for c in COMPONENTS if available[c]]
    return p


# ---------------------------------------------------------------------------
# Running the checks
# ---------------------------------------------------------------------------
class HealthChecker:
    """Plans and runs the checks of one attempt, concurrently, each with its own deadline.

    ``http_get(url, timeout) -> HttpResponse``; ``runner`` has the signature of
    ``AnsibleModule.run_command``; ``pg_target_factory(params, runner)`` returns
    a PgTarget-like object (``argv``/``environ``/``describe``/``run``);
    ``timeout_bin`` is the path of coreutils ``timeout`` (or None) used to bound
    ``docker``/``psql`` commands.
    """

    def __init__(
        self,
        params,
        http_get,
        runner=None,
        pg_target_factory=None,
        statvfs=os.statvfs,
        meminfo_path="/proc/meminfo",
        timeout_bin=None,
        clock=time.monotonic,
        inspect=None,
    ):
        self.p = params
        self.http_get = http_get
        self.runner = runner
        self.pg_target_factory = pg_target_factory
        self.statvfs = statvfs
        self.meminfo_path = meminfo_path
        self.timeout_bin = timeout_bin
        self.clock = clock
        # ``inspect(names) -> (rc, {name: document}, stderr)``; default: the docker CLI.
        self.inspect = inspect

    # -- bounded helpers --------------------------------------------------------------
    def _get(self, url, deadline):
        remaining = deadline - self.clock()
        if remaining < 0.05:
            # The check's deadline has passed (an earlier request of it hung): do not ask again.
            return HttpResponse(url, latency_ms=0.0, error="timed out", error_kind="timeout")
        return self.http_get(url, min(self.p["check_timeout"], remaining))

    def _bounded(self, cmd):
        if self.timeout_bin:
            return [self.timeout_bin, "-k", "1", _fmt_num(self.p["check_timeout"])] + list(cmd)
        return list(cmd)

    def _bounded_runner(self, cmd, **kwargs):
        return self.runner(self._bounded(cmd), **kwargs)

    # -- one task per concurrent unit; each returns a list of checks ------------------
    def plan(self):
        """[(expected check names, callable)] for this attempt."""
        p = self.p
        tasks = []
        comps = p["components"]
        if "api" in comps:
            api = p["api_url"]
            # api:latency measures after the other API requests are answered, so the
            # burst of this run's own concurrent requests does not inflate it.
            self._api_done = []
            self._api_http = {}
            tasks.append((["api:http"], self._after_api(lambda: [self._api_simple(api + "/health", eval_api_http)], True)))
            tasks.append(
                (["api:model"], self._after_api(lambda: [self._api_simple(api + "/api/v1/models/status", eval_api_model)]))
            )
            tasks.append((["api:db"], self._after_api(lambda: [self._api_simple(api + "/api/v1/db/health", eval_api_db)])))
            if p["modules"]:
                tasks.append((["api:modules"], self._after_api(self._api_modules)))
            tasks.append((["api:latency"], self._api_latency))
        if "db" in comps:
            tasks.append((["db:connect", "db:query", "db:pool", "db:canary"], self._db))
        if "frontend" in comps:
            tasks.append((["frontend:http"], self._frontend))
        if "container" in comps:
            tasks.append((["container:%s" % c for c in p["containers"]], self._containers))
        if "disk" in comps:
            tasks.append((["disk:%s" % d for d in p["disks"]], self._disks))
        if "memory" in comps:
            tasks.append((["memory"], self._memory))
        return tasks

    def _api_simple(self, url, evaluate):
        deadline = self.clock() + self.p["check_timeout"]
        return evaluate(self._get(url, deadline), self.p["check_timeout"])

    def _api_modules(self):
        deadline = self.clock() + self.p["check_timeout"]
        base = self.p["api_url"] + "/api/v1/%s/health"
        responses = [(m, self._get(base % m, deadline)) for m in self.p["modules"]]
        return [eval_api_modules(responses, self.p["check_timeout"])]

    def _after_api(self, fn, keep=False):
        done = threading.Event()
        self._api_done.append(done)

        def run():
            try:
                result = fn()
                if keep:
                    self._api_http["check"] = result[0]
                return result
            finally:
                done.set()

        return run

    def _api_latency(self):
        timeout = self.p["check_timeout"]
        wait_until_ = self.clock() + timeout
        for done in self._api_done:
            done.wait(max(0.0, wait_until_ - self.clock()))
        first = self._api_http.get("check")
        if first is None or (first["status"] == "fail" and first["observed_value"] is None and "no answer" in first["output"]):
            # The API did not answer /health in time: do not spend another timeout on it.
            return [make_check("api", "latency", "fail", "not measured: the API did not answer (see api:http)", None, "ms")]
        deadline = self.clock() + timeout
        responses = []
        for _sample in range(self.p["latency_samples"]):
            resp = self._get(self.p["api_url"] + "/api/v1/vendor-equipment/", deadline)
            responses.append(resp)
            if resp.error or resp.status != 200:
                break
        return [eval_api_latency(responses, self.p["latency_warn_ms"], timeout)]

    def _frontend(self):
        deadline = self.clock() + self.p["check_timeout"]
        base = self.p["frontend_url"]
        page = self._get(base + "/", deadline)
        bundle = proxy = None
        if not page.error:
            path = frontend_bundle_path(page.text()) if page.status == 200 else DEFAULT_BUNDLE
            url = path if re.match(r"^https?://", path) else base + "/" + path.lstrip("/")
            bundle = self._get(url, deadline)
            proxy = self._get(base + "/api/v1/health", deadline)
        return [eval_frontend(page, bundle, proxy, self.p["check_timeout"])]

    def _db(self):
        p = self.p
        start = self.clock()
        params = dict(p)
        params["connect_timeout"] = max(1, min(int(p.get("connect_timeout") or 10), int(p["check_timeout"]) or 1))
        target = self.pg_target_factory(params, self._bounded_runner)
        try:
            sql = db_sql(p["canary_tables"], max(100, p["check_timeout"] * 1000 - 200))
            args = ["-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1", "-d", p["db_name"], "-f", "-"]
            rc, out, err = target.run("psql", args, data=sql, check=False)
            latency = (self.clock() - start) * 1000.0
            return eval_db(rc, out, err, latency, p, target.describe(), timed_out=(rc == 124 and bool(self.timeout_bin)))
        finally:
            close = getattr(target, "close", None)
            if close:
                close()

    def _containers(self):
        start = self.clock()
        names = list(self.p["containers"])
        if self.inspect is not None:
            rc, found, err = self.inspect(names)
        else:
            docker = DockerCli(CommandRunner(self._bounded_runner), cli_path(self.p))
            rc, found, err = docker.inspect_many(names)
        latency = (self.clock() - start) * 1000.0
        if rc != 0 and not found and "no such" not in (err or "").lower():
            text = "docker inspect failed (rc=%s): %s: is the Docker engine running?" % (rc, _last_line(err))
            return [make_check("container", n, "fail", text, None, None, latency) for n in names]
        return [eval_container(n, found.get(n), latency_ms=latency) for n in names]

    def _disks(self):
        out = []
        for mount in self.p["disks"]:
            start = self.clock()
            try:
                st = self.statvfs(mount)
                values = (st.f_blocks, st.f_bfree, st.f_bavail, st.f_frsize)
            except OSError:
                values = None
            out.append(eval_disk(mount, values, self.p, latency_ms=(self.clock() - start) * 1000.0))
        return out

    def _memory(self):
        start = self.clock()
        try:
            with open(self.meminfo_path) as handle:
                info = parse_meminfo(handle.read())
        except OSError as exc:
            return [make_check("memory", "available", "warn", "cannot read %s: %s" % (self.meminfo_path, exc), None, "GiB")]
        return [eval_memory(info, self.p, latency_ms=(self.clock() - start) * 1000.0)]

    # -- one attempt ------------------------------------------------------------------------
    def run_once(self):
        """Run every planned check concurrently; a check that misses its deadline fails."""
        started = self.clock()
        tasks = self.plan()
        checks = {}
        if tasks:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(tasks), thread_name_prefix="ner11-health")
            try:
                futures = {pool.submit(fn): names for names, fn in tasks}
                # api:latency may start one check_timeout after the others (see plan()).
                done, _pending = concurrent.futures.wait(futures, timeout=2 * self.p["check_timeout"] + 1.0)
                for future, names in futures.items():
                    if future in done and future.exception() is None:
                        for item in future.result():
                            checks[check_name(item["component"], item["measurement"])] = item
                        continue
                    if future in done:
                        text = "check error: %s: %s" % (future.exception().__class__.__name__, future.exception())
                    else:
                        text = "did not finish within %ss: the component does not answer" % _fmt_num(self.p["check_timeout"])
                    for name in names:
                        component, _sep, measurement = name.partition(":")
                        checks[name] = make_check(component, measurement or "available", "fail", text)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        status, summary, failed = aggregate(checks)
        return {
            "status": status,
            "checks": dict(sorted(checks.items())),
            "summary": summary,
            "failed_checks": failed,
            "duration_ms": round((self.clock() - started) * 1000.0, 1),
        }


def wait_until(run_once, wait_for="none", timeout=120.0, interval=2.0, clock=time.monotonic, sleep=time.sleep):
    """Run ``run_once`` until its status satisfies ``wait_for`` or the deadline passes (G7: no fixed sleeps).

    Returns the last result with ``attempts`` and ``duration_ms`` (whole wait) added.
    """
    result, attempts, elapsed = poll(
        run_once, lambda r: satisfies(r["status"], wait_for), timeout, interval, clock=clock, sleep=sleep
    )
    result["attempts"] = attempts
    result["duration_ms"] = round(elapsed * 1000.0, 1)
    return result

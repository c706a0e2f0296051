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
* G7: no fixed sleeps. ``wait_until`` polls with an interval and a deadline.
* G13: one disk threshold map (warn >= 80 % used, fail >= 90 % used or below
  a free-space floor), G71: the pool is judged relative to ``max_connections``.
* G32: nothing runs inside the API or frontend containers; HTTP goes to the
  published ports and SQL runs with ``psql`` (PgTarget).
* G36: every check returns explicit fields instead of exit codes.

Checks run concurrently, each with its own deadline, so a frozen API (``docker
pause``) makes its checks fail after ``check_timeout`` instead of hanging the
whole run.

Plain Python: the caller injects ``http_get(url, timeout) -> HttpResponse`` and
``runner`` (the signature of ``AnsibleModule.run_command``).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import re
import threading
import time

STATUSES = ("pass", "warn", "fail")
_RANK = {"pass": 0, "warn": 1, "fail": 2}
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
DEFAULT_CANARY_TABLES = ("vendor_equipment", "threat_intelligence", "compliance_frameworks")
FRONTEND_TITLE = "NER11 Gold Model"
DEFAULT_BUNDLE = "/static/js/main.chunk.js"
# d.5: restart attempts before escalating.
RESTARTS_WARN = 3
GIB = 1024**3
_MODULE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_SCRIPT_RE = re.compile(r"<script[^>]*\bsrc=[\"']([^\"']+)[\"']", re.I)
_ROOT_RE = re.compile(r"<div[^>]*\bid=[\"']root[\"']", re.I)
MAX_BODY = 1024 * 1024

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
    "check_timeout": 5.0,
    "wait_for": "none",
    "timeout": 120.0,
    "interval": 2.0,
    "fail_on": "fail",
}


class HealthError(ValueError):
    """Invalid options; the message names the option and the fix."""


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# HTTP observations
# ---------------------------------------------------------------------------
class HttpResponse:
    """What one GET observed. ``error`` is None when an HTTP status was received.

    ``error_kind`` is one of ``timeout``, ``refused``, ``closed``, ``other``.
    """

    def __init__(self, url, status=None, body=b"", headers=None, latency_ms=0.0, error=None, error_kind=None):
        self.url = url
        self.status = status
        self.body = body or b""
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        self.latency_ms = latency_ms
        self.error = error
        self.error_kind = error_kind if error else None

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8", "replace"))
        except ValueError:
            return None

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):  # pragma: no cover - debugging aid
        return "HttpResponse(%r, status=%r, error=%r)" % (self.url, self.status, self.error)


def classify_error(exc):
    """Map an exception of an HTTP client to (error_kind, text)."""
    reason = getattr(exc, "reason", None)
    probe = reason if isinstance(reason, BaseException) else exc
    text = str(reason if reason is not None else exc) or exc.__class__.__name__
    if isinstance(probe, TimeoutError) or "timed out" in text.lower():
        return "timeout", "timed out"
    if isinstance(probe, ConnectionRefusedError) or "refused" in text.lower():
        return "refused", "connection refused"
    if isinstance(probe, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)) or exc.__class__.__name__ in (
        "RemoteDisconnected",
        "BadStatusLine",
        "IncompleteRead",
    ):
        return "closed", "connection closed by the server"
    return "other", text


def _http_problem(resp, timeout, what):
    """One line for a request that got no HTTP status (refused, timeout, ...)."""
    if resp.error_kind == "timeout":
        return "%s: no answer within %ss: %s frozen or overloaded (is the container paused? check CPU/memory)" % (
            resp.url,
            _fmt_num(timeout),
            what,
        )
    if resp.error_kind == "refused":
        return "%s: connection refused: %s not running or its port not published (start it)" % (resp.url, what)
    if resp.error_kind == "closed":
        return "%s: connection closed without an answer: %s crashed or restarting (read its logs)" % (resp.url, what)
    return "%s: %s" % (resp.url, resp.error)


def _detail(doc):
    if isinstance(doc, dict):
        for key in ("error", "detail", "message"):
            if doc.get(key):
                return str(doc[key])
    return ""


def _fmt_num(value):
    value = float(value)
    return ("%d" % value) if value == int(value) else ("%.1f" % value)


def eval_api_http(resp, timeout, at=None):
    """api:http -- /health JSON ``status`` must be exactly "healthy" (G37, G4)."""
    lat = resp.latency_ms
    if resp.error:
        return make_check("api", "http", "fail", _http_problem(resp, timeout, "API"), None, None, lat, at)
    doc = resp.json()
    value = doc.get("status") if isinstance(doc, dict) else None
    if value == "healthy" and resp.status == 200:
        extra = ", ".join("%s %s" % (k, doc[k]) for k in ("version", "uptime_seconds") if k in doc)
        return make_check("api", "http", "pass", "healthy" + (" (%s)" % extra if extra else ""), value, None, lat, at)
    if not isinstance(doc, dict):
        return make_check(
            "api", "http", "fail", "%s: HTTP %s without a JSON health body" % (resp.url, resp.status), None, None, lat, at
        )
    detail = ""
    sub = doc.get("checks")
    if isinstance(sub, dict):
        detail = ": " + ", ".join("%s %s" % (k, json.dumps(v)) for k, v in sorted(sub.items()))
    if value == "degraded":
        return make_check("api", "http", "warn", "API reports status 'degraded'%s" % detail, value, None, lat, at)
    return make_check(
        "api",
        "http",
        "fail",
        "API reports status %s (HTTP %s), expected exactly 'healthy'%s" % (json.dumps(value), resp.status, detail),
        value,
        None,
        lat,
        at,
    )


def eval_api_model(resp, timeout, at=None):
    """api:model -- /api/v1/models/status ``models_loaded`` must be JSON true."""
    lat = resp.latency_ms
    if resp.error:
        return make_check("api", "model", "fail", _http_problem(resp, timeout, "API"), None, None, lat, at)
    doc = resp.json()
    if not isinstance(doc, dict) or "models_loaded" not in doc:
        return make_check(
            "api", "model", "fail", "%s: HTTP %s without models_loaded" % (resp.url, resp.status), None, None, lat, at
        )
    loaded = doc["models_loaded"]
    if loaded is True and resp.status == 200:
        names = doc.get("available_models") or []
        text = "models loaded"
        if isinstance(names, list) and names:
            text = "%d model(s) loaded: %s" % (len(names), ", ".join(str(n) for n in names))
        if doc.get("load_time_seconds") is not None:
            text += " in %ss" % doc["load_time_seconds"]
        return make_check("api", "model", "pass", text, True, None, lat, at)
    why = _detail(doc)
    return make_check(
        "api",
        "model",
        "fail",
        "models_loaded is %s%s: restore the model files (artifact_restore kind=models) and restart the api"
        % (json.dumps(loaded), (" (%s)" % why) if why else ""),
        loaded if isinstance(loaded, bool) else None,
        None,
        lat,
        at,
    )


def eval_api_db(resp, timeout, at=None):
    """api:db -- /api/v1/db/health ``database`` must be exactly "connected" (G37)."""
    lat = resp.latency_ms
    if resp.error:
        return make_check("api", "db", "fail", _http_problem(resp, timeout, "API"), None, None, lat, at)
    doc = resp.json()
    if not isinstance(doc, dict) or "database" not in doc:
        return make_check(
            "api", "db", "fail", "%s: HTTP %s without a 'database' field" % (resp.url, resp.status), None, None, lat, at
        )
    state = doc["database"]
    active = doc.get("active_connections")
    if state == "connected" and resp.status == 200:
        text = "connected"
        if "pool_size" in doc:
            text += ", pool_size %s, active_connections %s" % (doc["pool_size"], active)
        return make_check("api", "db", "pass", text, active, "connections", lat, at)
    why = _detail(doc)
    return make_check(
        "api",
        "db",
        "fail",
        "API reports database %s (HTTP %s)%s: check db:connect and the postgres container"
        % (json.dumps(state), resp.status, (": " + why) if why else ""),
        active,
        "connections",
        lat,
        at,
    )


def module_problem(resp, timeout):
    """Why one module health path is not healthy, or None (a.7 failure meanings)."""
    if resp.error_kind == "timeout":
        return "API overloaded: no answer within %ss (check CPU/memory)" % _fmt_num(timeout)
    if resp.error:
        return "unreachable (%s)" % resp.error
    if resp.status == 404:
        return "module not loaded (404: check the module imports in api/__init__.py)"
    if resp.status is not None and resp.status >= 500:
        return "server error (%s): read the API logs" % resp.status
    if resp.status != 200:
        return "HTTP %s" % resp.status
    doc = resp.json()
    value = doc.get("status") if isinstance(doc, dict) else None
    if value != "healthy":
        return "status %s, expected 'healthy'" % json.dumps(value)
    return None


def eval_api_modules(responses, timeout, at=None):
    """api:modules -- every module health path answers status "healthy"; names each failing module."""
    problems = []
    latency = 0.0
    for module, resp in responses:
        latency = max(latency, resp.latency_ms or 0.0)
        why = module_problem(resp, timeout)
        if why:
            problems.append("%s: %s" % (module, why))
    ok = len(responses) - len(problems)
    head = "%d/%d modules healthy" % (ok, len(responses))
    if not problems:
        return make_check("api", "modules", "pass", head, ok, "modules", latency, at)
    return make_check("api", "modules", "fail", head + "; " + "; ".join(problems), ok, "modules", latency, at)


LATENCY_SAMPLES = 3


def eval_api_latency(responses, warn_ms, timeout, at=None):
    """api:latency -- the vendor listing answers within latency_warn_ms (a.7: under 200 ms, d.3).

    ``responses`` are consecutive GETs of the listing (one or more); the median
    latency is judged, so one scheduling hiccup does not flip the status.
    """
    if isinstance(responses, HttpResponse):
        responses = [responses]
    bad = [r for r in responses if r.error or r.status != 200]
    if not bad:
        lats = sorted(r.latency_ms for r in responses)
        lat = lats[len(lats) // 2]
        url = responses[0].url
        samples = "median of %s" % "/".join("%.0f" % r.latency_ms for r in responses) if len(responses) > 1 else "one request"
        if lat < warn_ms:
            return make_check(
                "api", "latency", "pass", "%s answered in %.0f ms (%s)" % (url, lat, samples), round(lat, 1), "ms", lat, at
            )
        return make_check(
            "api",
            "latency",
            "warn",
            "%s answered in %.0f ms (%s ms; >= %s ms): API slow, check load and the database"
            % (url, lat, samples, _fmt_num(warn_ms)),
            round(lat, 1),
            "ms",
            lat,
            at,
        )
    resp = bad[0]
    lat = resp.latency_ms
    if resp.error:
        return make_check("api", "latency", "fail", _http_problem(resp, timeout, "API"), None, "ms", lat, at)
    if resp.status == 404:
        return make_check(
            "api", "latency", "warn", "%s: 404, the listing is not served (module not loaded?)" % resp.url, None, "ms", lat, at
        )
    why = _detail(resp.json())
    return make_check(
        "api", "latency", "fail", "%s: HTTP %s%s" % (resp.url, resp.status, (": " + why) if why else ""), None, "ms", lat, at
    )


def frontend_bundle_path(html):
    """The first script the page references (the JS bundle), or the a.10 default."""
    match = _SCRIPT_RE.search(html or "")
    return match.group(1) if match else DEFAULT_BUNDLE


def eval_frontend(page, bundle, proxy, timeout, at=None):
    """frontend:http -- page, title, root element, JS bundle and the /api proxy (a.7, b.3 step 7)."""
    latency = max(r.latency_ms or 0.0 for r in (page, bundle, proxy) if r is not None)
    if page.error:
        return make_check("frontend", "http", "fail", _http_problem(page, timeout, "frontend"), None, None, latency, at)
    problems = []
    warnings = []
    html = page.text()
    if page.status != 200:
        problems.append("/ answered HTTP %s" % page.status)
    else:
        match = _TITLE_RE.search(html)
        title = match.group(1).strip() if match else None
        if title is None:
            problems.append("no <title> in the page")
        elif title != FRONTEND_TITLE:
            warnings.append(
                "title is %s, expected %s (check public/index.html)" % (json.dumps(title), json.dumps(FRONTEND_TITLE))
            )
        if not _ROOT_RE.search(html):
            problems.append('no <div id="root"> in the page (incomplete build)')
    if bundle is not None:
        ctype = bundle.headers.get("content-type", "")
        if bundle.error:
            problems.append("bundle %s" % _http_problem(bundle, timeout, "frontend"))
        elif bundle.status != 200:
            problems.append("bundle %s answered HTTP %s (incomplete build: restart the frontend)" % (bundle.url, bundle.status))
        elif "javascript" not in ctype:
            problems.append("bundle %s has Content-Type %s, expected application/javascript" % (bundle.url, ctype or "none"))
    if proxy is not None:
        if proxy.error:
            problems.append("proxy %s" % _http_problem(proxy, timeout, "frontend"))
        else:
            doc = proxy.json()
            value = doc.get("status") if isinstance(doc, dict) else None
            if value == "degraded":
                warnings.append("proxied /api/v1/health reports 'degraded'")
            elif value != "healthy" or proxy.status != 200:
                problems.append(
                    "proxied /api/v1/health answered HTTP %s status %s (API down or proxy broken)"
                    % (proxy.status, json.dumps(value))
                )
    if problems:
        return make_check("frontend", "http", "fail", "; ".join(problems + warnings), page.status, None, latency, at)
    if warnings:
        return make_check("frontend", "http", "warn", "; ".join(warnings), page.status, None, latency, at)
    return make_check(
        "frontend",
        "http",
        "pass",
        "page, JS bundle and API proxy answer (title %s)" % json.dumps(FRONTEND_TITLE),
        200,
        None,
        latency,
        at,
    )


# ---------------------------------------------------------------------------
# Database observations (one psql run gives all four db:* checks)
# ---------------------------------------------------------------------------
_CANARY_SQL = (
    "SELECT 'canary', t, CASE WHEN to_regclass(quote_ident(t)) IS NULL THEN '-' ELSE"
    " (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I', t), false, true, '')))[1]::text"
    " END FROM unnest(ARRAY[@TABLES@]::text[]) AS t WHERE t IS NOT NULL;"
)


def db_sql(canary_tables, statement_timeout_ms):
    """The read-only SQL of the db checks; every row starts with its key."""
    tables = ",".join("'%s'" % t.replace("'", "''") for t in canary_tables) or "NULL"
    # Count only tables that exist (a missing one must not abort the other checks);
    # the names are validated identifiers, passed as quoted literals.
    canary = _CANARY_SQL.replace("@TABLES@", tables)
    return "\n".join(
        [
            "SET statement_timeout = %d;" % int(statement_timeout_ms),
            "SELECT 'query', 1;",
            "SELECT 'server', current_setting('server_version'), pg_is_in_recovery()::text, current_database(), current_user;",
            "SELECT 'max', current_setting('max_connections'), current_setting('superuser_reserved_connections');",
            "SELECT 'state', coalesce(state, 'unknown'), count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' GROUP BY 2 ORDER BY 2;",
            canary,
            "",
        ]
    )


def parse_db_output(out):
    """Parse the key-prefixed, unit-separated rows of ``db_sql``."""
    data = {"query": None, "server": None, "max": None, "states": {}, "canary": {}}
    for line in (out or "").splitlines():
        if not line:
            continue
        row = line.split("\x1f")
        key = row[0]
        if key == "query" and len(row) > 1:
            data["query"] = row[1]
        elif key == "server" and len(row) >= 5:
            data["server"] = {"version": row[1], "in_recovery": row[2] == "true", "database": row[3], "user": row[4]}
        elif key == "max" and len(row) >= 3:
            data["max"] = {"max_connections": int(row[1]), "reserved": int(row[2])}
        elif key == "state" and len(row) >= 3:
            data["states"][row[1]] = int(row[2])
        elif key == "canary" and len(row) >= 3:
            data["canary"][row[1]] = None if row[2] == "-" else int(row[2] or 0)
    return data


def db_error_hint(text, target, db_name):
    """A fix for a psql/docker exec failure, from its last error line."""
    low = (text or "").lower()
    if "no such container" in low:
        return "the PostgreSQL container does not exist: deploy the stack (playbooks/deploy.yml)"
    if "is paused" in low:
        return "the PostgreSQL container is paused: docker unpause it"
    if "is not running" in low or "is restarting" in low:
        return "the PostgreSQL container is not running: start postgres (playbooks/service.yml)"
    if "password authentication failed" in low or "no password supplied" in low:
        return "authentication failed: check login_user/login_password"
    if "database" in low and "does not exist" in low:
        return "database %s does not exist: restore it (playbooks/restore.yml)" % db_name
    if "too many clients" in low or "remaining connection slots" in low:
        return "connection slots exhausted: terminate idle sessions (pg_sessions) or raise max_connections"
    if "starting up" in low or "shutting down" in low or "recovery" in low:
        return "PostgreSQL is starting or stopping: wait for it (wait_for=pass)"
    if "timed out" in low or "timeout" in low or "no answer" in low:
        return "PostgreSQL (or docker exec) did not answer in time: check the host load and the PostgreSQL logs"
    if "connection refused" in low or "could not connect" in low or "no such file" in low:
        return "PostgreSQL is not accepting connections on %s: start it and read its logs" % target
    return "read the PostgreSQL logs"


def eval_db(rc, out, err, latency_ms, params, target, timed_out=False, at=None):
    """db:connect, db:query, db:pool and db:canary from one psql run."""
    db_name = params["db_name"]
    names = ("connect", "query", "pool", "canary")
    data = parse_db_output(out) if rc == 0 or out else None
    connected = data is not None and data["query"] is not None
    if not connected:
        last = _last_line(err or out) if not timed_out else "no answer within %ss" % _fmt_num(params["check_timeout"])
        text = "cannot query %s via %s: %s: %s" % (db_name, target, last, db_error_hint(last, target, db_name))
        checks = [make_check("db", "connect", "fail", text, None, None, latency_ms, at)]
        for name in names[1:]:
            checks.append(make_check("db", name, "fail", "not run: db:connect failed", None, None, None, at))
        return checks
    server = data["server"] or {}
    checks = [
        make_check(
            "db",
            "connect",
            "pass",
            "authenticated to %s as %s via %s" % (server.get("database", db_name), server.get("user", "?"), target),
            None,
            None,
            latency_ms,
            at,
        )
    ]
    # A run that stopped after SELECT 1 (timeout, statement error) leaves later checks unproven.
    stopped = None
    if rc != 0:
        if timed_out:
            stopped = "psql did not finish within %ss (database slow or overloaded)" % _fmt_num(params["check_timeout"])
        else:
            stopped = "psql stopped with rc=%s: %s" % (rc, _last_line(err))
    # db:query -- an authenticated SELECT 1 (DESIGN 5: pg_isready is not enough).
    if data["query"] != "1":
        last = stopped or "SELECT 1 returned %r" % data["query"]
        checks.append(make_check("db", "query", "fail", "query failed: %s" % last, None, None, latency_ms, at))
    elif server.get("in_recovery"):
        checks.append(
            make_check(
                "db",
                "query",
                "warn",
                "SELECT 1 ok, PostgreSQL %s is in recovery (standby or restoring): writes fail" % server.get("version"),
                server.get("version"),
                None,
                latency_ms,
                at,
            )
        )
    else:
        checks.append(
            make_check(
                "db",
                "query",
                "pass",
                "SELECT 1 ok, PostgreSQL %s, primary" % server.get("version"),
                server.get("version"),
                None,
                latency_ms,
                at,
            )
        )
    if stopped and (not data["max"] or not data["states"]):
        checks.append(make_check("db", "pool", "fail", "not checked: " + stopped, None, "percent", latency_ms, at))
    else:
        checks.append(eval_db_pool(data["states"], data["max"], params, latency_ms, at))
    if stopped:
        checks.append(make_check("db", "canary", "fail", "not checked: " + stopped, None, "rows", latency_ms, at))
    else:
        checks.append(eval_db_canary(data["canary"], params["canary_tables"], db_name, latency_ms, at))
    return checks


def eval_db_pool(states, maxinfo, params, latency_ms=None, at=None):
    """db:pool -- client connections relative to max_connections (G71: relative, not > 80 absolute)."""
    if not maxinfo:
        return make_check("db", "pool", "fail", "max_connections not read", None, "percent", latency_ms, at)
    total = sum(states.values())
    limit = maxinfo["max_connections"]
    pct = round(100.0 * total / limit, 1) if limit else 100.0
    by_state = ", ".join("%s %d" % (k, v) for k, v in sorted(states.items()))
    text = "%d/%d connections (%s%%): %s" % (total, limit, _fmt_num(pct), by_state or "none")
    fix = ": terminate idle sessions (pg_sessions) or raise max_connections"
    if pct >= params["pool_fail_percent"]:
        return make_check(
            "db",
            "pool",
            "fail",
            text + " >= %s%%%s" % (_fmt_num(params["pool_fail_percent"]), fix),
            pct,
            "percent",
            latency_ms,
            at,
        )
    if pct > params["pool_warn_percent"]:
        return make_check(
            "db",
            "pool",
            "warn",
            text + " > %s%%%s" % (_fmt_num(params["pool_warn_percent"]), fix),
            pct,
            "percent",
            latency_ms,
            at,
        )
    return make_check("db", "pool", "pass", text, pct, "percent", latency_ms, at)


def eval_db_canary(counts, tables, db_name, latency_ms=None, at=None):
    """db:canary -- the canary tables exist; their row counts are the observed value (0 rows is fine, b.3 step 6)."""
    missing = [t for t in tables if counts.get(t) is None]
    present = {t: counts[t] for t in tables if counts.get(t) is not None}
    text = ", ".join("%s %d rows" % (t, n) for t, n in present.items())
    if missing:
        return make_check(
            "db",
            "canary",
            "fail",
            "missing table(s) in %s: %s: run the API migrations or restore the database%s"
            % (db_name, ", ".join(missing), ("; " + text) if text else ""),
            present,
            "rows",
            latency_ms,
            at,
        )
    return make_check("db", "canary", "pass", text or "no canary tables configured", present, "rows", latency_ms, at)


def _last_line(text):
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# ---------------------------------------------------------------------------
# Containers, disks, memory
# ---------------------------------------------------------------------------
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


def parse_inspect(out):
    """``docker inspect`` stdout -> {name: info} (names without the leading slash)."""
    try:
        items = json.loads(out or "[]")
    except ValueError:
        return {}
    result = {}
    for item in items if isinstance(items, list) else []:
        name = str(item.get("Name") or "").lstrip("/")
        if name:
            result[name] = item
    return result


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
        if not _MODULE_RE.match(str(module)):
            raise HealthError("modules entry %r is not a module path name such as 'vendor-equipment'" % (module,))
    for table in p["canary_tables"]:
        if not _IDENT_RE.match(str(table)):
            raise HealthError("canary_tables entry %r is not a plain table name" % (table,))
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
    ):
        self.p = params
        self.http_get = http_get
        self.runner = runner
        self.pg_target_factory = pg_target_factory
        self.statvfs = statvfs
        self.meminfo_path = meminfo_path
        self.timeout_bin = timeout_bin
        self.clock = clock

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
        for _sample in range(LATENCY_SAMPLES):
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
        cmd = [self.p.get("docker_cli") or "docker", "inspect", "--type", "container"] + names
        rc, out, err = self.runner(self._bounded(cmd))
        latency = (self.clock() - start) * 1000.0
        found = parse_inspect(out)
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
    started = clock()
    deadline = started + float(timeout)
    attempts = 0
    while True:
        attempts += 1
        result = run_once()
        if satisfies(result["status"], wait_for):
            break
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(float(interval), remaining))
    result["attempts"] = attempts
    result["duration_ms"] = round((clock() - started) * 1000.0, 1)
    return result

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP health checks (api:*, frontend:http): pure evaluation of what one GET observed.

G37 and G4 (DESIGN section 5): JSON fields are compared exactly -- ``"unhealthy"``
is not ``"healthy"``; only the stable keys are asserted (``status``,
``database``, ``models_loaded``), every other key is reported, never required.
G32: nothing runs inside the API or frontend containers; HTTP goes to the
published ports. The caller injects ``http_get(url, timeout) -> HttpResponse``.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

from ansible_collections.ner11.ops.plugins.module_utils.health_result import fmt_num as _fmt_num
from ansible_collections.ner11.ops.plugins.module_utils.health_result import make_check

FRONTEND_TITLE = "NER11 Gold Model"
DEFAULT_BUNDLE = "/static/js/main.chunk.js"
_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_SCRIPT_RE = re.compile(r"<script[^>]*\bsrc=[\"']([^\"']+)[\"']", re.I)
_ROOT_RE = re.compile(r"<div[^>]*\bid=[\"']root[\"']", re.I)
MAX_BODY = 1024 * 1024


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


_OPENER = []


def plain_http_get(url, timeout, user_agent="ner11.ops", opener=None):
    """GET a plain ``http://`` URL with the standard library; never raises.

    ``ansible.module_utils.urls.open_url`` builds a new TLS context (it loads the CA store,
    about 20 ms of CPU) for every request, even for plain HTTP; with a dozen concurrent
    checks in one process that cost, serialised by the GIL, was most of a health check's
    wall time. Plain HTTP needs none of it: one opener (proxies from the environment and
    redirects as urllib does them, as open_url did) is built once per process. HTTPS
    stays with open_url (the module decides).
    """
    if opener is None:
        if not _OPENER:
            _OPENER.append(urllib.request.build_opener())
        opener = _OPENER[0]
    if not url.lower().startswith("http://"):
        return HttpResponse(url, None, b"", {}, 0.0, "not a plain http:// URL", "other")
    request = urllib.request.Request(url, headers={"User-Agent": user_agent}, method="GET")  # noqa: S310 - http:// only (above)
    return fetch(url, lambda: opener.open(request, timeout=timeout))


def fetch(url, open_response):
    """Run ``open_response()`` (an HTTP client's GET of ``url``) and make an HttpResponse of what
    happens; never raises. The one place that reads bodies and turns errors into a check's output,
    for the standard library's client and for ``open_url`` alike."""
    started = time.monotonic()
    try:
        resp = open_response()
        try:
            body = resp.read(MAX_BODY)
            return HttpResponse(url, resp.getcode(), body, dict(resp.headers), (time.monotonic() - started) * 1000.0)
        finally:
            resp.close()
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_BODY)
        except Exception:  # the error body is optional
            body = b""
        return HttpResponse(url, exc.code, body, dict(exc.headers or {}), (time.monotonic() - started) * 1000.0)
    except Exception as exc:  # refused, timeout, reset, bad URL...: reported as the check's output
        kind, text = classify_error(exc)
        return HttpResponse(url, None, b"", {}, (time.monotonic() - started) * 1000.0, str(text), kind)


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

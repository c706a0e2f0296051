# -*- coding: utf-8 -*-
# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL session diagnosis and scoped termination: the pure core of ``pg_sessions``.

Runbook b.7 steps 4 and 6 (pool exhausted, long-running and blocked queries),
done safely:

* one read-only snapshot of ``pg_stat_activity`` (with ``pg_blocking_pids``
  instead of the runbook's ``pg_locks`` self-join), ``max_connections``,
  ``pg_stat_database.deadlocks`` (G21: not ``pg_stat_database_conflicts``) and
  the settings waiting for a restart (G22: ``pending_restart``);
* query text is reported with every literal masked and truncated, so a
  password in an ``ALTER ROLE`` or a value in an ``INSERT`` never reaches the
  output (G49);
* sessions are selected by rule (idle in transaction, idle, running, blocking
  others), scoped to one database and optionally to application names and
  users (G48: never "every session"). The caller's own session, non-client
  backends (replication, autovacuum, background workers) and maintenance
  sessions (dumps, restores, VACUUM, REINDEX, ...) are never selected;
* termination re-checks, in the same statement, that each session is still in
  the state it was measured in (same pid, same ``state_change``), so a session
  that moved on in between is left alone. Running queries are cancelled first
  and terminated only when the cancel did not end them.

Plain Python: the caller passes a ``PgTarget`` (pgexec.py) or any object with
``query(sql, db)``; a ``sleep`` and ``clock`` for the waits.
"""

from __future__ import annotations

# ruff: noqa: S608 -- SQL holds only integers (pids, timestamps) and quote_literal()ed names.

import json
import re
import time

from ansible_collections.ner11.ops.plugins.module_utils.identifiers import is_name, quote_literal
from ansible_collections.ner11.ops.plugins.module_utils.waiter import poll

RULES = ("idle_in_transaction", "idle", "running", "blocking")
ACTIONS = ("report", "cancel", "terminate")
# Client applications whose sessions are maintenance or backup work: never selected.
MAINTENANCE_APPS = ("pg_dump", "pg_dumpall", "pg_restore", "pg_basebackup", "vacuumdb", "reindexdb", "clusterdb", "ner11.ops")
_MAINTENANCE_QUERY_RE = re.compile(
    r"^\s*(VACUUM|ANALYZE|ANALYSE|REINDEX|CLUSTER|CHECKPOINT|CREATE\s+(UNIQUE\s+)?INDEX|COPY\b.*\bTO\s+STDOUT)",
    re.I | re.S,
)
STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)", "fastpath function call", "disabled")

DEFAULTS = {
    # DESIGN section 4 / runbook b.7 and d.4: idle 30 min, running 5 min, 80 % of max_connections.
    "idle_seconds": 1800,
    "running_seconds": 300,
    # A transaction left open holds its locks and snapshot: 5 min (the stack's server-side
    # idle_in_transaction_session_timeout of the runbooks is 60 s, a.5).
    "idle_in_transaction_seconds": 300,
    # A blocker is selected when a session has waited on it at least this long.
    "blocked_seconds": 60,
    "utilisation_warn_percent": 80,
    "query_chars": 200,
    "cancel_wait_seconds": 5,
}


class SessionsError(Exception):
    """Invalid input or a failed query; the message names the cause and the fix."""


# -- masking -------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<comment_line>--[^\n]*)
  | (?P<comment_block>/\*.*?(\*/|$))
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?(\$(?P=tag)?\$|$))
  | (?P<estring>[Ee]'(?:[^'\\]|\\.|'')*('|$))
  | (?P<string>[BbXxNn]?'(?:[^']|'')*('|$))
  | (?P<ident>"(?:[^"]|"")*("|$))
  | (?P<param>\$[0-9]+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<number>[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?)
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.S | re.X,
)

_KINDS = ("comment_line", "comment_block", "dollar", "estring", "string", "ident", "param", "word", "number", "space", "other")


def mask_query(text, limit=DEFAULTS["query_chars"]):
    """The statement with every literal (string, dollar-quoted, number) as ``?``, comments
    dropped, whitespace collapsed, cut to ``limit`` characters (``...`` marks a cut).

    An unterminated literal (a statement cut by ``track_activity_query_size``) is masked to
    its end, so nothing after an opening quote is ever shown.
    """
    if text is None:
        return None
    out = []
    for match in _TOKEN_RE.finditer(str(text)):
        kind = next(k for k in _KINDS if match.group(k) is not None)
        if kind in ("comment_line", "comment_block"):
            out.append(" ")
        elif kind in ("dollar", "estring", "string", "number"):
            out.append("?")
        elif kind == "space":
            out.append(" ")
        else:
            out.append(match.group(0))
    masked = re.sub(r"\s+", " ", "".join(out)).strip()
    limit = max(int(limit), 8)
    if len(masked) > limit:
        masked = masked[: limit - 3].rstrip() + "..."
    return masked


# -- input ---------------------------------------------------------------------


def validate(params):
    """Check and complete the options; returns a new dict. Raises SessionsError."""
    p = dict(DEFAULTS)
    p.update({k: v for k, v in params.items() if v is not None})
    db = p.get("db_name")
    if not is_name(db):
        raise SessionsError("db_name %r is not a database name; set db_name to the stack's database (e.g. ner11_db)" % db)
    for key in ("idle_seconds", "running_seconds", "idle_in_transaction_seconds", "blocked_seconds", "cancel_wait_seconds"):
        if int(p[key]) < 0:
            raise SessionsError("%s must be 0 or more seconds, got %s" % (key, p[key]))
        p[key] = int(p[key])
    if not 1 <= int(p["utilisation_warn_percent"]) <= 100:
        raise SessionsError("utilisation_warn_percent must be between 1 and 100, got %s" % p["utilisation_warn_percent"])
    rules = list(p.get("select") or [])
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise SessionsError("select names unknown rule(s) %s; use %s" % (", ".join(unknown), ", ".join(RULES)))
    p["select"] = rules
    action = p.get("action") or "report"
    if action not in ACTIONS:
        raise SessionsError("action must be one of %s, got %r" % (", ".join(ACTIONS), action))
    p["action"] = action
    p["application_names"] = [str(a) for a in (p.get("application_names") or [])]
    p["users"] = [str(u) for u in (p.get("users") or [])]
    p["protect_application_names"] = [str(a) for a in (p.get("protect_application_names") or [])]
    if action != "report" and not rules:
        raise SessionsError(
            "action=%s needs at least one rule in select (%s): nothing is ended without a rule" % (action, ", ".join(RULES))
        )
    return p


def confirm_problem(params, check_mode):
    """Why an action may not run (None when it may): it needs confirm equal to db_name."""
    if params["action"] == "report" or check_mode:
        return None
    if params.get("confirm") != params["db_name"]:
        return "action=%s ends sessions on %s: set confirm=%s to allow it (nothing was changed)" % (
            params["action"],
            params["db_name"],
            params["db_name"],
        )
    return None


# -- snapshot ------------------------------------------------------------------

SNAPSHOT_SQL = """
SELECT json_build_object(
  'self_pid', pg_backend_pid(),
  'server_version', current_setting('server_version'),
  'max_connections', current_setting('max_connections')::int,
  'reserved_connections', current_setting('superuser_reserved_connections')::int,
  'sessions', COALESCE((
    SELECT json_agg(json_build_object(
      'pid', a.pid,
      'datname', a.datname,
      'usename', a.usename,
      'application_name', a.application_name,
      'client_addr', host(a.client_addr),
      'backend_type', a.backend_type,
      'state', a.state,
      'wait_event_type', a.wait_event_type,
      'wait_event', a.wait_event,
      'backend_age_s', round(extract(epoch FROM now() - a.backend_start)::numeric, 1),
      'xact_age_s', round(extract(epoch FROM now() - a.xact_start)::numeric, 1),
      'query_age_s', round(extract(epoch FROM now() - a.query_start)::numeric, 1),
      'state_age_s', round(extract(epoch FROM now() - a.state_change)::numeric, 1),
      'state_change_us', (extract(epoch FROM a.state_change) * 1000000)::bigint,
      'blocked_by', pg_blocking_pids(a.pid),
      'query', left(a.query, 4000)) ORDER BY a.pid)
    FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid()), '[]'::json),
  'deadlocks', COALESCE((SELECT json_object_agg(datname, deadlocks) FROM pg_stat_database
                         WHERE datname IS NOT NULL), '{}'::json),
  'pending_restart', COALESCE((SELECT json_agg(name ORDER BY name) FROM pg_settings WHERE pending_restart), '[]'::json)
)
"""


def parse_snapshot(rows):
    """The JSON document of SNAPSHOT_SQL from psql's rows."""
    if not rows or not rows[0] or not rows[0][0]:
        raise SessionsError("the session snapshot returned nothing: check that PostgreSQL answers (ner11.ops.ner_health)")
    try:
        return json.loads(rows[0][0])
    except ValueError:
        raise SessionsError("the session snapshot was not JSON (%r...): check the psql client" % rows[0][0][:80]) from None


def _protected(session, params):
    """Why a session may never be ended (None when it may)."""
    if session.get("backend_type") != "client backend":
        return "not a client session (%s)" % (session.get("backend_type") or "unknown")
    app = session.get("application_name") or ""
    if app in MAINTENANCE_APPS or app in params["protect_application_names"]:
        return "maintenance or backup application (%s)" % app
    if app.startswith("pg_sessions") or app.startswith("ner11.ops"):
        return "this collection's own session"
    if _MAINTENANCE_QUERY_RE.match(session.get("query") or "") and session.get("state") == "active":
        return "maintenance statement running"
    return None


def _in_scope(session, params):
    if session.get("datname") != params["db_name"]:
        return False
    if params["application_names"] and (session.get("application_name") or "") not in params["application_names"]:
        return False
    return not (params["users"] and (session.get("usename") or "") not in params["users"])


def _age(value):
    return float(value) if value is not None else 0.0


def analyse(snapshot, params):
    """Counts, utilisation, blocking pairs and the sessions each rule selects.

    Returns a dict ready for the module result (without the action's outcome).
    """
    sessions = snapshot.get("sessions") or []
    by_pid = {s["pid"]: s for s in sessions}
    clients = [s for s in sessions if s.get("backend_type") == "client backend"]
    # The caller's own connection is a client too (it counts against max_connections).
    total_clients = len(clients) + 1
    counts = {state: 0 for state in STATES}
    for s in clients:
        key = s.get("state") or "unknown"
        counts[key] = counts.get(key, 0) + 1
    counts["active"] += 1
    counts = {k: v for k, v in counts.items() if v}
    max_conn = int(snapshot.get("max_connections") or 0)
    utilisation = round(100.0 * total_clients / max_conn, 1) if max_conn else 100.0
    warn_at = params["utilisation_warn_percent"]
    pool_status = "fail" if utilisation >= 95 else ("warn" if utilisation > warn_at else "pass")

    blocking_pairs = []
    blocked_wait = {}
    for s in sessions:
        for blocker in s.get("blocked_by") or []:
            b = by_pid.get(blocker, {})
            waited = _age(s.get("query_age_s"))
            blocking_pairs.append(
                {
                    "blocked_pid": s["pid"],
                    "blocked_user": s.get("usename"),
                    "blocked_application": s.get("application_name"),
                    "blocked_query": mask_query(s.get("query"), params["query_chars"]),
                    "blocked_waiting_s": waited,
                    "blocking_pid": blocker,
                    "blocking_user": b.get("usename"),
                    "blocking_application": b.get("application_name"),
                    "blocking_state": b.get("state"),
                    "blocking_query": mask_query(b.get("query"), params["query_chars"]),
                }
            )
            blocked_wait[blocker] = max(blocked_wait.get(blocker, 0.0), waited)
    blocked_pids = {s["pid"] for s in sessions if s.get("blocked_by")}

    listed = []
    selected = []
    for s in sessions:
        state = s.get("state")
        rules = []
        if state in ("idle in transaction", "idle in transaction (aborted)"):
            if _age(s.get("state_age_s")) > params["idle_in_transaction_seconds"]:
                rules.append("idle_in_transaction")
        elif state == "idle":
            if _age(s.get("state_age_s")) > params["idle_seconds"]:
                rules.append("idle")
        elif state == "active" and _age(s.get("query_age_s")) > params["running_seconds"]:
            rules.append("running")
        # A root blocker (not itself waiting) that kept someone waiting long enough.
        if s["pid"] in blocked_wait and s["pid"] not in blocked_pids and blocked_wait[s["pid"]] >= params["blocked_seconds"]:
            rules.append("blocking")
        matched = [r for r in rules if r in params["select"]]
        protected = _protected(s, params)
        entry = {
            "pid": s["pid"],
            "datname": s.get("datname"),
            "usename": s.get("usename"),
            "application_name": s.get("application_name"),
            "client_addr": s.get("client_addr"),
            "backend_type": s.get("backend_type"),
            "state": state,
            "wait_event_type": s.get("wait_event_type"),
            "wait_event": s.get("wait_event"),
            "backend_age_s": s.get("backend_age_s"),
            "xact_age_s": s.get("xact_age_s"),
            "query_age_s": s.get("query_age_s"),
            "state_age_s": s.get("state_age_s"),
            "blocked_by": list(s.get("blocked_by") or []),
            "query": mask_query(s.get("query"), params["query_chars"]),
            "over_threshold": rules,
            "protected": protected,
        }
        if s.get("backend_type") == "client backend":
            listed.append(entry)
        if matched and not protected and _in_scope(s, params):
            selected.append(
                {
                    "pid": s["pid"],
                    "rules": matched,
                    "state": state,
                    "state_change_us": s.get("state_change_us"),
                    "usename": s.get("usename"),
                    "application_name": s.get("application_name"),
                    "age_s": _age(s.get("query_age_s") if state == "active" else s.get("state_age_s")),
                    "query": entry["query"],
                }
            )

    deadlocks = snapshot.get("deadlocks") or {}
    findings = []
    if pool_status != "pass":
        findings.append("%d of %d connection slots in use (%s%%, above %d%%)" % (total_clients, max_conn, utilisation, warn_at))
    over = {}
    for entry in listed:
        for rule in entry["over_threshold"]:
            over[rule] = over.get(rule, 0) + 1
    for rule in RULES:
        if over.get(rule):
            findings.append("%d session(s) over the %s threshold" % (over[rule], rule.replace("_", " ")))
    if blocking_pairs:
        findings.append("%d session(s) waiting on a lock held by another" % len(blocked_pids))
    if deadlocks.get(params["db_name"]):
        findings.append(
            "%d deadlock(s) recorded on %s since the statistics reset" % (deadlocks[params["db_name"]], params["db_name"])
        )
    if snapshot.get("pending_restart"):
        findings.append("settings waiting for a PostgreSQL restart: %s" % ", ".join(snapshot["pending_restart"]))
    return {
        "server_version": snapshot.get("server_version"),
        "max_connections": max_conn,
        "reserved_connections": snapshot.get("reserved_connections"),
        "connections": total_clients,
        "counts": counts,
        "utilisation_percent": utilisation,
        "pool_status": pool_status,
        "sessions": listed,
        "blocking": blocking_pairs,
        "selected": selected,
        "deadlocks": deadlocks,
        "deadlocks_db": int(deadlocks.get(params["db_name"]) or 0),
        "pending_restart": list(snapshot.get("pending_restart") or []),
        "findings": findings,
    }


# -- action --------------------------------------------------------------------


def _match_sql(entries):
    """(pid, state_change) pairs as a VALUES list: a session that moved on is not matched."""
    return ", ".join("(%d, %d::bigint)" % (int(e["pid"]), int(e["state_change_us"] or 0)) for e in entries)


def signal_sql(function, entries, db_name):
    """One statement sending ``function`` (pg_cancel_backend / pg_terminate_backend) to the
    sessions in ``entries`` that are still in the state they were selected in."""
    if function not in ("pg_cancel_backend", "pg_terminate_backend"):
        raise SessionsError("unknown signal function %r" % function)
    return (
        "SELECT a.pid, %s(a.pid) FROM pg_stat_activity a"
        " JOIN (VALUES %s) AS t(pid, changed) ON t.pid = a.pid"
        " WHERE a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'"
        " AND a.datname = %s"
        " AND (extract(epoch FROM a.state_change) * 1000000)::bigint = t.changed"
        % (function, _match_sql(entries), quote_literal(db_name))
    )


def _signalled(rows):
    return sorted(int(r[0]) for r in rows or [] if len(r) > 1 and r[1] == "t")


def _alive_sql(pids):
    return "SELECT pid FROM pg_stat_activity WHERE pid IN (%s)" % ", ".join(str(int(p)) for p in pids)


def _empty(items):
    return not items


def apply(target, analysis, params, check_mode, sleep=time.sleep, clock=time.monotonic):
    """Cancel/terminate the selected sessions. Returns the action's result keys.

    ``report``: nothing. ``cancel``: pg_cancel_backend on the selected running sessions
    (idle ones have nothing to cancel). ``terminate``: running sessions are cancelled first
    and terminated only when still running the same statement after ``cancel_wait_seconds``;
    idle and idle-in-transaction sessions are terminated.
    """
    db = params["db_name"]
    selected = analysis["selected"]
    running = [e for e in selected if e["state"] == "active"]
    idle = [e for e in selected if e["state"] != "active"]
    result = {"cancelled": [], "terminated": [], "left_alone": [], "queries": []}
    if params["action"] == "report" or not selected:
        return result
    if check_mode:
        result["cancelled"] = sorted(e["pid"] for e in running)
        if params["action"] == "terminate":
            result["terminated"] = sorted(e["pid"] for e in idle)
        else:
            result["left_alone"] = sorted(e["pid"] for e in idle)
        return result
    try:
        _signal(target, db, params, running, idle, selected, result, sleep, clock)
    except Exception as exc:
        # A failure after some sessions were signalled: the run changed them (reported with the error).
        if result["cancelled"] or result["terminated"]:
            exc.changed = True
            exc.partial = {"cancelled": result["cancelled"], "terminated": result["terminated"]}
        raise
    return result


def _signal(target, db, params, running, idle, selected, result, sleep, clock):
    """``apply``'s changes (not in check mode), filling ``result`` as they happen."""
    if running:
        sql = signal_sql("pg_cancel_backend", running, db)
        result["queries"].append(sql)
        result["cancelled"] = _signalled(target.query(sql, db))
    if params["action"] == "cancel":
        result["left_alone"] = sorted(e["pid"] for e in idle)
        return result
    to_end = list(idle)
    if result["cancelled"]:
        # A cancelled statement moves its session on (new state_change); those still on the
        # same statement after the wait did not honour the cancel: terminate them.
        state = {"still": list(running)}

        def probe():
            rows = target.query(
                "SELECT pid, (extract(epoch FROM state_change) * 1000000)::bigint FROM pg_stat_activity WHERE pid IN (%s)"
                % ", ".join(str(int(e["pid"])) for e in state["still"]),
                db,
            )
            now = {int(r[0]): int(r[1] or 0) for r in rows or [] if len(r) > 1}
            state["still"] = [e for e in state["still"] if now.get(int(e["pid"])) == int(e["state_change_us"] or 0)]
            return state["still"]

        still, _n, _s = poll(probe, _empty, params["cancel_wait_seconds"], 0.5, clock, sleep, delay_first=True)
        to_end += still
    else:
        to_end += running
    if to_end:
        sql = signal_sql("pg_terminate_backend", to_end, db)
        result["queries"].append(sql)
        result["terminated"] = _signalled(target.query(sql, db))
        # Backends exit a moment after the signal: wait so the next measurement (and a re-run)
        # no longer sees them.
        gone = {"alive": list(result["terminated"])}

        def alive():
            gone["alive"] = [int(r[0]) for r in target.query(_alive_sql(gone["alive"]), db) or []]
            return gone["alive"]

        if gone["alive"]:
            poll(alive, _empty, 10, 0.2, clock, sleep)
    acted = set(result["cancelled"]) | set(result["terminated"])
    result["left_alone"] = sorted(e["pid"] for e in selected if e["pid"] not in acted)
    return result


def run(target, params, check_mode, sleep=time.sleep, clock=time.monotonic):
    """Snapshot, analyse, act; the whole module result (``changed`` included)."""
    params = validate(params)
    problem = confirm_problem(params, check_mode)
    if problem:
        raise SessionsError(problem)
    snapshot = parse_snapshot(target.query(SNAPSHOT_SQL, params["db_name"]))
    result = analyse(snapshot, params)
    outcome = apply(target, result, params, check_mode, sleep=sleep, clock=clock)
    result.update(outcome)
    result["changed"] = bool(outcome["cancelled"] or outcome["terminated"])
    for entry in result["selected"]:
        entry.pop("state_change_us", None)
    return result

# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Database health checks (db:connect, db:query, db:pool, db:canary) from one psql run.

DESIGN section 5: an authenticated ``SELECT 1`` (pg_isready is not enough); G71:
the pool is judged relative to ``max_connections``; the canary tables must exist
(0 rows is fine). The SQL is read-only and every output row starts with its key,
so one run gives all four checks; evaluation is pure (unit-tested on text).
"""

from __future__ import annotations

from ansible_collections.ner11.ops.plugins.module_utils.health_result import fmt_num as _fmt_num
from ansible_collections.ner11.ops.plugins.module_utils.health_result import make_check
from ansible_collections.ner11.ops.plugins.module_utils.identifiers import quote_literal, quote_table
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import db_error_hint
from ansible_collections.ner11.ops.plugins.module_utils.runner import last_line as _last_line

DEFAULT_CANARY_TABLES = ("vendor_equipment", "threat_intelligence", "compliance_frameworks")


_CANARY_SQL = (
    "SELECT 'canary', t.name, CASE WHEN to_regclass(t.q) IS NULL THEN '-' ELSE"
    " (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %s', t.q), false, true, '')))[1]::text"
    " END FROM (VALUES @TABLES@) AS t(name, q);"
)


def db_sql(canary_tables, statement_timeout_ms):
    """The read-only SQL of the db checks; every row starts with its key."""
    # Count only tables that exist (a missing one must not abort the other checks). Each table is
    # a validated name or schema.name (identifiers.is_table), passed as its name and its quoted form.
    rows = ",".join("(%s, %s)" % (quote_literal(t), quote_literal(quote_table(t))) for t in canary_tables)
    canary = _CANARY_SQL.replace("@TABLES@", rows) if rows else ""
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

#!/usr/bin/env python3
"""DR recovery time and startup, measured by running the playbooks on a dedicated bench stack.

On a new stack (project ``bdr<hex>``, free ports, labelled, removed at the end), on the
embedded local inventory with the stack's own variables, backups under
``bench/data/<project>/backups``:

1. ``deploy.yml`` from no stack (images present): wall time.
2. ``--reps`` times, in this order: ``shutdown.yml`` (frontend -> api -> CHECKPOINT -> postgres),
   ``startup.yml`` from the fully stopped stack (each service gated), ``startup.yml`` on the
   running stack (changed=0 required): wall times, and the startup's own ``total_s``
   (``ner11_startup``).
3. ``demo.yml`` once (seed -> backup -> verify -> lose the database container and volume ->
   ``dr_restore.yml`` -> health -> the seeded rows back): wall time, and the RTO the DR role
   publishes itself (``ner11_dr_restore.rto_s``: start of the DR play to a passing health check).

A run counts when it ends rc=0 (and changed=0 for the idempotent startup); a failed run is
printed with its first failed task and left out of the median. startup.yml and shutdown.yml
run with the integration tests' disk/memory floors (printed). The runbook's expectations
(b.3: 3-5 min for a startup) are quoted from the runbook, not measured.

    .venv/bin/python bench/dr_startup.py [--reps 3] [--skip-demo] [--keep]

Writes the "## DR recovery time and startup" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import bench_stack, load, median, run_playbook, timed, write_section  # noqa: E402

SECTION = "DR recovery time and startup"
STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}
SMALL = {"startup_min_free_disk_gb": 1, "startup_min_available_memory_gb": 0.25, "startup_disk_fail_percent": 99}


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def first_failure(res):
    for name, r in res.tasks():
        if (r.get("failed") and not r.get("ignore_errors")) or r.get("unreachable"):
            return "%s: %s" % (name, " ".join(str(r.get("msg", "")).split())[:240])
    return "rc=%s: %s" % (res.rc, (res.stderr or res.stdout)[-240:])


class Rows:
    """Measured runs per row, in the order the rows were first measured."""

    def __init__(self):
        self.rows = {}

    def add(self, key, what, conditions, seconds, ok, error=None, extra=None):
        row = self.rows.setdefault(key, {"what": what, "conditions": conditions, "runs": []})
        row["runs"].append({"s": seconds, "ok": ok, "error": error, "load": load(), "extra": extra})


def play(rows, key, what, conditions, playbook, extra_vars, need_unchanged=False):
    wall, res = timed(run_playbook, playbook, extra_vars, env=STATS, timeout=3600)
    error = None if res.rc == 0 else first_failure(res)
    if error is None and need_unchanged and res.changed():
        error = "changed=%d: %s" % (res.changed(), res.changed_tasks()[:5])
    rows.add(key, what, conditions, wall, error is None, error)
    log("  %s: %.1f s %s" % (what, wall, error or "ok"))
    return res


def section_lines(rows, reps, argv, project, loads):
    lines = [
        "Machine: %d cores, Python %s. Run %s (bench stack `%s`), 1-minute load %.1f at the start, %.1f at the end. "
        "Command: `.venv/bin/python %s`; %d repetition(s) of the shutdown/startup cycle, the demo once. "
        "startup.yml and shutdown.yml run with %s. Median of the counted runs (rc=0; changed=0 for the idempotent "
        "startup); every figure below was measured in this run."
        % (
            os.cpu_count(),
            platform.python_version(),
            time.strftime("%Y-%m-%d %H:%M"),
            project,
            loads[0],
            loads[1],
            argv,
            reps,
            ", ".join("`%s=%s`" % kv for kv in SMALL.items()),
        ),
        "",
        "| what | median s | runs counted | runs s | median load | conditions |",
        "|---|---:|---:|---|---:|---|",
    ]
    errors = []
    for row in rows.rows.values():
        runs = row["runs"]
        good = [r["s"] for r in runs if r["ok"]]
        med = median(good)
        lines.append(
            "| %s | %s | %d of %d | %s | %.1f | %s |"
            % (
                row["what"],
                "%.1f" % med if med is not None else "failed",
                len(good),
                len(runs),
                ", ".join("%.1f" % r["s"] for r in runs),
                median(r["load"] for r in runs) or 0.0,
                row["conditions"],
            )
        )
        errors += ["- %s, run not counted: %s" % (row["what"], r["error"].replace("|", "\\|")) for r in runs if r["error"]]
    lines.append("")
    if errors:
        lines += errors + [""]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="shutdown/startup cycles (default 3)")
    ap.add_argument("--skip-demo", action="store_true", help="leave out demo.yml (and its DR RTO)")
    ap.add_argument("--keep", action="store_true", help="keep the bench stack")
    args = ap.parse_args()
    argv = " ".join(["bench/dr_startup.py"] + sys.argv[1:])
    with bench_stack("bdr", args.keep, deploy=False) as (stack, work):
        os.makedirs(os.path.join(work, "logs"), exist_ok=True)
        ev = dict(stack.vars, ner11_backup_dir=os.path.join(work, "backups"), **SMALL)
        rows = Rows()
        loads = [load()]
        log("deploy.yml from no stack (%s)" % stack.project)
        res = play(rows, "deploy", "`deploy.yml` from no stack (images present; network, volumes, 3 containers, each gated)",
                   "-", "playbooks/deploy.yml", stack.vars)  # fmt: skip
        if res.rc != 0:
            sys.exit("deploying the bench stack failed: %s" % res.explain())
        for rep in range(args.reps):
            log("cycle %d of %d" % (rep + 1, args.reps))
            play(rows, "shutdown", "`shutdown.yml` (frontend -> api -> CHECKPOINT -> postgres, logs saved)", "running stack",
                 "playbooks/shutdown.yml", dict(ev, service_log_dir=os.path.join(work, "logs")))  # fmt: skip
            cold = play(rows, "cold", "`startup.yml` from a fully stopped stack (postgres -> api -> frontend, each gated)",
                        "runbook b.3: 3-5 min", "playbooks/startup.yml", ev)  # fmt: skip
            total = (cold.custom_stats.get("ner11_startup") or {}).get("localhost", {}).get("total_s")
            if total is not None and cold.rc == 0:
                rows.add("cold_total", "the same startup's own `total_s` (ner11_startup)", "role start to summary",
                         float(total), True)  # fmt: skip
            play(rows, "warm", "`startup.yml` on a running healthy stack (changed=0)", "-", "playbooks/startup.yml", ev,
                 need_unchanged=True)  # fmt: skip
        if not args.skip_demo:
            log("demo.yml")
            demo = play(rows, "demo", "`demo.yml` on the deployed stack: seed -> backup -> verify -> lose the DB -> DR -> proof",
                        "-", "playbooks/demo.yml", dict(ev, ner11_confirm=stack.model["db_name"]))  # fmt: skip
            dr = (demo.custom_stats.get("ner11_dr_restore") or {}).get("localhost", {})
            if demo.rc == 0 and dr.get("rto_s") is not None:
                rows.add("rto", "DR RTO inside that demo (`dr_restore.yml`, its own `rto_s`)",
                         "start of the DR play to a passing health check", float(dr["rto_s"]), True)  # fmt: skip
        loads.append(load())
        lines = section_lines(rows, args.reps, argv, stack.project, loads)
        for line in lines:
            print(line)
        write_section(SECTION, lines)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Playbook overhead: health.yml and idempotent startup.yml against a one-task no-op playbook.

Every method is one ``ansible-playbook`` run against the running bench stack, interleaved
(no-op, health.yml, startup.yml, deploy.yml, then again), on 1 host by default: inventory
aliases of localhost (``bench-hNN``, ``ansible_connection: local``, the venv's Python) in group
``ner11`` only, so each host manages all three services. With more than one host all aliases
point at the SAME stack (N times the checks against one machine), an upper bound for a fleet.

* no-op: one play, ``gather_facts: false``, one ``ansible.builtin.ping`` task (the cheapest
  task that runs a module on the host), written to the work directory at run time.
* ``playbooks/health.yml`` with its defaults.
* ``playbooks/startup.yml`` on the running stack (changed=0 required), with the disk/memory
  floors lowered to the integration tests' values (printed).
* ``playbooks/deploy.yml`` on the running stack (changed=0 required).

A run counts when it ends rc=0 with changed=0 and no failure on every host; a failed run is
printed with its first failed task and left out of the median. The ratio is the median wall
time of the playbook over the median of the no-op at the same host count. The goals of issue 16
(health.yml <= 2x, startup.yml <= 3x of the no-op, one host) are compared with the measured
ratios. The slowest tasks of the last counted run of each playbook come from the
``ansible.posix.json`` callback's task durations (first host).

    .venv/bin/python bench/playbook_overhead.py [--hosts 1] [--reps 5] [--keep]

Standalone it deploys its own stack and writes the "## Playbook overhead" section of
bench/RESULTS.md; bench/run.py calls ``run`` and ``section_lines`` on its bench stack.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import BIN, DATA, bench_stack, load, median, run_playbook, timed, write_section  # noqa: E402

NOOP = "noop"
PLAYBOOKS = [NOOP, "playbooks/health.yml", "playbooks/startup.yml", "playbooks/deploy.yml"]
GOALS = {"playbooks/health.yml": 2.0, "playbooks/startup.yml": 3.0}
# The integration tests' floors (tests/integration/test_startup.py): small CI machines.
SMALL = {"startup_min_free_disk_gb": 1, "startup_min_available_memory_gb": 0.25, "startup_disk_fail_percent": 99}
TOP_TASKS = 8


def write_inventory(stack, path, nhosts):
    hosts = {"bench-h%02d" % i: {} for i in range(1, nhosts + 1)}
    inv = {
        "all": {
            "vars": dict(
                {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": os.path.join(BIN, "python"),
                    "ner11_stack": stack.vars["ner11_stack"],
                    "ner11_db_password": stack.password,
                },
                **SMALL,
            ),
            "children": {"ner11": {"hosts": hosts}},
        }
    }
    with open(path, "w") as fh:
        json.dump(inv, fh)  # JSON is YAML
    return list(hosts)


def write_noop(workdir):
    path = os.path.join(workdir, "noop.yml")
    play = [{"name": "No-op", "hosts": "ner11", "gather_facts": False, "tasks": [{"name": "Ping", "ansible.builtin.ping": {}}]}]
    with open(path, "w") as fh:
        json.dump(play, fh)
    return path


def failure_summary(res, hosts):
    """The first failed task per failing host (max 3 hosts), as measured in this run."""
    out = []
    for h in hosts:
        for name, r in res.tasks(h):
            if (r.get("failed") and not r.get("ignore_errors")) or r.get("unreachable"):
                out.append("%s: %s: %s" % (h, name, " ".join(str(r.get("msg", "")).split())[:240]))
                break
        if len(out) >= 3:
            break
    return "; ".join(out) or "rc=%s, no failed task in the JSON output: %s" % (res.rc, (res.stderr or res.stdout)[-300:])


def _ts(text):
    return datetime.datetime.fromisoformat(text.rstrip("Z"))


def task_durations(res, host):
    """[(seconds, task name)] of one host from the json callback, in run order."""
    out = []
    for play in res.data.get("plays", []):
        for task in play.get("tasks", []):
            if host not in task.get("hosts", {}):
                continue
            dur = task["task"].get("duration") or {}
            if dur.get("start") and dur.get("end"):
                out.append(((_ts(dur["end"]) - _ts(dur["start"])).total_seconds(), task["task"]["name"]))
    return out


def one_run(playbook, inventory, hosts, forks):
    wall, res = timed(run_playbook, playbook, inventory=inventory, env={"ANSIBLE_FORKS": str(forks)}, timeout=3600)
    changed = sum(res.stats.get(h, {}).get("changed", 0) for h in hosts)
    failed = [h for h in hosts if res.failures(h) or h not in res.stats]
    out = {"s": wall, "changed": changed, "failed_hosts": len(failed), "load": load(), "tasks": task_durations(res, hosts[0])}
    if res.rc != 0 or failed:
        os.makedirs(DATA, exist_ok=True)
        with open(os.path.join(DATA, "failed-%s-%d.log" % (os.path.basename(playbook), len(hosts))), "w") as fh:
            fh.write(res.stdout + "\n--- stderr ---\n" + res.stderr)
        out["error"] = "%d of %d hosts failed; %s" % (len(failed), len(hosts), failure_summary(res, hosts))
    elif changed:
        out["error"] = "changed=%d on a running stack: %s" % (changed, res.changed_tasks(hosts[0])[:5])
    return out


def run(stack, workdir, host_counts, reps, log=print, deploy_reps=None):
    """{playbook: {n: {...}}}, interleaved by repetition and host count; plus the loads."""
    deploy_reps = reps if deploy_reps is None else deploy_reps
    os.makedirs(workdir, exist_ok=True)
    noop = write_noop(workdir)
    invs = {}
    for n in host_counts:
        path = os.path.join(workdir, "inventory-%d.yml" % n)
        invs[n] = (path, write_inventory(stack, path, n))
    out = {p: {n: [] for n in host_counts} for p in PLAYBOOKS}
    loads = [load()]
    for rep in range(reps):
        for n in host_counts:
            for playbook in PLAYBOOKS:
                if playbook.endswith("deploy.yml") and rep >= deploy_reps:
                    continue
                r = one_run(noop if playbook == NOOP else playbook, invs[n][0], invs[n][1], max(5, n))
                out[playbook][n].append(r)
                log(
                    "  rep %d %s %d host(s): %.1f s changed=%d failed hosts=%d load %.1f %s"
                    % (rep + 1, playbook, n, r["s"], r["changed"], r["failed_hosts"], r["load"], r.get("error", ""))
                )
    loads.append(load())
    summary = {}
    for p, d in out.items():
        summary[p] = {}
        for n, rs in d.items():
            good = [r for r in rs if "error" not in r]
            summary[p][n] = {
                "s": median(r["s"] for r in good),
                "all": [r["s"] for r in rs],
                "ok": len(good),
                "load": median(r["load"] for r in rs),
                "errors": [r["error"] for r in rs if r.get("error")],
                "tasks": good[-1]["tasks"] if good else [],
            }
    return summary, loads


def section_lines(summary, loads, reps, host_counts, deploy_reps=None):
    deploy_reps = reps if deploy_reps is None else deploy_reps
    lines = [
        "Each playbook against the running bench stack, %d run(s) per playbook and host count (deploy.yml %d), "
        "interleaved (no-op, health.yml, startup.yml, deploy.yml, again); median of the counted runs; `forks` = max(5, hosts); "
        "1-minute load %.1f at the start, %.1f at the end. The no-op is one play with one `ansible.builtin.ping` task. "
        "startup.yml runs with %s. A run counts when it ends rc=0, changed=0, no failed host."
        % (reps, deploy_reps, loads[0], loads[1], ", ".join("`%s=%s`" % kv for kv in SMALL.items())),
        "",
        "| playbook | hosts | median s | x no-op | goal | runs counted | median load | runs s |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    errors = []
    for n in host_counts:
        base = summary[NOOP][n]["s"]
        for p in PLAYBOOKS:
            d = summary[p][n]
            ratio = d["s"] / base if d["s"] and base else None
            goal = "-"
            if p in GOALS and n == 1:
                goal = "<= %.0fx: %s" % (GOALS[p], "n/a" if ratio is None else ("met" if ratio <= GOALS[p] else "MISSED"))
            lines.append(
                "| %s | %d | %s | %s | %s | %d of %d | %.1f | %s |"
                % (
                    "no-op (1 ping task)" if p == NOOP else "`%s`" % p,
                    n,
                    "%.2f" % d["s"] if d["s"] is not None else "failed",
                    "%.2f" % ratio if ratio is not None else "-",
                    goal,
                    d["ok"],
                    len(d["all"]),
                    d["load"] or 0.0,
                    ", ".join("%.2f" % v for v in d["all"]),
                )
            )
            errors += ["- `%s`, %d host(s), run not counted: %s" % (p, n, e.replace("|", "\\|")) for e in d["errors"]]
    lines.append("")
    if errors:
        lines += errors + [""]
    for p in PLAYBOOKS[1:3]:
        tasks = summary[p][host_counts[0]]["tasks"]
        if not tasks:
            continue
        total = sum(s for s, _ in tasks)
        top = sorted(tasks, reverse=True)[:TOP_TASKS]
        lines.append(
            "Slowest tasks of the last counted `%s` run (%d host(s), first host; %d tasks, %.2f s in tasks):"
            % (p, host_counts[0], len(tasks), total)
        )
        lines.append("")
        lines += ["| s | task |", "|---:|---|"]
        lines += ["| %.2f | %s |" % (s, name.replace("|", "\\|")) for s, name in top]
        lines.append("")
    return lines


NOTES = [
    "With more than one host, every alias points at the ONE bench stack: N hosts means N times the per-host",
    "checks (HTTP, psql, the Docker API) against the same containers on the same cores, on top of Ansible's",
    "per-host controller cost; a real fleet spreads the first part over N machines.",
    "",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", default="1", help="comma list of host counts (default 1)")
    ap.add_argument("--reps", type=int, default=5, help="runs per playbook and host count (default 5)")
    ap.add_argument("--deploy-reps", type=int, default=None, help="deploy.yml runs (default --reps)")
    ap.add_argument("--keep", action="store_true", help="keep the bench stack")
    args = ap.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    argv = " ".join(["bench/playbook_overhead.py"] + sys.argv[1:])
    with bench_stack("bplay", args.keep) as (stack, work):
        summary, loads = run(stack, os.path.join(work, "overhead"), counts, args.reps, deploy_reps=args.deploy_reps)
        header = "Machine: %d cores, Python %s. Run %s (bench stack `%s`). Command: `.venv/bin/python %s`." % (
            os.cpu_count(),
            platform.python_version(),
            time.strftime("%Y-%m-%d %H:%M"),
            stack.project,
            argv,
        )
        lines = [header, ""] + section_lines(summary, loads, args.reps, counts, args.deploy_reps) + NOTES
        for line in lines:
            print(line)
        write_section("Playbook overhead", lines)


if __name__ == "__main__":
    main()

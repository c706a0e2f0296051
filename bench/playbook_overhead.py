"""Playbook overhead: idempotent startup.yml / deploy.yml on a running stack, 1 vs 10 vs 50 hosts.

The hosts are inventory aliases of localhost (``bench-hNN``, ``ansible_connection: local``,
the venv's Python) in group ``ner11`` and in none of ner11_db/ner11_api/ner11_frontend, so
each host manages all three services — and they ALL point at the same bench stack. Every
host therefore really runs the whole role (docker inspect, health checks over HTTP and
psql, ...) against one stack; on a real fleet each host would talk to its own engine, so
these numbers are the controller's cost plus N times the checks against one 2-core box.
``forks: 50`` (``ANSIBLE_FORKS``). Each run must end with changed=0 and no failure on
every host; the wall time of ``ansible-playbook`` is the figure, median of ``reps``.
"""

from __future__ import annotations

import json
import os

from benchlib import BIN, DATA, load, median, run_playbook, timed

PLAYBOOKS = ["playbooks/startup.yml", "playbooks/deploy.yml"]


def write_inventory(stack, path, nhosts):
    hosts = {"bench-h%02d" % i: {} for i in range(1, nhosts + 1)}
    inv = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": os.path.join(BIN, "python"),
                "ner11_stack": stack.vars["ner11_stack"],
                "ner11_db_password": stack.password,
            },
            "children": {"ner11": {"hosts": hosts}},
        }
    }
    with open(path, "w") as fh:
        json.dump(inv, fh)  # JSON is YAML
    return list(hosts)


def failure_summary(res, hosts):
    """The first failed task per failing host (max 3 hosts), for the results table."""
    out = []
    for h in hosts:
        for name, r in res.tasks(h):
            if (r.get("failed") and not r.get("ignore_errors")) or r.get("unreachable"):
                out.append("%s: %s: %s" % (h, name, " ".join(str(r.get("msg", "")).split())[:240]))
                break
        if len(out) >= 3:
            break
    return "; ".join(out) or "rc=%s, no failed task in the JSON output: %s" % (res.rc, (res.stderr or res.stdout)[-300:])


def one_run(playbook, inventory, hosts, workdir):
    wall, res = timed(run_playbook, playbook, inventory=inventory, env={"ANSIBLE_FORKS": "50"}, timeout=3600)
    changed = sum(res.stats.get(h, {}).get("changed", 0) for h in hosts)
    failed = [h for h in hosts if res.failures(h) or h not in res.stats]
    if res.rc != 0 or failed:
        # keep the whole output for the post-mortem; the table reports the run as failed
        with open(os.path.join(DATA, "failed-%s-%d.log" % (os.path.basename(playbook), len(hosts))), "w") as fh:
            fh.write(res.stdout + "\n--- stderr ---\n" + res.stderr)
        error = "%d of %d hosts failed; %s" % (len(failed), len(hosts), failure_summary(res, hosts))
        return {"s": wall, "changed": changed, "failed_hosts": len(failed), "error": error}
    return {"s": wall, "changed": changed, "failed_hosts": 0}


def run(stack, workdir, host_counts, reps, log=print, deploy_reps=None):
    """{playbook: {n: {"s": median, "all": [...], "changed": sum}}}, interleaved by rep and size.

    ``deploy_reps`` (default ``reps``) limits the deploy.yml repetitions (its 50-host runs are long).
    """
    deploy_reps = reps if deploy_reps is None else deploy_reps
    os.makedirs(workdir, exist_ok=True)
    invs = {}
    for n in host_counts:
        path = os.path.join(workdir, "inventory-%d.yml" % n)
        invs[n] = (path, write_inventory(stack, path, n))
    out = {p: {n: [] for n in host_counts} for p in PLAYBOOKS}
    loads = [load()]
    for rep in range(reps):
        for playbook in PLAYBOOKS:
            if playbook.endswith("deploy.yml") and rep >= deploy_reps:
                continue
            for n in host_counts:
                log("  rep %d %s %d host(s)" % (rep + 1, playbook, n))
                r = one_run(playbook, invs[n][0], invs[n][1], workdir)
                out[playbook][n].append(r)
                log("    %.1f s changed=%d failed hosts=%d %s" % (r["s"], r["changed"], r["failed_hosts"], r.get("error", "")))
    loads.append(load())
    summary = {
        p: {
            n: {
                "s": median(r["s"] for r in rs if not r["failed_hosts"]),
                "all": [r["s"] for r in rs],
                "changed": sum(r["changed"] for r in rs),
                "errors": [r["error"] for r in rs if r.get("error")],
            }
            for n, rs in d.items()
        }
        for p, d in out.items()
    }
    return summary, loads


def section_lines(summary, loads, reps, host_counts, deploy_reps=None):
    deploy_reps = reps if deploy_reps is None else deploy_reps
    lines = [
        "Idempotent runs on the running bench stack; N inventory aliases of localhost "
        "(`ansible_connection: local`) that all point at the same stack, `forks: 50`; "
        "%d run(s) of startup.yml and %d of deploy.yml per host count, interleaved, median; load %.1f → %.1f "
        "(1-minute average at start → end). A run counts when it ends rc=0 with changed=0 and no failure on every "
        "host; failed runs are listed below the table and left out of the median." % (reps, deploy_reps, loads[0], loads[1]),
        "",
        "| playbook | "
        + " | ".join("%d host(s) s" % n for n in host_counts)
        + " | "
        + " | ".join("%d/1" % n for n in host_counts[1:])
        + " | runs s |",
        "|---|" + "---:|" * (2 * len(host_counts) - 1) + "---|",
    ]

    def cell(v, fmt="%.1f"):
        return fmt % v if v is not None else "failed"

    errors = []
    for p, d in summary.items():
        base = d[host_counts[0]]["s"]
        for n in host_counts:
            for e in d[n]["errors"]:
                errors.append("- `%s`, %d host(s), failed run: %s" % (p, n, e.replace("|", "\\|")))
        lines.append(
            "| `%s` | " % p
            + " | ".join(cell(d[n]["s"]) for n in host_counts)
            + " | "
            + " | ".join(cell(d[n]["s"] / base if d[n]["s"] and base else None, "%.2f") for n in host_counts[1:])
            + " | "
            + "; ".join("%d: %s" % (n, ", ".join("%.1f" % v for v in d[n]["all"]) or "-") for n in host_counts)
            + " |"
        )
    lines.append("")
    if errors:
        lines += errors + [""]
    return lines


NOTES = [
    "All hosts point at ONE stack: N hosts means N times the per-host work (docker inspect, HTTP and psql",
    "health checks) against the same containers on the same 2 cores, on top of Ansible's per-host",
    "controller cost (forks, templating, result callbacks). A real fleet spreads the first part over N",
    "machines, so these figures are an upper bound for the controller side.",
    "",
    "50 hosts × startup.yml: every alias runs the api health gate (`ner_health`, its checks concurrent)",
    "against the one bench API at the same time; the API's database pool runs dry (`api:db` reports 0",
    "connections, `api:latency` fails) and 40 of 50 hosts missed the 90 s gate (run 2026-11-29, full",
    "output in `bench/data/failed-startup.yml-50.log`). That is the cost of pointing 50 aliases at one",
    "2-core stack, not of Ansible's controller: deploy.yml on the same 50 aliases finished with changed=0.",
    "",
]

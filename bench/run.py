#!/usr/bin/env python3
"""Entry point of ``make bench``: backup/restore and playbook-overhead benchmarks (DESIGN.md §7).

Deploys a dedicated bench stack (project ``bench<hex>``, free ports, labelled), generates
the databases (bench/datagen.py), runs bench/backup_restore.py per size and
bench/playbook_overhead.py, writes the sections "## Backup and restore" and
"## Playbook overhead" of bench/RESULTS.md (other sections, e.g. "## Health check", are
kept), and removes the stack and its data. Then, each on its own stack and writing its own
section: bench/health_bench.py, bench/dr_startup.py, bench/maintenance_bench.py (``--scale 50 -n
3``) and bench/fleet_scale.py (``--reps 5 --variants cfg,standin``), unless ``--skip-health``,
``--skip-dr``, ``--skip-maintenance`` or ``--skip-fleet``.

    .venv/bin/python bench/run.py                     # every section, with the published options
    .venv/bin/python bench/run.py --smoke             # scale 1, 1 rep, 1/2 hosts, no maintenance/fleet; bench/data/RESULTS.smoke.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import backup_restore  # noqa: E402
import benchlib  # noqa: E402
import datagen  # noqa: E402
import playbook_overhead  # noqa: E402
from benchlib import DATA, RESULTS, Stack, load, run_module, timed, unique_project, write_section  # noqa: E402

SIZES = {"100MB": 5, "1GB": 50}


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100MB,1GB", help="comma list of %s" % ",".join(SIZES))
    ap.add_argument("--reps-small", type=int, default=3, help="repetitions at 100MB (default 3)")
    ap.add_argument("--reps-large", type=int, default=3, help="repetitions at 1GB (default 3)")
    ap.add_argument("--profiles", default=",".join(datagen.PROFILES), help="data profiles (%s)" % ",".join(datagen.PROFILES))
    ap.add_argument("--hosts", default="1", help="host counts of the overhead bench (comma list)")
    ap.add_argument("--overhead-reps", type=int, default=5, help="runs of each playbook per host count (median)")
    ap.add_argument("--deploy-reps", type=int, default=None, help="deploy.yml runs per host count (default --overhead-reps)")
    ap.add_argument("--skip-backup", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-health", action="store_true", help="do not run bench/health_bench.py")
    ap.add_argument("--skip-dr", action="store_true", help="do not run bench/dr_startup.py")
    ap.add_argument("--skip-maintenance", action="store_true", help="do not run bench/maintenance_bench.py")
    ap.add_argument("--skip-fleet", action="store_true", help="do not run bench/fleet_scale.py")
    ap.add_argument("--max-load", type=float, default=4.0, help="wait while the 1-minute load is above this")
    ap.add_argument("--wait-minutes", type=int, default=30, help="longest wait for the load to drop")
    ap.add_argument("--smoke", action="store_true", help="scale 1, 1 rep, hosts 1,2; results to bench/data/")
    ap.add_argument("--keep", action="store_true", help="keep the bench stack and data (debugging)")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.reps_small, args.reps_large, args.hosts, args.overhead_reps = "smoke", 1, 1, "1,2", 1
        args.skip_maintenance = args.skip_fleet = True
        args.skip_health, args.skip_dr, args.max_load = True, True, 1000
    return args


def main():
    args = parse()
    results = os.path.join(DATA, "RESULTS.smoke.md") if args.smoke else RESULTS
    sizes = {"smoke": 1} if args.smoke else {k: SIZES[k] for k in args.sizes.split(",")}
    waited, now = benchlib.wait_for_load(args.max_load, args.wait_minutes, log)
    log("load %.1f after waiting %.0f s (limit %.1f)" % (now, waited, args.max_load))
    load_note = "Waited %.0f s for the load to fall below %.1f%s." % (
        waited,
        args.max_load,
        ""
        if now <= args.max_load
        else " (it did not: the machine was shared with other test suites throughout; ratios come from interleaved runs)",
    )

    stack = Stack(unique_project("bench"))
    work = os.path.join(DATA, stack.project)
    os.makedirs(work, exist_ok=True)
    header = (
        "Machine: %d cores, %.0f GB RAM, Python %s, PostgreSQL 15 (ner11/postgres:ref) in a local container, "
        "host pg_dump %s. Run %s (bench stack `%s`). %s"
        % (
            os.cpu_count(),
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            platform.python_version(),
            subprocess.run(["pg_dump", "--version"], capture_output=True, text=True).stdout.split()[-3]
            if shutil.which("pg_dump")
            else "-",
            time.strftime("%Y-%m-%d %H:%M"),
            stack.project,
            load_note,
        )
    )
    try:
        log("deploying bench stack %s" % stack.project)
        stack.remove()
        res = stack.deploy()
        if res.rc != 0:
            raise RuntimeError("deploying the bench stack failed: %s" % res.explain())
        if not args.skip_backup:
            br_lines = [
                header,
                "",
                "Command: `%s` (`make bench` runs it with the defaults); methods: bench/README.md."
                % " ".join(["bench/run.py"] + sys.argv[1:]),
                "",
            ]
            noop, _ = timed(run_module, "ansible.builtin.ping", {})
            for label, scale in sizes.items():
                for profile in args.profiles.split(","):
                    l0 = load()
                    log("size %s (scale %d), %s data, load %.1f" % (label, scale, profile, l0))
                    source = datagen.generate(stack, scale, log, profile=profile)
                    log("  database %.0f MB %s" % (source["db_bytes"] / 1e6, source["rows"]))
                    bench = backup_restore.BackupRestoreBench(stack, os.path.join(work, label + profile), log)
                    reps = args.reps_large if label == "1GB" else args.reps_small
                    out = bench.run(source, reps)
                    bench.cleanup()
                    lines, _summary = backup_restore.section_lines(
                        label, source, out, benchlib.loads_text(l0, load()), reps, noop, profile
                    )
                    br_lines += lines
                    for line in lines:
                        print(line)
            br_lines += backup_restore.NOTES
            write_section("Backup and restore", br_lines, results)
        if not args.skip_overhead:
            counts = [int(n) for n in args.hosts.split(",")]
            log("playbook overhead, hosts %s" % counts)
            summary, loads = playbook_overhead.run(
                stack, os.path.join(work, "overhead"), counts, args.overhead_reps, log, deploy_reps=args.deploy_reps
            )
            lines = [header, "", "Reproduce: `make bench` (or `.venv/bin/python bench/run.py --skip-backup`).", ""]
            lines += playbook_overhead.section_lines(summary, loads, args.overhead_reps, counts, args.deploy_reps)
            lines += playbook_overhead.NOTES
            for line in lines:
                print(line)
            write_section("Playbook overhead", lines, results)
    finally:
        if not args.keep:
            log("removing bench stack %s and %s" % (stack.project, work))
            stack.remove()
            shutil.rmtree(work, ignore_errors=True)
    if not args.skip_health and os.path.exists(os.path.join(benchlib.ROOT, "bench", "health_bench.py")):
        log("bench/health_bench.py")
        rc = subprocess.run([sys.executable, os.path.join(benchlib.ROOT, "bench", "health_bench.py")]).returncode
        if rc != 0:
            log("health_bench.py failed rc=%d (its section of RESULTS.md is unchanged)" % rc)
    # The other benches, each on its own stack, with the options of their published sections.
    others = [
        (args.skip_dr, ["dr_startup.py"]),
        (args.skip_maintenance, ["maintenance_bench.py", "--scale", "50", "-n", "3"]),
        (args.skip_fleet, ["fleet_scale.py", "--reps", "5", "--variants", "cfg,standin"]),
    ]
    for skip, argv in others:
        if skip:
            continue
        log("bench/%s" % " ".join(argv))
        rc = subprocess.run([sys.executable, os.path.join(benchlib.ROOT, "bench", argv[0])] + argv[1:]).returncode
        if rc != 0:
            log("%s failed rc=%d (its section of RESULTS.md is unchanged)" % (argv[0], rc))
    log("results: %s" % results)


if __name__ == "__main__":
    main()

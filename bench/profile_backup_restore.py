#!/usr/bin/env python3
"""Where pg_backup and pg_restore spend their time beyond the raw command (issue 16, profile).

Runs the modules' cores in-process (the same code the modules run) against a throwaway
PostgreSQL container with a timing ``run_command``: every command's wall time is printed,
and the time spent in Python between commands (hashing, fsync, manifest) as ``python``.

    .venv/bin/python bench/profile_backup_restore.py --scale 7 [--compression gzip:1]

Nothing here is written to RESULTS.md: it is a tool to find the overhead, run by hand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402,F401 - sets sys.path for the collection and the integration conftest
from conftest import StandalonePostgres  # noqa: E402
from datagen import incompressible_tables_sql  # noqa: E402

from ansible_collections.ner11.ops.plugins.module_utils.pgbackup import PgBackup  # noqa: E402
from ansible_collections.ner11.ops.plugins.module_utils.pgrestore import run_restore  # noqa: E402


class TimingRunner:
    """``run_command``-shaped; records (seconds, first words) of every command and the gaps between them."""

    def __init__(self):
        self.rows = []
        self.last_end = None
        self.spans = []  # (start, end, argv text) of every command, for round_trips_before_restore

    def __call__(self, args, data=None, environ_update=None, binary_data=False, **_ignored):
        start = time.monotonic()
        if self.last_end is not None:
            self.rows.append((start - self.last_end, "python (between commands)"))
        env = dict(os.environ)
        env.update(environ_update or {})
        if data is not None and not binary_data and not data.endswith("\n"):
            data += "\n"
        proc = subprocess.run(args, input=data, capture_output=True, text=True, env=env, check=False)  # noqa: S603
        self.last_end = time.monotonic()
        self.rows.append((self.last_end - start, describe(args)))
        self.spans.append((start, self.last_end, " ".join(args)))
        return proc.returncode, proc.stdout, proc.stderr


def describe(args):
    text = args[-1] if args[0].endswith("bash") else " ".join(args)
    for word in ("pg_dump ", "pg_restore", "pg_dumpall", "psql", "docker cp", "mktemp", "chown", "rm -rf", "inspect", "createdb"):
        if word in text:
            extra = ""
            if "docker run" in text or text.startswith("docker run"):
                extra = " (sidecar)"
            return "%s%s: %s" % (word.strip(), extra, text[:110])
    return text[:120]


def round_trips_before_restore(runner):
    """(sequential round trips, commands) before pg_restore starts restoring (``--exit-on-error``).

    Commands that overlap in time are one round trip. The directory dump's ``pg_restore --list``
    sidecar (``--network none``) runs in the background and is left out (else it would merge
    the rounds it overlaps into one).
    """
    restore = [s for s in runner.spans if "--exit-on-error" in s[2]]
    if not restore:
        return None, None
    begin = min(s[0] for s in restore)
    spans = sorted(s for s in runner.spans if s[0] < begin and "--network none" not in s[2])
    rounds, end = 0, None
    for start, stop, _text in spans:
        if end is None or start >= end:
            rounds += 1
            end = stop
        else:
            end = max(end, stop)
    return rounds, len(spans)


def report(title, runner, total):
    print("\n### %s: %.2f s in the core" % (title, total))
    spent = sum(s for s, _ in runner.rows)
    for s, what in runner.rows:
        if s >= 0.02:
            print("%7.2f s  %s" % (s, what))
    print("%7.2f s  (rest: before the first command / after the last)" % (total - spent))


# -- backup ------------------------------------------------------------------------
def backup_canaries(data):
    if data == "incompressible":
        return ["bench_events", "bench_metrics", "pgbench_branches"]
    return ["pgbench_accounts", "pgbench_branches", "noise"]


def fill_incompressible(pg, scale):
    """bench/datagen.py's incompressible profile at ``scale`` (5 is about 100 MB of data)."""
    pg.sql(incompressible_tables_sql(scale))  # without the NER tables a bare PostgreSQL lacks
    for statement in ("VACUUM ANALYZE bench_events;", "VACUUM ANALYZE bench_metrics;", "CHECKPOINT;"):
        pg.sql(statement)  # one by one: VACUUM cannot run in psql -c's implicit transaction


def profile_backups(params, runs):
    """``runs`` backups (each a new one, period manual); prints the commands of the first, each run's
    ``duration_s`` and the median of every step (the module's own ``steps``). Returns the first result."""
    first, durations, steps, overhead = None, [], {}, []
    for run in range(runs):
        runner = TimingRunner()
        t0 = time.monotonic()
        res = PgBackup(dict(params), runner).run()
        if first is None:
            first = res
            report("pg_backup %s" % params["compression"], runner, time.monotonic() - t0)
        durations.append(res["duration_s"])
        for step in res["steps"]:
            steps.setdefault(step["step"], []).append(step["s"])
        own = {step["step"]: step["s"] for step in res["steps"]}
        overhead.append(res["duration_s"] - own.get("pg_dump", 0.0))
        print(
            "  backup run %d: duration_s %.3f, without pg_dump %.3f, load %.1f"
            % (run + 1, res["duration_s"], overhead[-1], os.getloadavg()[0])
        )
    print(
        "\n### pg_backup steps, median over %d run(s); duration_s median %.3f (runs %s)"
        % (runs, statistics.median(durations), ", ".join("%.2f" % d for d in durations))
    )
    print(
        "  duration_s without the pg_dump step (the module's own overhead), median %.3f (runs %s)"
        % (statistics.median(overhead), ", ".join("%.2f" % d for d in overhead))
    )
    for name, values in steps.items():
        print("%7.3f s  %s" % (statistics.median(values), name))
    return first


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=int, default=7)
    ap.add_argument("--compression", default="gzip:1")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--data",
        choices=("compressible", "incompressible"),
        default="compressible",
        help="compressible: pgbench plus md5 noise (as before); incompressible: bench/datagen.py's log-like rows",
    )
    ap.add_argument("--backup-runs", type=int, default=1, help="backups to run; the steps are reported as medians")
    ap.add_argument("--skip-restore", action="store_true", help="profile pg_backup only")
    args = ap.parse_args()
    pg = StandalonePostgres("prof")
    work = tempfile.mkdtemp(prefix="ner11-prof-", dir="/var/tmp")
    try:
        pg.start(deadline_s=240)
        proc = subprocess.run(
            ["docker", "exec", "-u", "postgres", pg.name, "pgbench", "-i", "-q", "-s", str(args.scale), pg.db],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError("pgbench -i failed: %s" % proc.stderr[-1000:])
        if args.data == "incompressible":
            pg.sql("DROP TABLE pgbench_accounts, pgbench_history, pgbench_tellers;")
            fill_incompressible(pg, args.scale)
        else:
            rows = int(200000 * args.scale)
            noise = "CREATE TABLE noise AS SELECT g AS id, md5(g::text) || md5(random()::text) AS t, random() AS f "
            pg.sql(noise + "FROM generate_series(1, " + str(rows) + ") g; CHECKPOINT;")
        print("db size:", pg.sql("SELECT pg_size_pretty(pg_database_size('%s'));" % pg.db), "load %.1f" % os.getloadavg()[0])
        params = {
            "backup_dir": work,
            "db_name": pg.db,
            "container": pg.name,
            "login_password": pg.password,
            "compression": args.compression,
            "jobs": args.jobs,
            "period": "manual",
            "canary_tables": backup_canaries(args.data),
        }
        res = profile_backups(params, max(args.backup_runs, 1))
        # New databases without and with a password (the dump copied / read by mount), then the
        # second one replaced (force: the same backup is applied there): an existing target's reads.
        replace = {"if_exists": "replace", "confirm": "prof_restore_pw", "force": True}
        restores = ((None, {}), (pg.password, {}), (pg.password, replace))
        for restore_password, extra in () if args.skip_restore else restores:
            runner = TimingRunner()
            rparams = {
                "db_name": "prof_restore_%s" % ("pw" if restore_password else "nopw"),
                "backup_dir": work,
                "backup_id": res["backup_id"],
                "container": pg.name,
                "login_password": restore_password,
                "jobs": args.jobs,
            }
            rparams.update(extra)
            load = os.getloadavg()[0]
            t0 = time.monotonic()
            done = run_restore(rparams, runner)
            what = "with login_password" if restore_password else "no password"
            report(
                "pg_restore jobs %d, %s%s (1-minute load %.1f -> %.1f)"
                % (args.jobs, what, ", replace" if extra else "", load, os.getloadavg()[0]),
                runner,
                time.monotonic() - t0,
            )
            rounds, commands = round_trips_before_restore(runner)
            print(
                "  before pg_restore started: %s round trip(s), %s command(s) (the background --list not counted)"
                % (rounds, commands)
            )
            print("  its steps (the module's own `steps`; duration_s %.2f):" % done["duration_s"])
            for step in done["steps"]:
                print("%7.2f s  %s" % (step["s"], step["step"]))
    finally:
        pg.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

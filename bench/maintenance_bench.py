#!/usr/bin/env python3
"""Benchmark: maintenance modules vs what the runbooks do by hand (issue 12, DESIGN section 7).

1. ``disk_cleanup`` plan time on a Docker host holding ``--containers`` (default 200) stopped
   containers and ``--images`` (default 200) dangling images, all small and labelled
   ``io.ner11.test=1`` under one bench project: the module in check mode (the exact plan:
   every candidate, its size and why) vs the raw listing the runbooks use
   (``docker system df`` + ``docker ps -a -s --filter status=exited`` + ``docker images -f dangling=true``).
2. ``pg_maintenance`` vacuum and reindex vs the raw SQL (``VACUUM (ANALYZE)``, ``REINDEX TABLE``)
   on the bench database (``--scale`` of bench/datagen.py: 5 = ~110 MB, 50 = ~1.1 GB), the same
   dead tuples made before each run (an UPDATE of a fixed share of ner_documents).

Every figure is measured by this run; the section "## Maintenance" of bench/RESULTS.md is
rewritten with them. Usage: .venv/bin/python bench/maintenance_bench.py [--scale 50] [-n 3] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from benchlib import load, loads_text, median, psql, sh, timed, wait_for_load, write_section  # noqa: E402
from conftest import Stack, docker, remove_project, run_module, unique_project  # noqa: E402
from datagen import generate  # noqa: E402


def log(msg):
    print("[maintenance-bench] %s" % msg, flush=True)


def fill_docker(project, containers, images):
    label = ["--label", "io.ner11.test=1", "--label", "io.ner11.project=%s" % project]
    for i in range(containers):
        docker("create", "--name", "%s-junk-%d" % (project, i), *label, "ner11/base:ref", "true")
    for i in range(images):
        # A distinct tiny image per step, then untagged: a dangling image.
        tag = "ner11/bench-junk:%s-%d" % (project, i)
        sh(
            "printf 'FROM ner11/base:ref\\nLABEL io.ner11.test=1 io.ner11.project=%s n=%d\\n' | docker build -q -t %s -"
            % (project, i, tag)
        )
        docker("rmi", "--no-prune", tag, check=False)


def remove_docker_junk(project):
    remove_project(project, volumes=False)
    ids = docker("images", "-q", "--filter", "label=io.ner11.project=%s" % project, check=False).stdout.split()
    if ids:
        docker("rmi", "-f", *sorted(set(ids)), check=False)


def bench_disk_cleanup(args):
    project = unique_project("benchdc")
    scratch = tempfile.mkdtemp(prefix="benchdc-")
    try:
        log("creating %d stopped containers and %d dangling images" % (args.containers, args.images))
        fill_docker(project, args.containers, args.images)
        module_s, raw_s, planned = [], [], 0
        for rep in range(args.n):
            seconds, res = timed(
                run_module,
                "ner11.ops.disk_cleanup",
                {
                    "path": scratch,
                    "target_free_percent": 99,
                    "actions": ["stopped_containers", "dangling_images"],
                    "image_age_hours": 0,
                },
                check=True,
            )
            assert not res.get("failed"), res.get("msg")
            planned = sum(len(a.get("candidates") or []) for a in (res.get("actions") or {}).values())
            module_s.append(seconds)
            seconds, _ = timed(
                sh,
                "docker system df >/dev/null && docker ps -a -s --filter status=exited --filter status=created >/dev/null"
                " && docker images -f dangling=true >/dev/null",
            )
            raw_s.append(seconds)
            log("rep %d: module %.2f s (%d candidates), raw %.2f s" % (rep + 1, module_s[-1], planned, raw_s[-1]))
        return module_s, raw_s, planned
    finally:
        remove_docker_junk(project)


def make_dead(stack, share):
    psql(stack, "UPDATE ner_documents SET text = text WHERE id %% %d = 0;" % int(share))  # noqa: S608 - an int


def bench_pg(args):
    stack = Stack(unique_project("benchpm"))
    stack.remove()
    try:
        res = stack.deploy()
        assert res.rc == 0, res.explain()
        generate(stack, args.scale, log)
        size = int(psql(stack, "SELECT pg_database_size(current_database())"))
        out = {}
        base = {"container": stack.container("postgres"), "db_name": stack.model["db_name"]}
        for op, raw_sql in (
            ("vacuum", "VACUUM (ANALYZE) public.ner_documents"),
            ("reindex", "REINDEX TABLE public.ner_documents"),
        ):
            mod, raw, own = [], [], []
            for _rep in range(args.n):
                make_dead(stack, 10)
                seconds, res = timed(
                    run_module, "ner11.ops.pg_maintenance", dict(base, operation=op, tables=["public.ner_documents"], force=True)
                )
                assert not res.get("failed"), res.get("msg")
                mod.append(seconds)
                own.append(float(res["duration_s"]))
                make_dead(stack, 10)
                seconds, _ = timed(psql, stack, raw_sql + ";")
                raw.append(seconds)
            out[op] = (mod, raw, own)
        return size, out
    finally:
        if not args.keep:
            stack.remove()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--scale", type=int, default=50, help="bench/datagen.py scale: 50 = ~1.1 GB")
    parser.add_argument("-n", type=int, default=3, help="repetitions")
    parser.add_argument("--max-load", type=float, default=4.0)
    parser.add_argument("--wait-minutes", type=int, default=30)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--why-scale", default="", help="printed beside the database size when --scale is not the 1 GB default")
    args = parser.parse_args()
    wait_for_load(args.max_load, args.wait_minutes, log)
    load0 = load()
    dc_mod, dc_raw, planned = bench_disk_cleanup(args)
    size, pg = bench_pg(args)
    command = shlex.join(["python", "bench/maintenance_bench.py"] + sys.argv[1:])
    lines = [
        "Measured %s on %s (%d CPU), %s; %d repetitions, medians. Command: `%s`."
        % (time.strftime("%Y-%m-%d"), platform.node(), os.cpu_count() or 0, loads_text(load0, load()), args.n, command.strip()),
        "",
        "Database measured: %.0f MB (bench/datagen.py scale %d; scale 50 is the ~1.1 GB database)%s."
        % (size / 1e6, args.scale, (": " + args.why_scale) if args.scale != 50 and args.why_scale else ""),
        "",
        "| what | module wall (s) | module's own duration_s | raw (s) | wall / raw |",
        "|---|---|---|---|---|",
        "| disk_cleanup plan, %d stopped containers + %d dangling images (%d candidates) | %.2f | - | %.2f | %.1f× |"
        % (args.containers, args.images, planned, median(dc_mod), median(dc_raw), median(dc_mod) / median(dc_raw)),
    ]
    for op, (mod, raw, own) in pg.items():
        lines.append(
            "| pg_maintenance %s, ner_documents of a %.0f MB database | %.2f | %.2f | %.2f | %.1f× |"
            % (op, size / 1e6, median(mod), median(own), median(raw), median(mod) / median(raw))
        )
    lines += [
        "",
        "Module wall = one ansible task run (ansible-playbook start-up included); the module's own duration_s"
        " covers its measurements of dead tuples and bloat before and after plus the statement; raw is the bare"
        " SQL statement through `docker exec psql`.",
    ]
    write_section("Maintenance", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

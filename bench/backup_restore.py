"""Backup and restore, side by side on the same database (DESIGN.md §7, issue 16).

Backup methods (each rep runs them in this order: one after the other, then again; medians):

A. ``ner11.ops.pg_backup`` with its defaults (directory, ``-j2``, ``gzip:1``, sidecar), as a real
   Ansible task (``ansible-playbook``; wall) - its own ``duration_s`` and ``steps`` are reported too.
Z. ``ner11.ops.pg_backup`` with ``compression: zstd:1`` (pg_dump 17 of ner11/pgclient in the sidecar).
B. the runbooks' dump (c.3): ``docker exec <db> pg_dump -U postgres ner11_db | gzip > f.sql.gz``.
C. ``community.postgresql.postgresql_db state=dump target=f.sql.gz`` (host pg_dump over TCP).
E. raw: EXACTLY the ``docker run ... pg_dump -Fd -Z 1 -j 2`` sidecar whose pg_dump pg_backup runs for A
   (built by the module's own ``PgBackup.dump_command``: same image, sidecar, passfile, flags), without
   the module; A runs that pg_dump with globals and ``pg_restore --list`` in one sidecar.
EZ. raw: the same for Z (``-Z zstd:1``, the client image).

Restore methods (each into a new empty database, dropped afterwards):

R1. ``ner11.ops.pg_restore`` (``jobs: 2``, ``login_password``: read by mount) from A's backup, as a task.
RZ. ``ner11.ops.pg_restore`` of Z's backup (pg_restore 17 of the client image).
R2. the runbooks' e.6: ``createdb`` + ``gunzip -c f.sql.gz | docker exec -i <db> psql`` from B's file.
R3. raw: ``createdb`` + EXACTLY the sidecar ``pg_restore -j 2`` line the module runs for R1.

Every restore is checked afterwards (row counts equal the source) outside the timing. Every figure
printed comes from this run; the 1-minute load average is printed beside each method's runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from benchlib import load, mb, median, psql, run_module, sh, timed, tree_size
from datagen import describe

from ansible_collections.ner11.ops.plugins.module_utils.pgbackup import PgBackup
from ansible_collections.ner11.ops.plugins.module_utils.pgexec import PgTarget

BACKUP = ["pg_backup", "pg_backup_zstd", "runbook", "postgresql_db", "raw_module_cmd", "raw_module_cmd_zstd"]
RESTORE = ["pg_restore", "pg_restore_zstd", "runbook", "raw_restore_j2"]
LABELS = {
    "pg_backup": "`ner11.ops.pg_backup` defaults (gzip:1; ansible-playbook wall)",
    "pg_backup_zstd": "`ner11.ops.pg_backup` `compression: zstd:1` (ansible-playbook wall)",
    "runbook": "runbooks: `docker exec pg_dump \\| gzip` (plain)",
    "postgresql_db": "`community.postgresql.postgresql_db state=dump` .sql.gz (ansible-playbook wall)",
    "raw_module_cmd": "raw: pg_backup's own `pg_dump -Fd -Z 1 -j 2` sidecar line",
    "raw_module_cmd_zstd": "raw: pg_backup's own `pg_dump -Fd -Z zstd:1 -j 2` sidecar line (pg_dump 17)",
    "pg_restore": "`ner11.ops.pg_restore` jobs 2, new DB, gzip:1 backup (ansible-playbook wall)",
    "pg_restore_zstd": "`ner11.ops.pg_restore` jobs 2, new DB, zstd:1 backup (ansible-playbook wall)",
    "runbook_r": "runbooks: `gunzip -c \\| docker exec -i psql`",
    "raw_restore_j2": "raw: `createdb` + pg_restore's own sidecar `pg_restore -j 2` line",
}


def run_command(args, data=None, environ_update=None, **_ignored):
    """``run_command``-shaped, for building (never running) the module's own command lines."""
    proc = subprocess.run(args, input=data, capture_output=True, text=True, check=False)  # noqa: S603
    return proc.returncode, proc.stdout, proc.stderr


class BackupRestoreBench:
    def __init__(self, stack, workdir, log=print):
        self.stack = stack
        self.work = workdir
        self.log = log
        self.container = stack.container("postgres")
        self.db = stack.model["db_name"]
        self.catalog = os.path.join(workdir, "catalog")
        self.last = {}
        os.makedirs(self.catalog, exist_ok=True)

    # -- backups ---------------------------------------------------------------------
    def _module_args(self, compression=None):
        args = {
            "backup_dir": self.catalog,
            "db_name": self.db,
            "container": self.container,
            "login_password": self.stack.password,
        }
        if compression:
            args["compression"] = compression
        return args

    def _pg_backup(self, key, compression=None):
        wall, res = timed(run_module, "ner11.ops.pg_backup", self._module_args(compression), timeout=3600)
        if res.get("failed"):
            raise RuntimeError("pg_backup failed: %s" % res.get("msg"))
        if self.last.get(key):
            shutil.rmtree(self.last[key]["path"], ignore_errors=True)
        self.last[key] = {"path": res["path"], "backup_id": res["backup_id"], "dump_cmd": res["plan"]["commands"][0]}
        plan = res.get("plan", {})
        return {
            "s": wall,
            "internal_s": res.get("duration_s"),
            "bytes": tree_size(os.path.join(res["path"], "dump")),
            "steps": res.get("steps") or [],
            "detail": "%s %s jobs %s" % (plan.get("format"), plan.get("compression"), plan.get("jobs")),
        }

    def b_pg_backup(self, rep):
        return self._pg_backup("pg_backup")

    def b_pg_backup_zstd(self, rep):
        return self._pg_backup("pg_backup_zstd", "zstd:1")

    def b_runbook(self, rep):
        out = os.path.join(self.work, "runbook.sql.gz")
        line = "docker exec %s pg_dump -U postgres %s | gzip > %s" % (shlex.quote(self.container), self.db, shlex.quote(out))
        wall, _ = timed(sh, line)
        self.last["runbook"] = out
        return {"s": wall, "bytes": tree_size(out)}

    def b_postgresql_db(self, rep):
        out = os.path.join(self.work, "postgresql_db.sql.gz")
        args = {
            "name": self.db,
            "state": "dump",
            "target": out,
            "login_host": "127.0.0.1",
            "login_port": self.stack.model["db_port"],
            "login_user": "postgres",
            "login_password": self.stack.password,
        }
        wall, res = timed(run_module, "community.postgresql.postgresql_db", args, timeout=3600)
        if res.get("failed"):
            raise RuntimeError("postgresql_db dump failed: %s" % res.get("msg"))
        size = tree_size(out)
        os.unlink(out)
        return {"s": wall, "bytes": size}

    def _raw_module_cmd(self, compression):
        """The module's own dump line (PgBackup.dump_command), run without the module."""
        out = os.path.join(self.work, "raw-partial")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        job = PgBackup(dict(self._module_args(compression), period="manual"), run_command, check_mode=True)
        try:
            job._check_container()
            fmt, method, level, jobs = job._format()
            kind, argv = job.dump_command(fmt, method, level, jobs, out, "dump")
            assert kind == "argv", kind
            wall, _ = timed(sh, shlex.join(argv))
        finally:
            job.target.close()
        size = tree_size(os.path.join(out, "dump"))
        shutil.rmtree(out, ignore_errors=True)
        return {"s": wall, "bytes": size, "detail": shlex.join(argv)}

    def b_raw_module_cmd(self, rep):
        return self._raw_module_cmd(None)

    def b_raw_module_cmd_zstd(self, rep):
        return self._raw_module_cmd("zstd:1")

    # -- restores --------------------------------------------------------------------
    def _drop(self, name):
        psql(self.stack, "DROP DATABASE IF EXISTS %s WITH (FORCE);" % name, db="postgres")

    def _check(self, name, source):
        got = describe(self.stack, db=name)["rows"]
        if got != source["rows"]:
            raise RuntimeError("restore into %s is incomplete: %s != %s" % (name, got, source["rows"]))

    def _pg_restore(self, rep, source, key):
        name = "bench_r_module"
        self._drop(name)
        args = {
            "db_name": name,
            "backup_dir": self.catalog,
            "backup_id": self.last[key]["backup_id"],
            "container": self.container,
            "login_password": self.stack.password,
            "jobs": 2,
        }
        wall, res = timed(run_module, "ner11.ops.pg_restore", args, timeout=3600)
        if res.get("failed"):
            raise RuntimeError("pg_restore module failed: %s" % res.get("msg"))
        self._check(name, source)
        self._drop(name)
        by_mount = res.get("plan", {}).get("read_dump_by_mount")
        return {
            "s": wall,
            "internal_s": res.get("duration_s"),
            "steps": res.get("steps") or [],
            "detail": "%s, by mount %s" % (res.get("operation"), by_mount),
        }

    def r_pg_restore(self, rep, source):
        return self._pg_restore(rep, source, "pg_backup")

    def r_pg_restore_zstd(self, rep, source):
        return self._pg_restore(rep, source, "pg_backup_zstd")

    def r_runbook(self, rep, source):
        name = "bench_r_runbook"
        self._drop(name)
        line = "docker exec -u postgres {c} createdb -O postgres {n} && gunzip -c {f} | docker exec -i {c} psql -U postgres -X -q -d {n} > /dev/null".format(
            c=shlex.quote(self.container), n=name, f=shlex.quote(self.last["runbook"])
        )
        wall, _ = timed(sh, line)
        self._check(name, source)
        self._drop(name)
        return {"s": wall}

    def r_raw_restore_j2(self, rep, source):
        """``createdb`` + the sidecar line pg_restore's Restorer builds (same image, mount, flags)."""
        name = "bench_r_raw"
        self._drop(name)
        dump = os.path.join(self.last["pg_backup"]["path"], "dump")
        root = self.last["pg_backup"]["path"]
        target = PgTarget({"container": self.container, "login_password": self.stack.password}, run_command)
        try:
            status, image = target.container_state()
            argv = target.sidecar_argv(
                "pg_restore",
                ["--exit-on-error", "--no-password", "-d", name, "-j", "2", dump],
                image,
                volumes=["%s:%s:ro" % (root, root)],
            )
            line = "docker exec -u postgres %s createdb -O postgres %s && %s" % (
                shlex.quote(self.container),
                name,
                shlex.join(argv),
            )
            wall, _ = timed(sh, line)
        finally:
            target.close()
        self._check(name, source)
        self._drop(name)
        return {"s": wall}

    # -- one size ----------------------------------------------------------------------
    def run(self, source, reps):
        """All methods, interleaved, ``reps`` times; returns {"backup": {m: [runs]}, "restore": {...}}."""
        out = {"backup": {m: [] for m in BACKUP}, "restore": {m: [] for m in RESTORE}}
        for rep in range(reps):
            for m in BACKUP:
                self.log("  rep %d backup %s" % (rep + 1, m))
                l0 = load()
                run = getattr(self, "b_" + m)(rep)
                run["load"] = (l0, load())
                out["backup"][m].append(run)
                self.log("    %.1f s" % run["s"])
        for rep in range(reps):
            for m in RESTORE:
                self.log("  rep %d restore %s" % (rep + 1, m))
                l0 = load()
                run = getattr(self, "r_" + m)(rep, source)
                run["load"] = (l0, load())
                out["restore"][m].append(run)
                self.log("    %.1f s" % run["s"])
        return out

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)


def summarize(runs):
    """{method: {"s", "internal_s", "bytes", "n", "all", "loads", "steps"}} medians over reps."""
    out = {}
    for m, rs in runs.items():
        steps = {}
        for r in rs:
            for st in r.get("steps") or []:
                steps.setdefault(st["step"], []).append(st["s"])
        out[m] = {
            "s": median(r["s"] for r in rs),
            "internal_s": median(r.get("internal_s") for r in rs),
            "bytes": median(r.get("bytes") for r in rs),
            "n": len(rs),
            "all": [round(r["s"], 1) for r in rs],
            "loads": ["%.0f-%.0f" % r["load"] for r in rs if r.get("load")],
            "detail": rs[-1].get("detail") if rs else None,
            "steps": [(name, median(v), len(v)) for name, v in steps.items()],
        }
    return out


def ratio(a, b):
    return a / b if a and b else float("nan")


def _fmt(value, pattern="%.1f"):
    return pattern % value if value is not None else ""


def section_lines(size_label, source, res, loads, reps, noop_s, profile="compressible"):
    """Markdown lines for one database size and data profile (every figure measured in this run)."""
    b = summarize(res["backup"])
    r = summarize(res["restore"])
    gz = b["runbook"]
    lines = [
        "### %s, %s data: `pg_database_size` %.0f MB (scale %d; rows %s)"
        % (
            size_label,
            profile,
            mb(source["db_bytes"]),
            source["scale"],
            ", ".join("%s %d" % kv for kv in sorted(source["rows"].items())),
        ),
        "",
        "%d run(s) per method, interleaved; median. %s (1-minute load average at start -> end of this size); "
        "per run in the tables. `ansible-playbook` with one no-op task: %.1f s." % (reps, loads, noop_s),
        "",
        "| backup method | median s | runs s | load at runs | module-internal s | size MB | s / its raw command | runbook s / s | size / runbook |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    raw_of = {"pg_backup": "raw_module_cmd", "pg_backup_zstd": "raw_module_cmd_zstd"}
    for m in BACKUP:
        x = b[m]
        floor = b[raw_of[m]]["s"] if m in raw_of else None
        lines.append(
            "| %s | %.1f | %s | %s | %s | %.1f | %s | %.2f | %.2f |"
            % (
                LABELS[m],
                x["s"],
                ", ".join("%.1f" % v for v in x["all"]),
                ", ".join(x["loads"]),
                _fmt(x["internal_s"]),
                mb(x["bytes"]),
                "%.2f wall, %.2f internal" % (ratio(x["s"], floor), ratio(x["internal_s"], floor)) if floor else "",
                ratio(gz["s"], x["s"]),
                ratio(x["bytes"], gz["bytes"]),
            )
        )
    floor_r = r["raw_restore_j2"]["s"]
    lines += [
        "",
        "| restore method | median s | runs s | load at runs | module-internal s | s / raw `pg_restore -j 2` line |",
        "|---|---:|---|---|---:|---:|",
    ]
    for m in RESTORE:
        x = r[m]
        label = LABELS["runbook_r" if m == "runbook" else m]
        lines.append(
            "| %s | %.1f | %s | %s | %s | %s |"
            % (
                label,
                x["s"],
                ", ".join("%.1f" % v for v in x["all"]),
                ", ".join(x["loads"]),
                _fmt(x["internal_s"]),
                # Only a module has its own duration: the runbook and raw lines show their wall ratio.
                "%.2f wall" % ratio(x["s"], floor_r)
                + (", %.2f internal" % ratio(x["internal_s"], floor_r) if x["internal_s"] is not None else ""),
            )
        )
    for m, x in (("pg_backup", b), ("pg_backup_zstd", b), ("pg_restore", r), ("pg_restore_zstd", r)):
        lines += ["", "Steps that ran in `%s` (median s over %d runs, from the module's `steps`):" % (m, x[m]["n"]), ""]
        lines.append("| step | median s | runs |")
        lines.append("|---|---:|---:|")
        for name, secs, n in x[m]["steps"]:
            lines.append("| %s | %.2f | %d |" % (name, secs, n))
    pb, pz, pr = b["pg_backup"], b["pg_backup_zstd"], r["pg_restore"]
    raw, rawz = b["raw_module_cmd"]["s"], b["raw_module_cmd_zstd"]["s"]
    lines += [
        "",
        "Targets (issue 16), computed from the medians above: pg_backup <= 1.15x its raw command: wall %.2fx, "
        "internal %.2fx (%s); zstd:1 >= 3x faster than `pg_dump | gzip` at <= its size: %.2fx at %.2fx the size (%s); "
        "pg_restore <= 1.15x raw `createdb` + `pg_restore -j 2`: wall %.2fx, internal %.2fx (%s)."
        % (
            ratio(pb["s"], raw),
            ratio(pb["internal_s"], raw),
            verdict(ratio(pb["s"], raw) <= 1.15, ratio(pb["internal_s"], raw) <= 1.15),
            ratio(gz["s"], pz["s"]),
            ratio(pz["bytes"], gz["bytes"]),
            "**met**" if ratio(gz["s"], pz["s"]) >= 3 and pz["bytes"] <= gz["bytes"] else "**missed**",
            ratio(pr["s"], floor_r),
            ratio(pr["internal_s"], floor_r),
            verdict(ratio(pr["s"], floor_r) <= 1.15, ratio(pr["internal_s"], floor_r) <= 1.15),
        ),
        "",
        headroom_line(pb, pr, raw, rawz, floor_r, gz["s"], noop_s),
        "",
        "zstd raw line vs gzip raw line in this run: %.1f s vs %.1f s." % (rawz, raw),
        "",
        "Raw dump line run (pg_backup's own, passfile path varies per run): `%s`" % (b["raw_module_cmd"]["detail"] or ""),
        "",
    ]
    return lines, {"backup": b, "restore": r}


def headroom_line(pb, pr, raw, rawz, floor_r, runbook_s, noop_s):
    """What each wall target leaves beside the raw command, and what Ansible's own start-up takes of it."""

    def fits(floor, limit):
        return "fits" if floor <= limit else "**exceeds it**"

    allow_b, allow_r, need_z = 0.15 * raw, 0.15 * floor_r, runbook_s / 3
    return (
        "What the wall targets leave, from the same medians: pg_backup at 1.15x may take %.2f s more than its raw "
        "command (%.1f s); it took %.2f s more (%.2f s of them inside the module), and `ansible-playbook` with one "
        "no-op task alone takes %.1f s, which %s. zstd:1 at 3x must finish within %.1f s (the runbook's %.1f s / 3); "
        "its raw line alone takes %.1f s, with the no-op %.1f s, which %s. pg_restore at 1.15x may take %.2f s more "
        "than the raw lines (%.1f s); it took %.2f s more (%.2f s inside the module); the no-op %.1f s %s."
        % (
            allow_b,
            raw,
            pb["s"] - raw,
            pb["internal_s"] - raw,
            noop_s,
            fits(noop_s, allow_b),
            need_z,
            runbook_s,
            rawz,
            rawz + noop_s,
            fits(rawz + noop_s, need_z),
            allow_r,
            floor_r,
            pr["s"] - floor_r,
            pr["internal_s"] - floor_r,
            noop_s,
            fits(noop_s, allow_r),
        )
    )


def verdict(wall_ok, internal_ok):
    if wall_ok:
        return "**met**"
    if internal_ok:
        return "met by the module, missed end to end"
    return "**missed**"


NOTES = [
    "### How to read this",
    "",
    "- Size of pg_backup = its `dump/` directory (the backup also holds `globals.sql` and the manifest).",
    "- Wall = `ansible-playbook` of one task (controller start-up included: the no-op figure above);",
    "  module-internal = the module's own `duration_s`; the steps tables are the modules' own `steps`.",
    "- The raw lines are built by the modules' own code (`PgBackup.dump_command`, `PgTarget.sidecar_argv`),",
    "  so the raw command is exactly the command the module runs.",
    "- The page cache is warm for every method alike (the machine is shared; caches were not dropped).",
    "",
]

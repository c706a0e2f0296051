"""Backup and restore, side by side on the same database (DESIGN.md §7).

Backup methods (each rep runs them in this order: A B C D E, A B C D E, ...):

A. ``ner11.ops.pg_backup`` with its defaults (directory, ``-j2``, ``gzip:1``, sidecar),
   invoked as a real Ansible task (``ansible-playbook``; wall time) — its own
   ``duration_s`` is reported too.
B. the runbooks' dump (c.3): ``docker exec <db> pg_dump -U postgres ner11_db | gzip > f.sql.gz``
   on the host.
C. ``community.postgresql.postgresql_db state=dump target=f.sql.gz`` (host pg_dump 15 over
   TCP to the published port, with the password), as an Ansible task.
D. raw ``pg_dump -Fd -j2`` (default gzip level) in a sidecar of the DB image, exactly as
   pg_backup runs it (the floor the issue names).
E. raw ``pg_dump -Fd -j2 -Z1`` in the same sidecar: what pg_backup runs, without the module.

Restore methods (each into a new empty database, dropped afterwards):

R1. ``ner11.ops.pg_restore`` (``jobs: 2``, as restore.yml) from A's last backup, as an Ansible task.
R2. the runbooks' e.6: ``createdb`` + ``gunzip -c f.sql.gz | docker exec -i <db> psql`` from B's last file.
R3. raw ``createdb`` + ``pg_restore -j2`` of A's dump directory in a sidecar (the floor).

Every restore is checked afterwards (row counts equal the source) outside the timing.
"""

from __future__ import annotations

import os
import shlex
import shutil

from benchlib import mb, median, psql, run_module, sh, sidecar, timed, tree_size
from datagen import describe

BACKUP = ["pg_backup", "runbook", "postgresql_db", "raw_fd_j2", "raw_fd_j2_z1"]
RESTORE = ["pg_restore", "runbook", "raw_restore_j2"]
LABELS = {
    "pg_backup": "`ner11.ops.pg_backup` defaults (ansible-playbook wall)",
    "runbook": "runbooks: `docker exec pg_dump \\| gzip` (plain)",
    "postgresql_db": "`community.postgresql.postgresql_db state=dump` .sql.gz (ansible-playbook wall)",
    "raw_fd_j2": "raw `pg_dump -Fd -j2` (default gzip), sidecar",
    "raw_fd_j2_z1": "raw `pg_dump -Fd -j2 -Z1`, sidecar",
    "pg_restore": "`ner11.ops.pg_restore` jobs 2, new DB (ansible-playbook wall)",
    "runbook_r": "runbooks: `gunzip -c \\| docker exec -i psql`",
    "raw_restore_j2": "raw `createdb` + `pg_restore -j2`, sidecar",
}


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
    def b_pg_backup(self, rep):
        args = {
            "backup_dir": self.catalog,
            "db_name": self.db,
            "container": self.container,
            "login_password": self.stack.password,
        }
        wall, res = timed(run_module, "ner11.ops.pg_backup", args, timeout=3600)
        if res.get("failed"):
            raise RuntimeError("pg_backup failed: %s" % res.get("msg"))
        if self.last.get("pg_backup"):
            shutil.rmtree(self.last["pg_backup"]["path"], ignore_errors=True)
        self.last["pg_backup"] = {"path": res["path"], "backup_id": res["backup_id"]}
        plan = res.get("plan", {})
        return {
            "s": wall,
            "internal_s": res.get("duration_s"),
            "bytes": tree_size(os.path.join(res["path"], "dump")),
            "total_bytes": res.get("size_bytes"),
            "detail": "%s %s jobs %s" % (plan.get("format"), plan.get("compression"), plan.get("jobs")),
        }

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

    def _raw_dump(self, extra):
        out = os.path.join(self.work, "raw-dump")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(self.work, exist_ok=True)
        line = sidecar(self.stack, self.work, "pg_dump", ["-Fd", "-j", "2"] + extra + ["-f", out, self.db], [(self.work, "")])
        wall, _ = timed(sh, line)
        size = tree_size(out)
        shutil.rmtree(out, ignore_errors=True)
        return {"s": wall, "bytes": size}

    def b_raw_fd_j2(self, rep):
        return self._raw_dump([])

    def b_raw_fd_j2_z1(self, rep):
        return self._raw_dump(["-Z", "1"])

    # -- restores --------------------------------------------------------------------
    def _drop(self, name):
        psql(self.stack, "DROP DATABASE IF EXISTS %s WITH (FORCE);" % name, db="postgres")

    def _check(self, name, source):
        got = describe(self.stack, db=name)["rows"]
        if got != source["rows"]:
            raise RuntimeError("restore into %s is incomplete: %s != %s" % (name, got, source["rows"]))

    def r_pg_restore(self, rep, source):
        name = "bench_r_module"
        self._drop(name)
        args = {
            "db_name": name,
            "backup_dir": self.catalog,
            "backup_id": self.last["pg_backup"]["backup_id"],
            "container": self.container,
            "jobs": 2,
        }
        wall, res = timed(run_module, "ner11.ops.pg_restore", args, timeout=3600)
        if res.get("failed"):
            raise RuntimeError("pg_restore module failed: %s" % res.get("msg"))
        self._check(name, source)
        self._drop(name)
        return {"s": wall, "internal_s": res.get("duration_s"), "detail": res.get("operation")}

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
        name = "bench_r_raw"
        self._drop(name)
        dump = os.path.join(self.last["pg_backup"]["path"], "dump")
        line = "docker exec -u postgres %s createdb -O postgres %s && %s" % (
            shlex.quote(self.container),
            name,
            sidecar(self.stack, self.work, "pg_restore", ["-j", "2", "--exit-on-error", "-d", name, dump], [(dump, ":ro")]),
        )
        wall, _ = timed(sh, line)
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
                out["backup"][m].append(getattr(self, "b_" + m)(rep))
                self.log("    %.1f s" % out["backup"][m][-1]["s"])
        for rep in range(reps):
            for m in RESTORE:
                self.log("  rep %d restore %s" % (rep + 1, m))
                out["restore"][m].append(getattr(self, "r_" + m)(rep, source))
                self.log("    %.1f s" % out["restore"][m][-1]["s"])
        return out

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)


def summarize(runs):
    """{method: {"s", "internal_s", "bytes", "n", "all"}} medians over reps."""
    out = {}
    for m, rs in runs.items():
        out[m] = {
            "s": median(r["s"] for r in rs),
            "internal_s": median(r.get("internal_s") for r in rs),
            "bytes": median(r.get("bytes") for r in rs),
            "n": len(rs),
            "all": [round(r["s"], 1) for r in rs],
            "detail": rs[-1].get("detail") if rs else None,
        }
    return out


def ratio(a, b):
    return a / b if a and b else float("nan")


def section_lines(size_label, source, res, loads, reps, noop_s):
    """Markdown lines for one database size."""
    b = summarize(res["backup"])
    r = summarize(res["restore"])
    floor_b = b["raw_fd_j2"]["s"]
    floor_z1 = b["raw_fd_j2_z1"]["s"]
    gz = b["runbook"]["s"]
    lines = [
        "### %s: `pg_database_size` %.0f MB (pgbench scale %d: %d accounts; %d NER documents, %d entities)"
        % (
            size_label,
            mb(source["db_bytes"]),
            source["scale"],
            source["rows"]["pgbench_accounts"],
            source["rows"]["ner_documents"],
            source["rows"]["ner_entities"],
        ),
        "",
        "%d run(s) per method, interleaved; median. %s (1-minute average at start → end of this size)." % (reps, loads),
        "",
        "| backup method | median s | runs s | module-internal s | size MB | s / raw `-Fd -j2` | s / raw `-Fd -j2 -Z1` | runbook s / s | size / runbook |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in BACKUP:
        x = b[m]
        lines.append(
            "| %s | %.1f | %s | %s | %.1f | %.2f | %.2f | %.2f | %.2f |"
            % (
                LABELS[m],
                x["s"],
                ", ".join("%.1f" % v for v in x["all"]),
                "%.1f" % x["internal_s"] if x["internal_s"] is not None else "",
                mb(x["bytes"]),
                ratio(x["s"], floor_b),
                ratio(x["s"], floor_z1),
                ratio(gz, x["s"]),
                ratio(x["bytes"], b["runbook"]["bytes"]),
            )
        )
    floor_r = r["raw_restore_j2"]["s"]
    lines += [
        "",
        "| restore method | median s | runs s | module-internal s | s / raw `pg_restore -j2` |",
        "|---|---:|---|---:|---:|",
    ]
    for m in RESTORE:
        x = r[m]
        label = LABELS["runbook_r" if m == "runbook" else m]
        lines.append(
            "| %s | %.1f | %s | %s | %.2f |"
            % (
                label,
                x["s"],
                ", ".join("%.1f" % v for v in x["all"]),
                "%.1f" % x["internal_s"] if x["internal_s"] is not None else "",
                ratio(x["s"], floor_r),
            )
        )
    pb, pr = b["pg_backup"], r["pg_restore"]
    lines += [
        "",
        "Targets (issues 4/5): pg_backup ≤ 1.15x raw `pg_dump -Fd -j2`: wall %.2fx, module-internal %.2fx (%s); "
        "≥ 3x faster than `pg_dump | gzip`: wall %.2fx, internal %.2fx (%s), at size %.2fx of it (%s). "
        "pg_restore ≤ 1.15x raw `pg_restore -j2`: wall %.2fx, internal %.2fx (%s). "
        "ansible-playbook start-up with one no-op task: %.1f s."
        % (
            ratio(pb["s"], floor_b),
            ratio(pb["internal_s"], floor_b),
            verdict(ratio(pb["s"], floor_b) <= 1.15, ratio(pb["internal_s"], floor_b) <= 1.15),
            ratio(gz, pb["s"]),
            ratio(gz, pb["internal_s"]),
            verdict(ratio(gz, pb["s"]) >= 3, ratio(gz, pb["internal_s"]) >= 3),
            ratio(pb["bytes"], b["runbook"]["bytes"]),
            "no worse"
            if pb["bytes"] <= b["runbook"]["bytes"]
            else "larger by %.0f %%" % (100 * (ratio(pb["bytes"], b["runbook"]["bytes"]) - 1)),
            ratio(pr["s"], floor_r),
            ratio(pr["internal_s"], floor_r),
            verdict(ratio(pr["s"], floor_r) <= 1.15, ratio(pr["internal_s"], floor_r) <= 1.15),
            noop_s,
        ),
        "",
    ]
    return lines, {"backup": b, "restore": r}


def verdict(wall_ok, internal_ok):
    if wall_ok:
        return "**met**"
    if internal_ok:
        return "met by the module, missed end to end"
    return "**missed**"


NOTES = [
    "### How to read this",
    "",
    "- Size of pg_backup = its `dump/` directory (the backup also holds `globals.sql` and the manifest, a few kB).",
    "- Wall = `ansible-playbook` of one task (controller start-up, fork, module transfer: the no-op figure above);",
    "  module-internal = the module's own `duration_s`. pg_backup: lock, space pre-flight, `docker inspect`,",
    "  server facts, canary row counts before and after, `pg_dump --version`, the sidecar `pg_dump`,",
    "  `pg_dumpall --globals-only`, `pg_restore --list` in a second sidecar, sha256 of every file, fsync, rename.",
    "  pg_restore: checksums + `--list`, globals, `docker cp` of the directory into the container, `pg_restore -j2`",
    "  into `<db>__ner11_restore`, canary counts, newer-data check, restore_log row, rename.",
    "- The raw floors run exactly the way pg_backup runs pg_dump (a sidecar of the DB image in the DB",
    "  container's network namespace, over 127.0.0.1 with a passfile), so the comparison isolates the module.",
    "- The page cache is warm for every method alike (the machine is shared; caches were not dropped).",
    "- The generated data compresses far better than the ENVIRONMENT.md anchor (gzip dump ≈ 3 % of",
    "  `pg_database_size` here vs ≈ 8 % there): pgbench's `filler` is blank-padded and the NER text comes from",
    "  a small vocabulary. gzip is therefore cheap here, which makes the runbooks' single-threaded",
    '  `pg_dump | gzip` relatively fast and the "3x faster" target harder than on md5/jsonb-heavy data.',
    "",
    "### Why targets are missed, and by how much",
    "",
    "- A module run carries fixed costs that raw pg_dump/pg_restore do not: ≈1.2 s of `ansible-playbook`",
    "  start-up (measured: one no-op task) and ≈1-2 s of verification and docker calls inside the module",
    "  (a second sidecar for `pg_restore --list`, several `docker exec`s for facts, row counts, version and",
    "  globals). On the 100 MB database the raw dump takes < 1 s, so these fixed costs dominate and every",
    "  100 MB target is missed; they are what buys a verified, checksummed, atomically published backup.",
    "- \"Within 1.15x of raw `pg_dump -Fd -j2`\": the issue's floor uses pg_dump's default gzip level; pg_backup",
    "  runs `-Z1`, which is itself ≈1.9x faster than that floor at 1 GB, so the module meets the target there",
    "  with its overhead included. Against `-Fd -j2 -Z1` (the exact command it wraps) it is slower by the",
    "  fixed costs above.",
    '- "≥ 3x faster than `pg_dump | gzip`": the floor `-Fd -j2 -Z1` reaches ≈3.8x at 1 GB; the module\'s',
    "  fixed costs bring it to ≈2-2.5x on this compressible data. The gap closes as the database grows",
    "  (the fixed costs stay, the dump time grows). The size is ≈9-10 % larger than gzip -6 (level 1).",
    "- pg_restore: at 1 GB the module itself is within 1.15x of raw `pg_restore -j2`; the `docker cp` of the",
    "  dump directory into the container and the checks are the difference, `ansible-playbook` start-up the rest.",
    "",
]

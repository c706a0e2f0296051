"""A scripted stand-in for the database container (unit tests only): answers docker/psql commands.

Unit tests (also under Python 3.9 in the Debian 11 image) have no PostgreSQL and no Docker
engine, so the cores' I/O paths run here against scripted answers. The SAME paths run
against a real server in tests/integration (test_backup.py, test_restore*.py,
test_identifiers.py); this double only lets the unit tests reach every branch.

Files a dump command would write (``... pg_dump ... > path``) are written, so the
real catalog code (hashes, publish, verify) runs on real files.

A sidecar running a script (``docker run ... --entrypoint sh <image> -c <script> <name> <args>``,
pg_backup's one backup sidecar) runs that very script with the local ``sh``, its ``-e``
environment and stand-ins for pg_dumpall, pg_dump and pg_restore first on the PATH: the
script's steps, exit codes and quoting are real; only the client tools are scripted
(``toc``: what ``pg_restore --list`` prints; ``fail``: {tool: (rc, stderr)} makes one fail;
``sidecar_tools``: each tool's command line, with the connection it got from the environment).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading

TOC = ";\n; Archive created at 2026-11-29\n;\n1; 2615 2200 SCHEMA - public pg_database_owner\n2; 1259 16384 TABLE public t postgres\n"


def backup_params(tmp_path, counts, **extra):
    """pg_backup's parameters for the unit tests' backups of ``my-db`` in container ``pg1`` (gzip:1, daily)."""
    params = {
        "container": "pg1",
        "db_name": "my-db",
        "backup_dir": str(tmp_path / "b"),
        "canary_tables": list(counts),
        "period": "daily",
        "compression": "gzip:1",
    }
    params.update(extra)
    return params


class ScriptedServer:
    """A ``run_command``-shaped callable. ``answers``: [(needle, reply)], first match wins.

    ``needle`` is a substring of the command line plus its stdin (or a callable of that text);
    ``reply`` is ``(rc, stdout, stderr)`` or a callable ``(line, data) -> (rc, stdout, stderr)``.
    """

    def __init__(self, counts=None, databases=(), roles=("postgres",), free_kb=10 * 1024 * 1024):
        self.counts = dict(counts or {})
        self.databases = set(databases)
        self.roles = list(roles)
        self.free_kb = free_kb
        # What pg_restore's pre-flight reads: data_directory ('' as for a login without
        # pg_read_all_settings) and the image's $PGDATA the container scan runs df on.
        self.data_directory = "/var/lib/postgresql/data"
        self.pgdata = "/var/lib/postgresql/data"
        self.calls = []
        self.answers = []
        self.toc = TOC
        self.fail = {}
        self.sidecar_tools = []
        # the argv of the call being answered, per thread (pg_backup runs reads at once)
        self._local = threading.local()

    def answer(self, needle, reply):
        """Put an answer in front of the others (a test's special case)."""
        self.answers.insert(0, (needle, reply))

    def lines(self):
        """Each command with its stdin (the SQL), one string per command."""
        return [line + ("\n" + data if data else "") for line, data in self.calls]

    def __call__(self, args, data=None, environ_update=None, **_kwargs):
        line = args if isinstance(args, str) else " ".join(args)  # unquoted: tests look for SQL text in it
        if isinstance(args, list) and args[:3] == ["/bin/bash", "-o", "pipefail"]:
            line = args[-1]
        self.calls.append((line, data))
        self._local.argv = list(args) if isinstance(args, list) else None
        text = line + "\n" + (data or "")
        for needle, reply in self.answers + self._defaults():
            if needle(text) if callable(needle) else needle in text:
                return reply(line, data) if callable(reply) else reply
        return 0, "", ""

    # -- the default answers of a healthy server ------------------------------------------
    def _defaults(self):
        return [
            (lambda t: "--entrypoint sh " in t, self._run_sidecar_script),
            ("{{.State.Status}}|{{.Image}}", (0, "running|sha256:0123abcd\n", "")),
            ("server_version_num", lambda line, data: (0, "15.4\x1f150004\x1f%d\n" % (8 * 1048576), "")),
            ("count(*) AS c FROM", self._canary_counts),
            ("pg_dump --version", (0, "pg_dump (PostgreSQL) 15.4\n", "")),
            ("ps -aq --filter", (0, "", "")),
            (lambda t: " > " in t and ("pg_dump" in t or "pg_dumpall" in t), self._write_dump),
            ("--entrypoint pg_dump", self._write_directory_dump),
            ("--list", lambda line, data: (0, self.toc, "")),
            ("'ner11:datadir'", self._preflight),
            ("/proc/[0-9]*", self._scan),
            ("datallowconn", (0, "", "")),
            ("SELECT 1 FROM pg_database WHERE datname", self._db_exists),
            ("SHOW data_directory", (0, "/var/lib/postgresql/data\n", "")),
            (" df -P -k ", self._df),
            ("rolname FROM pg_roles", lambda line, data: (0, "".join(r + "\n" for r in self.roles), "")),
            ("mktemp -d", (0, "/tmp/ner11-restore-x-abc\n", "")),
        ]

    def _canary_counts(self, line, data):
        rows = []
        for table in re.findall(r"SELECT '([^']+)', CASE WHEN", data or ""):
            value = self.counts.get(table)
            rows.append("%s\x1f%s\n" % (table, "" if value is None else value))
        return 0, "".join(rows), ""

    def _write_dump(self, line, data):
        path = shlex.split(line.rsplit(" > ", 1)[1])[0]
        with open(path, "wb") as fh:
            fh.write(b"PGDMP" + b"\0" * 300 if "pg_dump " in line else b"CREATE ROLE app;\n")
        return 0, "", ""

    def _write_directory_dump(self, line, data):
        """``pg_dump -Fd -f <dir>`` in a sidecar: a directory with toc.dat and one data file."""
        words = line.split()
        path = words[words.index("-f") + 1]
        os.makedirs(path)
        for name, size in (("toc.dat", 200), ("3001.dat.gz", 100)):
            with open(os.path.join(path, name), "wb") as fh:
                fh.write(b"\0" * size)
        return 0, "", ""

    # -- the sidecar script: the real script, scripted client tools ------------------------------
    _TOOL = """#!/bin/sh
echo "$(basename "$0") $* [PGHOST=${PGHOST:-} PGPORT=${PGPORT:-} PGUSER=${PGUSER:-} PGPASSFILE=${PGPASSFILE:-}]" >> "$STUB_DIR/log"
if [ -z "${PGPASSFILE:-}" ] || [ -z "${PGHOST:-}" ]; then echo "$(basename "$0"): error: fe_sendauth: no password supplied" >&2; exit 1; fi
if [ -f "$STUB_DIR/$(basename "$0").fail" ]; then cat "$STUB_DIR/$(basename "$0").err" >&2; exit "$(cat "$STUB_DIR/$(basename "$0").fail")"; fi
out=
while [ $# -gt 0 ]; do case "$1" in -f) out=$2; shift;; esac; last=$1; shift; done
case "$(basename "$0")" in
  pg_dumpall) printf 'CREATE ROLE app;\n' > "$out" ;;
  pg_dump) mkdir "$out" && head -c 200 /dev/zero > "$out/toc.dat" && head -c 100 /dev/zero > "$out/3001.dat.gz" ;;
  pg_restore) [ -f "$last/toc.dat" ] || { echo "pg_restore: error: could not open input file \"$last/toc.dat\"" >&2; exit 1; }
              cat "$STUB_DIR/toc" ;;
esac
"""

    def _run_sidecar_script(self, line, data):
        argv = self._local.argv
        env = {}
        entrypoint = argv.index("--entrypoint")
        for index, word in enumerate(argv[:entrypoint]):
            if word == "-e":
                key, _sep, value = argv[index + 1].partition("=")
                env[key] = value
        script_args = argv[entrypoint + 3 :]  # after: --entrypoint sh <image>
        stubs = tempfile.mkdtemp(prefix="pg-double-")
        try:
            for tool in ("pg_dumpall", "pg_dump", "pg_restore"):
                path = os.path.join(stubs, tool)
                with open(path, "w") as fh:
                    fh.write(self._TOOL)
                os.chmod(path, 0o700)
                if tool in self.fail:
                    rc, err = self.fail[tool]
                    with open(path + ".fail", "w") as fh:
                        fh.write(str(rc))
                    with open(path + ".err", "w") as fh:
                        fh.write(err + "\n")
            with open(os.path.join(stubs, "toc"), "w") as fh:
                fh.write(self.toc)
            env.update({"PATH": stubs + os.pathsep + os.environ.get("PATH", ""), "STUB_DIR": stubs})
            proc = subprocess.run(["sh"] + script_args, env=env, capture_output=True, text=True, check=False)
            if os.path.exists(os.path.join(stubs, "log")):
                with open(os.path.join(stubs, "log")) as fh:
                    self.sidecar_tools += fh.read().splitlines()
            return proc.returncode, proc.stdout, proc.stderr
        finally:
            shutil.rmtree(stubs, ignore_errors=True)

    def _preflight(self, line, data):
        """pg_restore's one pre-flight psql call: the databases (no leftovers), data_directory, the roles."""
        rows = ["%s\x1ft\x1f" % name for name in sorted(self.databases)]
        rows.append("ner11:datadir\x1f%s" % (self.data_directory or ""))
        rows += ["ner11:role\x1f%s" % role for role in self.roles]
        return 0, "\n".join(rows) + "\n", ""

    def _scan(self, line, data):
        """The container scan: no client processes, no dump copies; df of $PGDATA (when set) and /tmp."""
        rows = []
        for path in ([self.pgdata] if self.pgdata else []) + ["/tmp"]:
            rows.append("df\t%s\toverlay 100000000 0 %d 1%% /" % (path, self.free_kb))
        return 0, "\n".join(rows) + "\n", ""

    def _db_exists(self, line, data):
        name = re.search(r"datname = '([^']*)'", data or "").group(1)
        return 0, "1\n" if name in self.databases else "", ""

    def _df(self, line, data):
        paths = line.split(" df -P -k ", 1)[1].split()
        rows = ["Filesystem 1024-blocks Used Available Capacity Mounted on"]
        rows += ["overlay 100000000 0 %d 1%% /" % self.free_kb for _p in paths]
        return 0, "\n".join(rows) + "\n", ""

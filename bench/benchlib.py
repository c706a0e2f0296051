"""Shared helpers of the backup/restore/playbook benchmarks (bench/run.py).

The bench stack is deployed with the integration-test helpers of
tests/integration/conftest.py (``Stack``, ``run_playbook``, ``run_module``): a unique
project ``bench<hex>`` on free ports, labelled ``io.ner11.project=<project>`` and
``io.ner11.test=1``, removed at the end by that label.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".collections"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from conftest import (  # noqa: E402,F401 - re-exported for the bench modules
    BIN,
    Stack,
    ansible_env,
    docker,
    remove_project,
    run_module,
    run_playbook,
    unique_project,
)

RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
DATA = os.path.join(ROOT, "bench", "data")


@contextlib.contextmanager
def bench_stack(prefix, keep=False, deploy=True):
    """A dedicated bench stack (project ``<prefix><hex>``, labelled, free ports) and its work
    directory bench/data/<project>; both removed at the end unless ``keep``. With ``deploy`` the
    stack is deployed first (the bench exits when that fails); without, the caller deploys it
    (e.g. to time the deploy)."""
    stack = Stack(unique_project(prefix))
    work = os.path.join(DATA, stack.project)
    try:
        stack.remove()
        if deploy:
            res = stack.deploy()
            if res.rc != 0:
                sys.exit("deploying the bench stack failed: %s" % res.explain())
        yield stack, work
    finally:
        if not keep:
            stack.remove()
            shutil.rmtree(work, ignore_errors=True)


def load():
    """The 1-minute load average."""
    return os.getloadavg()[0]


def loads_text(start, end):
    return "load %.1f → %.1f" % (start, end)


def wait_for_load(max_load, wait_minutes, log=print):
    """Sleep in 60 s steps while the 1-minute load is above max_load (at most wait_minutes).

    Returns (waited_s, load_now); the caller records the load either way.
    """
    started = time.monotonic()
    while load() > max_load and time.monotonic() - started < wait_minutes * 60:
        log(
            "load %.1f > %.1f: waiting 60 s (%.0f of %d min)"
            % (load(), max_load, (time.monotonic() - started) / 60, wait_minutes)
        )
        time.sleep(60)
    return time.monotonic() - started, load()


def sh(line, timeout=3600, check=True):
    """Run a bash line with pipefail; raise with stderr on failure."""
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError("command failed rc=%s: %s\n%s" % (proc.returncode, line, proc.stderr[-2000:]))
    return proc


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - started, result


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def tree_size(path):
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(base, name))
    return total


def mb(nbytes):
    return nbytes / 1e6


def psql(stack, sql, db=None, timeout=3600):
    """SQL inside the bench stack's postgres container (local socket, no password)."""
    cmd = [
        "docker",
        "exec",
        "-i",
        "-u",
        "postgres",
        stack.container("postgres"),
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
    ]
    cmd += ["-d", db or stack.model["db_name"]]
    proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("psql failed: %s\n%s" % (sql[:300], proc.stderr[-2000:]))
    return proc.stdout.strip()


def db_image(stack):
    return docker("inspect", "--format", "{{.Image}}", stack.container("postgres")).stdout.strip()


def sidecar(stack, workdir, tool, args, mounts):
    """A shell line running ``tool`` of the DB image in the DB container's network namespace.

    Exactly how pg_backup's raw pg_dump sidecar is built (plugins/module_utils/pgbackup.py
    ``dump_command``; the module runs that pg_dump inside its one sidecar, ``sidecar_command``): ``docker run --rm --network container:<db> --user <uid>:<gid>``, the
    password in a read-only 0600 passfile, ``-h 127.0.0.1``.
    """
    passfile = os.path.join(workdir, "pgpass")
    if not os.path.exists(passfile):
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("*:*:*:postgres:%s\n" % stack.password)
    argv = ["docker", "run", "--rm", "--network", "container:%s" % stack.container("postgres")]
    argv += ["--user", "%d:%d" % (os.getuid(), os.getgid())]
    argv += ["--label", "io.ner11.project=%s" % stack.project]
    for host_path, mode in mounts:
        argv += ["-v", "%s:%s%s" % (host_path, host_path, mode)]
    argv += ["-v", "%s:/run/ner11/pgpass:ro" % passfile, "-e", "PGPASSFILE=/run/ner11/pgpass"]
    argv += ["--entrypoint", tool, db_image(stack), "-h", "127.0.0.1", "-p", "5432", "-U", "postgres"] + list(args)
    return shlex.join(argv)


def write_section(title, lines, path=RESULTS):
    """Replace (or append) the ``## title`` section of RESULTS.md; other sections are kept."""
    heading = "## " + title
    section = "\n".join([heading, ""] + list(lines)).rstrip("\n") + "\n"
    text = "# Benchmark results\n\n"
    if os.path.exists(path):
        with open(path) as fh:
            text = fh.read()
    if heading + "\n" in text:
        start = text.index(heading + "\n")
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)

"""Shared fixtures for integration tests against the real Docker engine.

Everything a test creates is named after a unique project (``itNNNNN...``) and
labelled ``io.ner11.project=<project>``; teardown removes it by that label
and by name. Nothing here talks to anything but 127.0.0.1 and the project's
own containers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".collections")
BIN = os.path.dirname(sys.executable)
LOCAL_INVENTORY = os.path.join(ROOT, "inventories", "local")
TEST_LABEL = "io.ner11.test=1"

if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)


def ansible_env(extra=None):
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
            "PATH": BIN + os.pathsep + env.get("PATH", ""),
        }
    )
    env.update(extra or {})
    return env


class PlaybookResult:
    """The parsed ansible.posix.json output of one ansible-playbook run."""

    def __init__(self, proc, data):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.data = data or {}
        self.stats = self.data.get("stats", {})
        self.custom_stats = self.data.get("custom_stats", {}) or self.data.get("global_custom_stats", {})

    def changed(self, host="localhost"):
        return self.stats.get(host, {}).get("changed")

    def failures(self, host="localhost"):
        return self.stats.get(host, {}).get("failures", 0) + self.stats.get(host, {}).get("unreachable", 0)

    def tasks(self, host="localhost"):
        """(task name, result) for every task that ran on host, in order."""
        out = []
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                res = task.get("hosts", {}).get(host)
                if res is not None:
                    out.append((task["task"]["name"], res))
        return out

    def task(self, name, host="localhost"):
        """The last result of the task whose name contains ``name``."""
        found = [res for tname, res in self.tasks(host) if name in tname]
        if not found:
            raise AssertionError("no task %r ran; tasks: %s" % (name, [t for t, _res in self.tasks(host)]))
        return found[-1]

    def changed_tasks(self, host="localhost"):
        return [name for name, res in self.tasks(host) if res.get("changed")]

    def explain(self):
        failed = [(n, r.get("msg")) for n, r in self.tasks() if r.get("failed") and not r.get("ignore_errors")]
        return "rc=%s failed=%s stderr=%s" % (self.rc, failed, self.stderr[-2000:])


def run_playbook(playbook, extra_vars=None, check=False, inventory=LOCAL_INVENTORY, limit=None, env=None, timeout=900):
    """Run a playbook of this collection (path relative to the repo) and parse its JSON output."""
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", inventory, os.path.join(ROOT, playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd += ["--check", "--diff"]
    if limit:
        cmd += ["--limit", limit]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(env), cwd=ROOT, timeout=timeout, check=False)
    start = proc.stdout.find("{")
    try:
        data = json.loads(proc.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    return PlaybookResult(proc, data)


def run_module(module, args, check=False, diff=False, timeout=600, env=None, play_vars=None):
    """Run one module of this collection on localhost; returns its result dict.

    ``play_vars``: variables of the play (as a job's extra vars would set them)."""
    play = {
        "name": "run one module",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [{"name": "the module", module: args, "register": "__r", "ignore_errors": True}],
    }
    if play_vars:
        play["vars"] = play_vars
    path = os.path.join(ROOT, "build", "it-play-%s.json" % uuid.uuid4().hex[:8])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump([play], fh)
    try:
        cmd = [os.path.join(BIN, "ansible-playbook"), "-i", LOCAL_INVENTORY, path]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(env), cwd=ROOT, timeout=timeout, check=False)
    finally:
        os.unlink(path)
    start = proc.stdout.find("{")
    try:
        data = json.loads(proc.stdout[start:])
    except (json.JSONDecodeError, ValueError):
        raise AssertionError(
            "unparsable ansible output rc=%s: %s %s" % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
        )
    res = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
    res["_stdout"] = proc.stdout
    res["_stderr"] = proc.stderr
    return res


def docker(*args, check=True, timeout=300):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("docker %s failed: %s" % (" ".join(args), proc.stderr))
    return proc


# `make integration` runs the test files in parallel (pytest-xdist, one file per worker). Each
# worker takes its ports from its own block below the kernel's ephemeral range (32768+), so two
# workers never pick the same port between the bind check here and Docker publishing it.
_PORT_BLOCK = 2000
_PORT_BASE = 20000
_ports_given = set()


def _worker_index():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = worker[2:] if worker.startswith("gw") else ""
    return int(digits) % 6 if digits.isdigit() else 0


def free_port():
    """A 127.0.0.1 port that is free now, from this worker's own block."""
    start = _PORT_BASE + _worker_index() * _PORT_BLOCK
    # A random first port: pytest processes run side by side outside xdist share block 0.
    first = random.randrange(_PORT_BLOCK)
    for i in range(_PORT_BLOCK):
        port = start + (first + i) % _PORT_BLOCK
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise AssertionError("no free port left in %s-%s" % (start, start + _PORT_BLOCK - 1))


def unique_project(prefix="it"):
    return "%s%s" % (prefix, uuid.uuid4().hex[:8])


def remove_project(project, volumes=True):
    """Remove every container, volume and network labelled with this project."""
    ids = docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % project, check=False).stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False)
    if volumes:
        vols = docker("volume", "ls", "-q", "--filter", "label=io.ner11.project=%s" % project, check=False).stdout.split()
        if vols:
            docker("volume", "rm", "-f", *vols, check=False)
    nets = docker("network", "ls", "-q", "--filter", "label=io.ner11.project=%s" % project, check=False).stdout.split()
    if nets:
        docker("network", "rm", *nets, check=False)
    shutil.rmtree("/var/lib/ner11/%s" % project, ignore_errors=True)


def stack_vars(project, ports=None):
    """Extra vars for a stack under a unique project name on free ports."""
    ports = ports or {"postgres": free_port(), "api": free_port(), "frontend": free_port()}
    container = {"postgres": 5432, "api": 8000, "frontend": 3000}
    return {
        "ner11_stack": {
            "project": project,
            "labels": {"io.ner11.test": "1"},
            "services": {s: {"ports": [{"host": ports[s], "container": container[s]}]} for s in container},
        },
        "ner11_db_password": "it-" + uuid.uuid4().hex,
    }


class Stack:
    """A deployed reference stack owned by a test (or a test session)."""

    def __init__(self, project):
        self.project = project
        self.vars = stack_vars(project)
        from ansible_collections.ner11.ops.plugins.module_utils.stack_model import normalize

        self.model = normalize(self.vars["ner11_stack"])
        self.password = self.vars["ner11_db_password"]

    @property
    def api_url(self):
        return self.model["api_url"]

    @property
    def frontend_url(self):
        return self.model["frontend_url"]

    def container(self, service):
        return self.model["containers"][service]

    def deploy(self, check=False, extra=None):
        ev = dict(self.vars)
        ev.update(extra or {})
        return run_playbook("playbooks/deploy.yml", ev, check=check)

    def psql(self, sql, db=None):
        """Run SQL inside the postgres container over its local socket (no password)."""
        proc = docker(
            "exec", "-u", "postgres", self.container("postgres"),
            "psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", db or self.model["db_name"], "-c", sql,
        )  # fmt: skip
        return proc.stdout.strip()

    def remove(self):
        remove_project(self.project)


def ledger_lines(path):
    """The records of a run ledger file (none when it does not exist)."""
    try:
        with open(path) as fh:
            return [json.loads(raw) for raw in fh if raw.strip()]
    except FileNotFoundError:
        return []


def unmount(path, tries=20):
    """Unmount a test's tmpfs, also when a sidecar that bind-mounted it is still being removed.

    A busy mount is retried for a few seconds, then detached lazily, so no test leaves a mount
    behind on the machine (pytest could not remove its temporary directory otherwise).
    """
    for _attempt in range(tries):
        if subprocess.run(["umount", path], capture_output=True, check=False).returncode == 0:
            return
        if subprocess.run(["mountpoint", "-q", path], check=False).returncode != 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", path], capture_output=True, check=False)


def wait_postgres(container, db, deadline_s=60):
    """Wait until the reference PostgreSQL image's real server answers.

    Over TCP, not the socket: the entrypoint's initdb server listens on the socket only and is
    then stopped, so a socket probe can succeed just before the socket disappears for a moment.
    """
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        ready = docker("exec", "-u", "postgres", container, "pg_isready", "-h", "127.0.0.1", "-d", db, check=False)
        if ready.returncode == 0:
            return
        time.sleep(0.5)
    logs = docker("logs", container, check=False)
    raise AssertionError(
        "PostgreSQL in %s did not become ready within %ss: %s" % (container, deadline_s, (logs.stdout + logs.stderr)[-2000:])
    )


class StandalonePostgres:
    """One container of the reference PostgreSQL image (no api/frontend), published on 127.0.0.1."""

    db = "ner11_db"

    def __init__(self, prefix):
        self.project = unique_project(prefix)
        self.name = "%s-postgres-1" % self.project
        self.port = free_port()
        self.password = "it-" + uuid.uuid4().hex

    def start(self, deadline_s=60):
        docker(
            "run", "-d", "--name", self.name,
            "--label", "io.ner11.project=%s" % self.project, "--label", "io.ner11.test=1",
            "-e", "POSTGRES_PASSWORD=%s" % self.password, "-e", "POSTGRES_DB=%s" % self.db,
            "-p", "127.0.0.1:%d:5432" % self.port, "ner11/postgres:ref",
        )  # fmt: skip
        wait_postgres(self.name, self.db, deadline_s)

    def sql(self, sql):
        """Run SQL over the container's local socket (no password)."""
        proc = docker("exec", "-u", "postgres", self.name, "psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.db, "-c", sql)
        return proc.stdout.strip()

    def remove(self):
        remove_project(self.project)


def wait_http(url, deadline_s=60, expect=200):
    import urllib.error
    import urllib.request

    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - 127.0.0.1 only
                if resp.status == expect:
                    return resp.read()
                last = resp.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError("%s did not answer %s within %ss: %s" % (url, expect, deadline_s, last))


# The longest files first: pytest-xdist (--dist loadfile) hands files to workers in collection
# order, so a long file started last would run alone at the end. Ordered from the durations CI
# prints (`--durations`); a file not named here runs after these, in its usual order.
LONGEST_FIRST = (
    "test_awx_contract.py",
    "test_maintenance.py",
    "test_fleet.py",
    "test_dr.py",
    "test_backup.py",
    "test_restore_interrupted.py",
    "test_restore_state.py",
    "test_adopt_volumes.py",
    "test_incident.py",
    "test_restore.py",
    "test_adopt_v2.py",
    "test_adopt_v1names.py",
    "test_service.py",
    "test_stack.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        name = os.path.basename(str(item.fspath))
        return rank.get(name, len(rank))

    items.sort(key=key)  # stable: tests keep their order inside a file


@pytest.fixture(scope="session", autouse=True)
def docker_engine():
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail("no Docker engine answers: run `make docker` (scripts/bootstrap-docker.sh) first")
    for image in ("ner11/postgres:ref", "ner11/ner-api:ref", "ner11/frontend:ref"):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60, check=False).returncode != 0:
            pytest.fail("image %s is missing: run `make images` first" % image)


@pytest.fixture(scope="session")
def shared_stack():
    """One healthy reference stack for read-only tests of the whole session.

    Tests that stop, corrupt or restore must create their own (``own_stack``).
    """
    stack = Stack(unique_project("its"))
    stack.remove()
    result = stack.deploy()
    if result.rc != 0:
        stack.remove()
        pytest.fail("deploying the shared stack failed: %s" % result.explain())
    yield stack
    stack.remove()


@pytest.fixture
def own_stack():
    """A stack this test may break; removed afterwards."""
    stacks = []

    def make(deploy=True):
        stack = Stack(unique_project("itx"))
        stack.remove()
        stacks.append(stack)
        if deploy:
            result = stack.deploy()
            assert result.rc == 0, result.explain()
        return stack

    yield make
    for stack in stacks:
        stack.remove()


def pytest_terminal_summary(terminalreporter):
    """Each file's cost: setup + call + teardown of its tests, summed (with xdist, worker time).

    This is the figure each issue's time budget is judged by; the wall time of the whole suite is
    lower because files run side by side on the workers.
    """
    per_file = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            duration = getattr(report, "duration", None)
            if not nodeid or duration is None or getattr(report, "when", None) not in ("setup", "call", "teardown"):
                continue
            per_file[nodeid.split("::")[0]] = per_file.get(nodeid.split("::")[0], 0.0) + duration
    if not per_file:
        return
    terminalreporter.write_sep("=", "time per test file (setup + call + teardown, summed)")
    for path, seconds in sorted(per_file.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line("%8.1f s  %5.1f min  %s" % (seconds, seconds / 60, path))
    total = sum(per_file.values())
    terminalreporter.write_line("%8.1f s  %5.1f min  all files" % (total, total / 60))

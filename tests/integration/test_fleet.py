"""Multi-host on real, separate Docker engines (issue 14, docs/multi-host.md).

One fleet per module: four engines started by scripts/fleet.sh (db, api1, api2, web), and a
fifth (api3) that joins the inventory only for the max_fail_percentage test; each an
inventory host with a local connection whose Python runs with DOCKER_HOST set to that host's
own engine, so every module, community.docker call and `docker` command of the host talks
only to its engine - as on separate machines, where each host's default socket is its own.
Each engine publishes on its own bridge address; hosts reach each other there. Teardown
(scripts/fleet.sh down) removes the engines, bridges and rules even when a test fails, and the
fixture first removes what killed earlier runs left (scripts/fleet.sh prune, this file's prefix).

The scenarios share the fleet, in file order: deploy, startup after a full stop (no container
re-created), health, balancing with one api host down, backup per host, restore with the writers
of every host stopped first, a rolling restart of the api hosts with a probe loop through the
frontend, max_fail_percentage (a failed batch stops the roll at 0 and the roll goes on to the next
batch at 50), and last DR onto a fresh database host (a new engine on the same address) while the
api hosts reconnect without being touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import BIN, ROOT, free_port, run_playbook, wait_http

FLEET = os.path.join(ROOT, "scripts", "fleet.sh")
# Engine names of this file start with it: prune removes only this file's leftovers.
PREFIX = "itf"
# An engine of this prefix older than this (or whose owning pytest is gone) is a leftover.
LEFTOVER_AGE_S = 3600
HOSTS = (
    # inventory host, group, service, image
    ("db", "ner11_db", "postgres", "ner11/postgres:ref"),
    ("api1", "ner11_api", "api", "ner11/ner-api:ref"),
    ("api2", "ner11_api", "api", "ner11/ner-api:ref"),
    ("web", "ner11_frontend", "frontend", "ner11/frontend:ref"),
)
# Its engine starts with the others; it joins the inventory (ner11_api) only in the max-fail test,
# so every other scenario runs on inventories/example's shape (1 db, 2 api, 1 frontend).
SPARE = (("api3", "ner11_api", "api", "ner11/ner-api:ref"),)
STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}
DB = "ner11_db"


def _tool(name):
    return shutil.which(name) or next((p for p in ("/usr/sbin/" + name, "/sbin/" + name) if os.path.exists(p)), None)


_MISSING = [t for t in ("dockerd", "ip", "iptables", "flock") if _tool(t) is None]
# Runs in CI. Skipped only where a fleet cannot exist: not root, or a tool it needs is missing
# (scripts/bootstrap-docker.sh installs them on Debian).
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root (bridges and engines)"),
    pytest.mark.skipif(bool(_MISSING), reason="the fleet needs %s (make docker installs them)" % ", ".join(_MISSING)),
]


def _free_engine_numbers(count):
    """Engine numbers whose bridge does not exist (another fleet may run beside this one)."""
    free = [n for n in range(1, 16) if not os.path.exists("/sys/class/net/br-nf%d" % n)]
    if len(free) < count:
        pytest.skip("fewer than %d free fleet engine numbers (br-nf1..15 in use)" % count)
    # Start from a random free one so two fleets started at the same moment rarely pick alike.
    start = uuid.uuid4().int % len(free)
    return (free[start:] + free[:start])[:count]


class Fleet:
    def __init__(self, tmp):
        tag = uuid.uuid4().hex[:6]
        self.project = "itf" + tag
        self.tmp = tmp
        numbers = _free_engine_numbers(len(HOSTS) + len(SPARE))
        self.engines = {}
        for (host, group, service, image), n in zip(HOSTS + SPARE, numbers, strict=True):
            self.engines[host] = {
                "group": group,
                "service": service,
                "image": image,
                "engine": "%s%s-%s" % (PREFIX, tag, host),
                "n": n,
                "address": "10.231.%d.1" % n,
                "sock": "unix:///run/ner11-fleet/%s%s-%s.sock" % (PREFIX, tag, host),
            }
        # The inventory's hosts (the spare joins later).
        self.hosts = {host: self.engines[host] for host, *_rest in HOSTS}
        self.ports = {"postgres": free_port(), "api": free_port(), "frontend": free_port()}
        self.password = "it-" + uuid.uuid4().hex
        self.inventory = os.path.join(tmp, "inventory")

    def spec(self, host):
        h = self.engines[host]
        return "%s:%d" % (h["engine"], h["n"])

    def _owned(self):
        # prune treats an engine whose owner process is gone as a leftover: the owner is this pytest.
        return dict(os.environ, NER11_FLEET_OWNER=str(os.getpid()))

    @staticmethod
    def prune():
        """Tear down this file's engines that killed earlier runs left (their owner is gone)."""
        proc = subprocess.run(  # noqa: S603 - the project's own script
            ["bash", FLEET, "prune", PREFIX, str(LEFTOVER_AGE_S)], capture_output=True, text=True, timeout=600, check=False
        )
        assert proc.returncode == 0, "fleet.sh prune failed: %s" % proc.stderr[-2000:]

    def up(self):
        env = self._owned()
        procs = [
            subprocess.Popen(  # noqa: S603 - the project's own script
                ["bash", FLEET, "up", self.spec(host), h["image"]],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for host, h in self.engines.items()
        ]
        errors = []
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                errors.append(err[-2000:])
        if errors:
            raise AssertionError("fleet.sh up failed: %s" % errors)

    def renew(self, host):
        """The host is lost: a fresh engine (empty data root) on the same address, images loaded."""
        proc = subprocess.run(  # noqa: S603 - the project's own script
            ["bash", FLEET, "renew", self.spec(host), self.engines[host]["image"]],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=self._owned(),
        )
        assert proc.returncode == 0, "fleet.sh renew failed: %s" % proc.stderr[-2000:]

    def down(self):
        proc = subprocess.run(  # noqa: S603
            ["bash", FLEET, "down", *[self.spec(h) for h in self.engines]],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        return proc

    def write_inventory(self):
        os.makedirs(os.path.join(self.inventory, "host_vars"), exist_ok=True)
        for host in self.engines:
            self._write_host(host)
        self._write_groups()

    def _write_groups(self):
        groups = {}
        for host, h in self.hosts.items():
            groups.setdefault(h["group"], {"hosts": {}})["hosts"][host] = None
        with open(os.path.join(self.inventory, "hosts.json"), "w") as fh:
            json.dump({"all": {"children": {"ner11": {"children": groups}}}}, fh)

    def join(self, host):
        """A spare engine's host joins the inventory (its group); returns the deploy of that host alone."""
        self.hosts[host] = self.engines[host]
        self._write_groups()
        return self.play("playbooks/deploy.yml", limit=host)

    def leave(self, host):
        del self.hosts[host]
        self._write_groups()

    def _write_host(self, host):
        container = {"postgres": 5432, "api": 8000, "frontend": 3000}
        h = self.engines[host]
        wrapper = os.path.join(self.tmp, "python-%s" % host)
        with open(wrapper, "w") as fh:
            fh.write('#!/bin/sh\nDOCKER_HOST=%s exec %s "$@"\n' % (h["sock"], os.path.join(BIN, "python")))
        os.chmod(wrapper, 0o700)
        host_vars = {
            # A local connection whose Python (and every docker command it runs) talks to this
            # host's own engine only.
            "ansible_connection": "local",
            "ansible_python_interpreter": wrapper,
            "ner11_address": h["address"],
            "ner11_backup_dir": os.path.join(self.tmp, "backups", host),
            "ner11_backup_metrics_dir": os.path.join(self.tmp, "metrics", host),
            # The hosts share this machine's file system: service.yml's last-session logs (default
            # /var/log/ner11/<project>/) per host, or two api hosts restarted in one batch race on
            # the same file (seen: "mv: cannot stat .../api_last_session.log.tmp").
            "service_log_dir": os.path.join(self.tmp, "logs", host),
            "ner11_stack": {
                "project": self.project,
                "labels": {"io.ner11.test": "1"},
                "bind_address": h["address"],
                "config_dir": os.path.join(self.tmp, "config", host),
                # Five engines share this machine with the other tests: generous deadlines.
                "services": {
                    s: {
                        "ports": [{"host": self.ports[s], "container": container[s]}],
                        "start_timeout": 600,
                        "healthcheck": {"timeout": "20s"},
                    }
                    for s in container
                },
            },
            "ner11_db_password": self.password,
        }
        self.write_host_vars(host, host_vars)

    def host_vars(self, host):
        with open(os.path.join(self.inventory, "host_vars", "%s.json" % host)) as fh:
            return json.load(fh)

    def write_host_vars(self, host, host_vars):
        with open(os.path.join(self.inventory, "host_vars", "%s.json" % host), "w") as fh:
            json.dump(host_vars, fh)

    def engine(self, host, *args, check=True):
        proc = subprocess.run(  # noqa: S603
            ["docker", "-H", self.engines[host]["sock"], *args], capture_output=True, text=True, timeout=300, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError("docker on %s: %s failed: %s" % (host, " ".join(args), proc.stderr))
        return proc.stdout

    def containers(self, host=None):
        """Names of this project's containers on a host's engine (None: the main engine)."""
        args = ["ps", "-a", "--filter", "label=io.ner11.project=%s" % self.project, "--format", "{{.Names}}"]
        if host is None:
            out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=True).stdout  # noqa: S603,S607
        else:
            out = self.engine(host, *args)
        return sorted(out.split())

    def container(self, service):
        return "%s-%s-1" % (self.project, service)

    def state(self, host):
        """(container id, StartedAt) of the host's service container on its own engine."""
        out = self.engine(host, "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", self.container(self.engines[host]["service"]))
        cid, started = out.split()
        return cid, started

    def states(self):
        return {h: self.state(h) for h in self.hosts}

    def psql(self, sql):
        return self.engine(
            "db", "exec", "-u", "postgres", self.container("postgres"), "psql", "-X", "-At", "-d", DB, "-c", sql
        ).strip()

    def url(self, host, path=""):
        service = self.engines[host]["service"]
        return "http://%s:%d%s" % (self.engines[host]["address"], self.ports[service], path)

    def play(self, playbook, extra=None, check=False, limit=None):
        return run_playbook(
            playbook, extra_vars=extra, check=check, inventory=self.inventory, limit=limit, env=STATS, timeout=1800
        )


def _explain(result):
    """The failed tasks of every host, and the end of the output."""
    failed = []
    for play in result.data.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                if res.get("failed") and not res.get("ignore_errors"):
                    failed.append((host, task["task"]["name"], res.get("msg")))
    return "rc=%s failed=%s stderr=%s stdout=%s" % (result.rc, failed, result.stderr[-1500:], result.stdout[-1500:])


def _global_stat(result, key):
    stats = result.custom_stats
    if key in stats:
        return stats[key]
    for value in stats.values():
        if isinstance(value, dict) and key in value:
            return value[key]
    raise AssertionError("no set_stats %s in %s" % (key, sorted(stats)))


def _interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(str(tmp_path_factory.mktemp("fleet")))
    # A CI timeout sends SIGTERM: turn it into an interrupt so the teardown below still runs.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        fleet.prune()
        fleet.up()
        fleet.write_inventory()
        yield fleet
    finally:
        signal.signal(signal.SIGTERM, previous)
        proc = fleet.down()
        left = [n for n in fleet.engines.values() if os.path.exists("/sys/class/net/br-nf%d" % n["n"])]
        assert proc.returncode == 0 and not left, "fleet teardown: rc=%s bridges left %s: %s" % (
            proc.returncode,
            left,
            proc.stderr[-2000:],
        )


def _window(result, host, name):
    """(start, end) epoch seconds of the last task containing ``name`` on host."""
    from datetime import datetime

    res = None
    for play in result.data.get("plays", []):
        for task in play.get("tasks", []):
            if name in task["task"]["name"] and host in task.get("hosts", {}):
                res = task["task"]["duration"]
    assert res is not None, "no task %r ran on %s" % (name, host)

    def epoch(text):
        return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()

    return epoch(res["start"]), epoch(res["end"])


def probe(url, count, rate_hz, deadline_s):
    """GET ``url`` ``count`` times at ``rate_hz``; returns the failures (non-2xx or connection errors)."""
    failures = []
    end = time.monotonic() + deadline_s
    for i in range(count):
        if time.monotonic() > end:
            failures.append((i, "probe deadline of %ss passed" % deadline_s))
            break
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - the fleet's own address
                if not 200 <= resp.status < 300:
                    failures.append((i, resp.status))
        except (urllib.error.URLError, OSError) as exc:
            failures.append((i, str(exc)))
        time.sleep(max(0.0, 1.0 / rate_hz - (time.monotonic() - t0)))
    return failures


class Prober(threading.Thread):
    """GETs ``url`` at ``rate_hz`` until stopped, at most ``count`` times and ``deadline_s`` seconds."""

    def __init__(self, url, rate_hz=5, count=3000, deadline_s=600):
        super().__init__(daemon=True)
        self.url, self.rate_hz, self.count, self.deadline_s = url, rate_hz, count, deadline_s
        self.stop = threading.Event()
        self.sent = 0
        self.failures = []

    def run(self):
        end = time.monotonic() + self.deadline_s
        while not self.stop.is_set() and self.sent < self.count and time.monotonic() < end:
            t0 = time.monotonic()
            self.sent += 1
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:  # noqa: S310 - the fleet's own address
                    if not 200 <= resp.status < 300:
                        self.failures.append((self.sent, resp.status))
            except (urllib.error.URLError, OSError) as exc:
                self.failures.append((self.sent, str(exc)))
            self.stop.wait(max(0.0, 1.0 / self.rate_hz - (time.monotonic() - t0)))


def test_deploy_puts_each_service_on_its_own_engine(fleet):
    first = fleet.play("playbooks/deploy.yml")
    assert first.rc == 0, _explain(first)
    for host, h in fleet.hosts.items():
        assert fleet.containers(host) == [fleet.container(h["service"])], host
        assert first.changed(host) > 0, host
    # Nothing of the fleet's project on the main engine.
    assert fleet.containers(None) == []

    # The api reaches the database host's address, the frontend balances over both api hosts.
    api_env = json.loads(fleet.engine("api1", "inspect", "-f", "{{json .Config.Env}}", fleet.container("api")))
    assert "POSTGRES_HOST=%s" % fleet.hosts["db"]["address"] in api_env
    assert "POSTGRES_PORT=%d" % fleet.ports["postgres"] in api_env
    web_env = json.loads(fleet.engine("web", "inspect", "-f", "{{json .Config.Env}}", fleet.container("frontend")))
    upstreams = "NER11_API_UPSTREAM=%s" % ",".join(fleet.url(h)[len("http://") :] for h in ("api1", "api2"))
    assert upstreams in web_env

    again = fleet.play("playbooks/deploy.yml")
    assert again.rc == 0, _explain(again)
    assert {h: again.changed(h) for h in fleet.hosts} == {h: 0 for h in fleet.hosts}, again.changed_tasks("web")


def test_startup_orders_across_hosts(fleet):
    before = {h: fleet.state(h)[0] for h in fleet.hosts}
    for host in ("web", "api2", "api1", "db"):
        fleet.engine(host, "stop", "-t", "20", fleet.container(fleet.hosts[host]["service"]))
    check = fleet.play("playbooks/startup.yml", check=True)
    assert check.rc == 0, _explain(check)
    assert all(fleet.engine(h, "ps", "-q") == "" for h in fleet.hosts), "check mode started a container"

    run = fleet.play("playbooks/startup.yml")
    assert run.rc == 0, _explain(run)
    # Started, never re-created: every container keeps its id (and with it its ports, labels,
    # network and environment).
    assert {h: fleet.state(h)[0] for h in fleet.hosts} == before
    db_gate = _window(run, "db", "Wait until healthy: postgres")
    api_starts = [_window(run, h, "Start the container: api") for h in ("api1", "api2")]
    api_gates = [_window(run, h, "Wait until healthy: api") for h in ("api1", "api2")]
    web_start = _window(run, "web", "Start the container: frontend")
    # The db gate passes before any api host starts; every api gate before the frontend starts.
    assert all(db_gate[1] <= start[0] for start in api_starts), (db_gate, api_starts)
    assert all(gate[1] <= web_start[0] for gate in api_gates), (api_gates, web_start)
    for h in ("api1", "api2"):
        gate = run.task("Wait until healthy: api", host=h)
        assert gate["status"] in ("pass", "warn"), gate  # warn: latency over its goal on a busy machine
        # The api hosts check the database through the API, never by exec into another engine.
        assert "api:db" in gate["checks"] and not any(c.startswith("db:") for c in gate["checks"]), gate["checks"]

    again = fleet.play("playbooks/startup.yml")
    assert again.rc == 0, _explain(again)
    assert {h: again.changed(h) for h in fleet.hosts} == {h: 0 for h in fleet.hosts}
    preflight = "Discover and check the stack, free disk and available memory"
    assert all(again.task(preflight, host=h)["ledger"]["bytes"] > 0 for h in fleet.hosts)

    # Only the frontend host's container stopped: that host starts and gates its frontend; a host
    # that is done after its pre-flight (the db host, both api hosts) takes no part in the gated
    # starts: one task, its pre-flight wrote its ledger line. (Not an api host: nginx would count a
    # restarted api back only after fail_timeout, which the next test's failover must not fall into.)
    fleet.engine("web", "stop", "-t", "20", fleet.container("frontend"))
    one = fleet.play("playbooks/startup.yml")
    assert one.rc == 0, _explain(one)
    assert fleet.state("web")[0] == before["web"] and one.task("Start the container: frontend", host="web")["changed"]
    assert one.task("Wait until healthy: frontend", host="web")["status"] in ("pass", "warn")
    for h in ("db", "api1", "api2"):
        assert one.task("Start the services behind their health gates", host=h).get("skipped"), h
        assert not [name for name, _r in one.tasks(h) if "Wait until healthy" in name], h
        assert one.task(preflight, host=h)["ledger"]["line"]["status"] == "ok", h
    assert "ledger" not in one.task(preflight, host="web")
    assert one.task("Record the run in the ledger", host="web")["line"]["status"] == "changed"
    assert one.custom_stats["ner11_run"]["hosts"] == {"db": "ok", "api1": "ok", "api2": "ok", "web": "changed"}


def test_health_per_host(fleet):
    run = fleet.play("playbooks/health.yml")
    assert run.rc == 0, _explain(run)
    checks = {h: run.task("Check the stack", host=h)["checks"] for h in fleet.hosts}
    assert checks["db"]["db:connect"]["status"] == "pass"
    assert not any(c.startswith(("api:", "frontend:")) for c in checks["db"])
    for h in ("api1", "api2"):
        assert checks[h]["api:db"]["status"] == "pass", checks[h]["api:db"]
        assert not any(c.startswith(("db:", "frontend:")) for c in checks[h]), sorted(checks[h])
    assert checks["web"]["frontend:http"]["status"] == "pass"
    assert not any(c.startswith(("db:", "api:")) for c in checks["web"])


def test_frontend_balances_over_api_hosts_and_survives_one_down(fleet):
    url = fleet.url("web", "/api/v1/db/health")
    wait_http(url, deadline_s=60)
    # Each request through the frontend carries a query string of this test's own (nginx passes it
    # on, uvicorn logs it): a count of it in an api host's log is a request the frontend sent there,
    # not a health gate's direct one.
    marker = "balance-%s" % uuid.uuid4().hex[:12]
    for attempt in range(8):
        with urllib.request.urlopen("%s?probe=%s-%d" % (url, marker, attempt), timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
    seen = {h for h in ("api1", "api2") if fleet.engine(h, "logs", fleet.container("api"), check=False).count(marker)}
    assert seen == {"api1", "api2"}, "requests reached only %s" % seen

    fleet.engine("api1", "stop", "-t", "10", fleet.container("api"))
    try:
        failures = probe(url, count=30, rate_hz=5, deadline_s=60)
        assert failures == [], failures
    finally:
        fleet.engine("api1", "start", fleet.container("api"))
    wait_http(fleet.url("api1", "/health"), deadline_s=90)


def _post_ner(url, text):
    req = urllib.request.Request(
        url, data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the fleet's own address
        assert resp.status == 200


def _catalog(fleet, host, kind):
    path = os.path.join(fleet.tmp, "backups", host, kind)
    return sorted(n for n in os.listdir(path) if not n.startswith(".")) if os.path.isdir(path) else []


BACKED_UP = "SELECT count(*) FROM ner_documents WHERE text LIKE '%FleetBackedUp%'"
DOCUMENTS = "SELECT count(*) FROM ner_documents"


def test_backup_each_host_backs_up_what_it_runs(fleet):
    # A document the backup holds (the restore and the DR below must bring it back).
    _post_ner(fleet.url("api1", "/api/v1/ner"), "Schneider Electric Modicon M580 at the FleetBackedUp substation")
    documents = fleet.psql(DOCUMENTS)
    run = fleet.play("playbooks/backup.yml")
    assert run.rc == 0, _explain(run)
    # ner11_db:ner11_api: the frontend host has nothing of its own to back up here.
    assert sorted(h for h in run.stats if run.stats[h].get("ok")) == ["api1", "api2", "db"], sorted(run.stats)
    ids = _global_stat(run, "ner11_backup")
    assert set(ids) == {"db", "api1", "api2"}, ids
    # The database on the database host, the models on each api host: each in its own catalog.
    assert "db" in ids["db"] and "models" not in ids["db"], ids["db"]
    assert _catalog(fleet, "db", "database") and not _catalog(fleet, "db", "models")
    for h in ("api1", "api2"):
        assert "models" in ids[h] and "db" not in ids[h], ids[h]
        assert _catalog(fleet, h, "models") and not _catalog(fleet, h, "database"), h
    assert not os.path.exists(os.path.join(fleet.tmp, "backups", "web"))
    fleet.db_backup = ids["db"]["db"]
    fleet.db_documents = documents


def test_restore_stops_the_writers_of_every_host_first(fleet):
    backup = getattr(fleet, "db_backup", None)
    if backup is None:
        pytest.skip("the backup test did not leave a database backup")
    _post_ner(fleet.url("api2", "/api/v1/ner"), "Siemens SIMATIC S7-1500 hit by Industroyer2 at the FleetSeeded plant")
    seeded = "SELECT count(*) FROM ner_documents WHERE text LIKE '%FleetSeeded%'"
    assert fleet.psql(seeded) == "1"
    before = fleet.states()

    run = fleet.play("playbooks/restore.yml", {"ner11_confirm": DB, "ner11_backup_id": backup, "ner11_force": True})
    assert run.rc == 0, _explain(run)
    assert fleet.psql(seeded) == "0"
    assert fleet.psql(BACKED_UP) == "1"
    summary = _global_stat(run, "ner11_restore")["db"]
    assert summary["restored"] is True and summary["backup_id"] == backup, summary
    after = fleet.states()
    # The writers of EVERY host were stopped and started again; the database container stayed.
    assert after["db"] == before["db"]
    for h in ("api1", "api2", "web"):
        assert after[h][0] == before[h][0] and after[h][1] != before[h][1], (h, before[h], after[h])

    # Frontends stop, then apis (every host), then the database is replaced, then apis start
    # (each behind its gate), then the frontends.
    web_stop = _window(run, "web", "Stop the container: frontend")
    api_stops = [_window(run, h, "Stop the container: api") for h in ("api1", "api2")]
    restore = _window(run, "db", "Restore the database")
    api_starts = [_window(run, h, "Start the container: api") for h in ("api1", "api2")]
    api_gates = [_window(run, h, "Wait until healthy: api") for h in ("api1", "api2")]
    web_start = _window(run, "web", "Start the container: frontend")
    assert all(web_stop[1] <= stop[0] for stop in api_stops), (web_stop, api_stops)
    assert all(stop[1] <= restore[0] for stop in api_stops), (api_stops, restore)
    assert all(restore[1] <= start[0] for start in api_starts), (restore, api_starts)
    assert all(gate[1] <= web_start[0] for gate in api_gates), (api_gates, web_start)
    wait_http(fleet.url("web", "/api/v1/db/health"), deadline_s=60)


def test_rolling_restart_of_the_api_hosts_serves_every_request(fleet):
    url = fleet.url("web", "/api/v1/db/health")
    wait_http(url, deadline_s=60)
    before = fleet.states()
    prober = Prober(url, rate_hz=5, count=3000, deadline_s=600)
    prober.start()
    try:
        time.sleep(2)
        run = fleet.play("playbooks/service.yml", {"ner11_service": "api", "ner11_action": "restart", "ner11_serial": 1})
        time.sleep(2)
    finally:
        prober.stop.set()
        prober.join(30)
    assert run.rc == 0, _explain(run)
    assert prober.sent >= 50, "the probe sent only %d requests" % prober.sent
    assert prober.failures == [], "%d of %d requests failed: %s" % (len(prober.failures), prober.sent, prober.failures[:20])
    after = fleet.states()
    for h in ("api1", "api2"):
        assert after[h][0] == before[h][0] and after[h][1] != before[h][1], (h, before[h], after[h])
    # Only the api hosts: the frontend and the database kept running.
    assert after["web"] == before["web"] and after["db"] == before["db"]
    # One host at a time: api1 was back and gated before api2 went down.
    assert _window(run, "api1", "Wait until healthy: api")[1] <= _window(run, "api2", "Stop the container: api")[0]


def test_max_fail_percentage_a_failed_batch_stops_the_roll_unless_allowed(fleet):
    # A batch of ONE host that fails always ends an Ansible play, whatever max_fail_percentage says
    # (the whole batch failed), so the percentage can only carry a roll with batches of 2 or more:
    # a third api host joins (its own engine; deployed alone, the frontend is not re-rendered) and
    # the roll goes 2 at a time: [api1, api2], then [api3].
    deploy = fleet.join("api3")
    try:
        assert deploy.rc == 0, _explain(deploy)
        assert fleet.containers("api3") == [fleet.container("api")]
        # api1's gate cannot pass: its inventory names a port nothing listens on, with a short
        # deadline. The container itself starts fine (started by name, its real port unchanged).
        saved = fleet.host_vars("api1")
        broken = json.loads(json.dumps(saved))
        broken["ner11_stack"]["services"]["api"].update(ports=[{"host": free_port(), "container": 8000}], start_timeout=5)
        roll = {"ner11_service": "api", "ner11_action": "restart", "ner11_serial": 2, "ner11_settle_s": 0}
        before = fleet.states()
        fleet.write_host_vars("api1", broken)
        try:
            stopped = fleet.play("playbooks/service.yml", roll)  # max_fail_percentage 0, the default
            middle = fleet.states()
            allowed = fleet.play("playbooks/service.yml", dict(roll, ner11_max_fail_percentage=50))
            after = fleet.states()
        finally:
            fleet.write_host_vars("api1", saved)
    finally:
        fleet.leave("api3")

    # 0: 1 of 2 failed in the first batch is over 0 %: the roll stopped, api3 was never touched.
    assert stopped.rc != 0 and stopped.failures("api1") > 0, _explain(stopped)
    assert "api3" not in stopped.stats or stopped.stats["api3"].get("ok", 0) == 0, stopped.stats
    assert middle["api3"] == before["api3"]
    for h in ("api1", "api2"):  # the first batch itself was restarted
        assert middle[h][0] == before[h][0] and middle[h][1] != before[h][1], "%s: %s -> %s; %s" % (
            h,
            before[h],
            middle[h],
            _explain(stopped),
        )
    # 50: 1 of 2 is not over 50 %: the roll went on to the next batch and restarted api3.
    assert allowed.rc != 0 and allowed.failures("api1") > 0, _explain(allowed)
    assert allowed.failures("api3") == 0 and allowed.failures("api2") == 0, _explain(allowed)
    assert after["api3"][0] == middle["api3"][0] and after["api3"][1] != middle["api3"][1], (middle["api3"], after["api3"])
    assert after["api2"][1] != middle["api2"][1]
    # The frontend and database were not part of either roll.
    assert after["web"] == before["web"] and after["db"] == before["db"]
    wait_http(fleet.url("api1", "/health"), deadline_s=90)


def _wait_api_database(fleet, hosts, state, deadline_s):
    """Wait until every api host's /health reports the database ``state`` (connected/disconnected)."""
    end = time.monotonic() + deadline_s
    seen = {}
    while True:
        for h in hosts:
            try:
                with urllib.request.urlopen(fleet.url(h, "/health"), timeout=5) as resp:  # noqa: S310 - the fleet's own address
                    seen[h] = json.loads(resp.read())["checks"]["database"]
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                seen[h] = "no answer: %s" % exc
        if all(seen[h] == state for h in hosts):
            return
        if time.monotonic() > end:
            raise AssertionError("api /health did not report the database %s within %ss: %s" % (state, deadline_s, seen))
        time.sleep(0.5)


def test_dr_restore_onto_a_fresh_db_host_while_the_api_hosts_reconnect(fleet):
    backup = getattr(fleet, "db_backup", None)
    if backup is None:
        pytest.skip("the backup test did not leave a database backup")
    with open(os.path.join(fleet.tmp, "backups", "db", "database", backup, "manifest.json")) as fh:
        manifest = json.load(fh)
    writers = {h: fleet.state(h) for h in ("api1", "api2", "web")}
    lost = fleet.state("db")[0]

    # The database host is lost and replaced: its engine stops and its data root (container, volume,
    # network, images) is deleted; a fresh engine starts on the same address with the images only.
    # The backup catalog (ner11_backup_dir, the host's backup disk) is what survives.
    fleet.renew("db")
    assert fleet.engine("db", "ps", "-aq").split() == [] and fleet.engine("db", "volume", "ls", "-q").split() == []
    _wait_api_database(fleet, ("api1", "api2"), "disconnected", 30)

    run = fleet.play("playbooks/dr_restore.yml", {"ner11_backup_ids": {"database": backup}})
    assert run.rc == 0, _explain(run)
    summary = _global_stat(run, "ner11_dr_restore")["db"]
    assert summary["database_restored"] is True and summary["database_backup_id"] == backup, summary
    assert summary["health"] == "pass", summary
    assert summary["row_counts"] == manifest["row_counts"], (summary["row_counts"], manifest["row_counts"])
    # Only PostgreSQL on the new engine, a new container.
    assert fleet.containers("db") == [fleet.container("postgres")]
    assert fleet.state("db")[0] != lost
    # The api and frontend hosts were not touched: same containers, not even restarted ...
    assert {h: fleet.state(h) for h in writers} == writers
    # ... and reconnect on their own: /health sees the database, the frontend answers 2xx again.
    _wait_api_database(fleet, ("api1", "api2"), "connected", 60)
    url = fleet.url("web", "/api/v1/db/health")
    wait_http(url, deadline_s=60)
    assert probe(url, count=10, rate_hz=5, deadline_s=30) == []
    # The data is the backup's: its documents (the one written before it among them) and canaries.
    assert fleet.psql(DOCUMENTS) == fleet.db_documents
    assert fleet.psql(BACKED_UP) == "1"

"""A NER11 stack brought up by real ``docker compose`` v2, as an operator's host has it.

Used by the adoption tests (tests/integration/test_adopt*.py). The compose file is written
per test module from three switches: compose v2 default names (``<project>-<service>-1``),
compose v1-style ``container_name``s (``<project>_<service>_1``) and custom volume names.
Compose v2 comes from scripts/install-compose.sh (``make compose``). Everything is removed
by its compose project (``docker compose down -v``) and by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid

from conftest import docker, free_port

DOCS = [
    "Siemens S7-1500 PLC exposed to CVE-2022-38465 per the NIST SP 800-82 guidance.",
    "Rockwell ControlLogix controllers were targeted; apply IEC 62443 controls.",
]


def compose_available():
    proc = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.strip().lstrip("v").startswith("2")


class ComposeStack:
    """One compose project on free 127.0.0.1 ports; ``vars`` are the matching extra vars."""

    def __init__(self, project, workdir, v1_names=False, volume_names=None, model_names=False):
        self.project = project
        self.workdir = str(workdir)
        self.password = "it-" + uuid.uuid4().hex
        self.ports = {"postgres": free_port(), "api": free_port(), "frontend": free_port()}
        self.v1_names = v1_names
        # compose volume key -> actual volume name (None: compose's <project>_<key>)
        self.volume_names = volume_names or {}
        self.file = os.path.join(self.workdir, "docker-compose.yml")
        container = {"postgres": 5432, "api": 8000, "frontend": 3000}
        services = {
            "postgres": {
                "image": "ner11/postgres:ref",
                "environment": {"POSTGRES_DB": "ner11_db", "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": self.password},
                "volumes": ["postgres_data:/var/lib/postgresql/data"],
            },
            "api": {
                "image": "ner11/ner-api:ref",
                "environment": {
                    "POSTGRES_HOST": "postgres",
                    "POSTGRES_DB": "ner11_db",
                    "POSTGRES_USER": "postgres",
                    "POSTGRES_PASSWORD": self.password,
                },
                "volumes": ["models:/app/models"],
                "depends_on": ["postgres"],
            },
            "frontend": {"image": "ner11/frontend:ref", "depends_on": ["api"]},
        }
        for name, svc in services.items():
            svc["pull_policy"] = "never"
            svc["ports"] = ["127.0.0.1:%d:%d" % (self.ports[name], container[name])]
            svc["stop_grace_period"] = "30s"
            if v1_names:
                svc["container_name"] = "%s_%s_1" % (project, name)
        volumes = {}
        for key in ("postgres_data", "models"):
            volumes[key] = {"name": self.volume_names[key]} if self.volume_names.get(key) else {}
        self.compose = {"name": project, "services": services, "volumes": volumes}
        with open(self.file, "w") as fh:
            json.dump(self.compose, fh, indent=1)
        stack = {
            "project": project,
            "labels": {"io.ner11.test": "1"},
            "services": {s: {"ports": [{"host": self.ports[s], "container": container[s]}]} for s in container},
        }
        if model_names:
            # The documented override: name the containers the operator's host has.
            for name in services:
                stack["services"][name]["container_name"] = self.name(name)
        self.vars = {"ner11_stack": stack, "ner11_db_password": self.password}

    def name(self, service):
        return "%s_%s_1" % (self.project, service) if self.v1_names else "%s-%s-1" % (self.project, service)

    def volume(self, key):
        return self.volume_names.get(key) or "%s_%s" % (self.project, key)

    @property
    def api_url(self):
        return "http://127.0.0.1:%d" % self.ports["api"]

    def compose_cmd(self, *args, timeout=300):
        proc = subprocess.run(
            ["docker", "compose", "-f", self.file, "-p", self.project, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError("docker compose %s failed: %s" % (" ".join(args), proc.stderr[-2000:]))
        return proc

    def up(self):
        self.compose_cmd("up", "-d", "--wait", "--wait-timeout", "180")

    def ids(self):
        """service -> container id of the containers compose created (by its labels)."""
        out = docker(
            "ps", "-a", "--no-trunc", "--filter", "label=com.docker.compose.project=%s" % self.project,
            "--format", '{{.ID}} {{.Label "com.docker.compose.service"}}',
        ).stdout  # fmt: skip
        return {svc: cid for cid, svc in (line.split() for line in out.splitlines() if line.strip())}

    def api(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.api_url + path, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - 127.0.0.1 only
            return json.loads(resp.read())

    def seed(self, deadline_s=90):
        # `up --wait` returns once Docker calls the api healthy; under load its first writes
        # may still answer 503 for a moment: retry with a deadline.
        end = time.monotonic() + deadline_s
        for text in DOCS:
            while True:
                try:
                    self.api("/api/v1/ner", {"text": text})
                    break
                except OSError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(1)

    def documents(self, deadline_s=60):
        end = time.monotonic() + deadline_s
        while True:
            try:
                return self.api("/api/v1/ner/documents/count")["documents"]
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(1)

    def remove(self):
        subprocess.run(
            ["docker", "compose", "-f", self.file, "-p", self.project, "down", "-v", "--remove-orphans", "-t", "5"],
            capture_output=True,
            timeout=300,
            check=False,
        )
        ids = docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % self.project, check=False).stdout.split()
        ids += docker("ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % self.project, check=False).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *sorted(set(ids)), check=False)
        vols = [self.volume("postgres_data"), self.volume("models")]
        vols += docker("volume", "ls", "-q", "--filter", "label=io.ner11.project=%s" % self.project, check=False).stdout.split()
        docker("volume", "rm", "-f", *sorted(set(vols)), check=False)
        for net in ("%s_default" % self.project,):
            docker("network", "rm", net, check=False)
        subprocess.run(["rm", "-rf", "/var/lib/ner11/%s" % self.project], check=False)


# CI machines are small: startup's runbook floors (10 GB disk, 4 GB memory) are lowered here.
SMALL = {"startup_min_free_disk_gb": 1, "startup_min_available_memory_gb": 0.25, "startup_disk_fail_percent": 99}


def day_two(cs, backup_dir, rerun_deploy=False):
    """health, backup, service restart, startup and deploy on a compose-made stack.

    Each must pass and leave the compose containers in place (same ids), and the seeded
    rows must be served before and after. ``rerun_deploy`` also proves a second deploy is
    ``changed=0`` (once is enough for the whole suite). Returns the deploy result (for its drift report).
    """
    from conftest import run_playbook

    ids = cs.ids()
    assert sorted(ids) == ["api", "frontend", "postgres"]
    before = cs.documents()
    assert before >= len(DOCS)

    health = run_playbook("playbooks/health.yml", cs.vars)
    assert health.rc == 0, health.explain()
    checks = health.task("Check the stack")["checks"]
    assert checks["container:%s" % cs.name("postgres")]["status"] == "pass"
    assert checks["db:connect"]["status"] == "pass"

    backup = run_playbook(
        "playbooks/backup.yml",
        dict(cs.vars, ner11_backup_dir=str(backup_dir), ner11_backup_components=["db"],
             ner11_backup_metrics_dir=str(backup_dir) + "-metrics", ner11_target="localhost"),
    )  # fmt: skip
    assert backup.rc == 0, backup.explain()
    assert backup.task("Back up the database")["backup_id"]

    restart = run_playbook("playbooks/service.yml", dict(cs.vars, ner11_service="api", ner11_action="restart"))
    assert restart.rc == 0, restart.explain()
    assert "ner11.ops.common : Stop the container: api" in restart.changed_tasks(), restart.changed_tasks()

    startup = run_playbook("playbooks/startup.yml", dict(cs.vars, **SMALL))
    assert startup.rc == 0, startup.explain()
    assert startup.changed() == 0, startup.changed_tasks()

    deploy = run_playbook("playbooks/deploy.yml", cs.vars)
    assert deploy.rc == 0, deploy.explain()
    assert not [t for t in deploy.changed_tasks() if "Create and start" in t or "network" in t], deploy.changed_tasks()
    if rerun_deploy:
        again = run_playbook("playbooks/deploy.yml", cs.vars)
        assert again.rc == 0 and again.changed() == 0, again.changed_tasks()

    assert cs.ids() == ids, "a playbook recreated a compose container"
    # The compose containers keep the password in their environment: it never reaches the output.
    for result in (health, backup, restart, startup, deploy):
        assert cs.password not in result.stdout
    assert cs.documents() == before
    return deploy

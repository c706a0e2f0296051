"""Disaster recovery: dr_drill.yml on a live stack, dr_restore.yml onto a bare container host.

The "bare host" is a container of ``ner11/base:ref`` (Debian + python3 only) reached with
``community.docker.docker``; it drives the machine's engine through the mounted socket and
shares the machine's network namespace (so the stack's 127.0.0.1 ports answer inside it).
The stack's config dir and the backup catalog are bind-mounted at the same paths inside and
outside, because bind sources of the containers it creates resolve on the real machine
(ENVIRONMENT.md "Containers as inventory hosts").

What the host lacks is installed by the playbook with apt: python3-requests (+ python3-apt for
the apt module). The docker client is the one exception, mounted from the machine: installing
Debian's docker.io inside the host took 3 min 25 s here (36 MB download + unpack), which alone
would exceed the test budget; the docker.io branch runs when ``docker info`` fails (see
docs/disaster-recovery.md). apt gets the machine's package lists and a hard-linked copy of its
package cache, so packages already downloaded on this machine are not downloaded again.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import urllib.request

import pytest
from conftest import Stack, docker, remove_project, run_module, run_playbook, unique_project

STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}
DOCS = [
    "Siemens S7-1500 PLC exposed to CVE-2022-38465 per the NIST SP 800-82 guidance.",
    "Rockwell ControlLogix controllers were targeted; apply IEC 62443 controls.",
    "Schneider Electric Modicon M580 firmware update mitigates the Triton malware.",
]


def _api(stack, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        stack.api_url + path, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - 127.0.0.1 only
        return json.loads(resp.read())


def _docs(stack):
    return _api(stack, "/api/v1/ner/documents/count")


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    """A stack with seeded documents and a verified database + models backup of it."""
    stack = Stack(unique_project("itdrs"))
    stack.remove()
    backup_dir = str(tmp_path_factory.mktemp("drcat") / "backups")
    try:
        result = stack.deploy()
        assert result.rc == 0, result.explain()
        for text in DOCS:
            _api(stack, "/api/v1/ner", {"text": text})
        counts = _docs(stack)
        assert counts["documents"] == len(DOCS)
        db = run_module(
            "ner11.ops.pg_backup",
            {
                "backup_dir": backup_dir,
                "container": stack.container("postgres"),
                "login_password": stack.password,
                "period": "manual",
            },
        )
        assert not db.get("failed"), db.get("msg")
        models = run_module(
            "ner11.ops.artifact_backup",
            {"kind": "models", "container": stack.container("api"), "backup_dir": backup_dir},
        )
        assert not models.get("failed"), models.get("msg")
        yield {"stack": stack, "backup_dir": backup_dir, "counts": counts, "db": db, "models": models}
    finally:
        stack.remove()


def test_dr_drill_reports_rto_rpo_and_leaves_production_untouched(backed_up, tmp_path):
    stack = backed_up["stack"]
    ids_before = {s: docker("inspect", "-f", "{{.Id}}", stack.container(s)).stdout.strip() for s in ("postgres", "api")}
    report_dir = str(tmp_path / "reports")
    ev = dict(stack.vars, ner11_dr_backup_dir=backed_up["backup_dir"], ner11_dr_drill_report_dir=report_dir)

    result = run_playbook("playbooks/dr_drill.yml", ev, env=STATS)
    assert result.rc == 0, result.explain()
    drill = result.custom_stats["ner11_dr_drill"]["localhost"]
    assert drill["passed"] is True
    assert drill["backup_id"] == backed_up["db"]["backup_id"]
    assert drill["rto_s"] > 0
    assert 0 <= drill["rpo_s"] < 3600
    assert drill["canary_match"] is True
    assert drill["canary_observed"] == backed_up["db"]["manifest"]["row_counts"]
    assert drill["production_untouched"] is True
    assert drill["scratch_left"] == []

    # The report files, and the ledger line on the host.
    reports = sorted(glob.glob(os.path.join(report_dir, "drill-*.json")))
    assert len(reports) == 1 and os.path.exists(reports[0][:-5] + ".md")
    with open(reports[0]) as fh:
        saved = json.load(fh)
    assert saved["rto_s"] == drill["rto_s"] and saved["rpo_s"] == drill["rpo_s"]
    assert "RPO (age of the backup)" in open(reports[0][:-5] + ".md").read()
    ledger = os.path.join(stack.model["config_dir"], "ledger.jsonl")
    with open(ledger) as fh:
        lines = [json.loads(line) for line in fh]
    assert lines[-1]["playbook"] == "dr_drill" and lines[-1]["passed"] is True
    assert stack.password not in open(ledger).read()

    # Production really untouched: same containers, no scratch database, data unchanged.
    assert ids_before == {s: docker("inspect", "-f", "{{.Id}}", stack.container(s)).stdout.strip() for s in ids_before}
    assert stack.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'ner11_dr_drill%'", db="postgres") == "0"
    assert stack.psql("SELECT to_regclass('ner11_ops.restore_log') IS NULL") == "t"
    assert _docs(stack) == backed_up["counts"]

    # Bad input: the production database as scratch is refused before anything runs.
    bad = run_playbook("playbooks/dr_drill.yml", dict(ev, ner11_dr_drill_scratch_db="ner11_db"))
    assert bad.rc != 0
    assert "other than the production database ner11_db" in bad.task("Check the drill inputs")["msg"]
    assert _docs(stack) == backed_up["counts"]


def test_demo_story_loses_and_recovers_the_database(backed_up):
    """playbooks/demo.yml (make demo) on the module's stack: seed, back up, lose postgres + volume, recover."""
    stack = backed_up["stack"]
    ev = dict(stack.vars, ner11_dr_backup_dir=backed_up["backup_dir"])
    before = _docs(stack)["documents"]
    api_id = docker("inspect", "-f", "{{.Id}}", stack.container("api")).stdout.strip()

    refused = run_playbook("playbooks/demo.yml", ev)
    assert refused.rc != 0
    assert "set ner11_confirm=ner11_db" in refused.task("Require the confirmation")["msg"]
    assert _docs(stack)["documents"] == before

    result = run_playbook("playbooks/demo.yml", dict(ev, ner11_confirm="ner11_db"), env=STATS)
    assert result.rc == 0, result.explain()
    assert result.task("Lose the database volume").get("changed") is True
    summary = result.custom_stats["ner11_dr_restore"]["localhost"]
    assert summary["health"] == "pass" and summary["database_operation"] in ("create", "replace")
    assert summary["rto_s"] > 0
    # The api was running when the database vanished: it was stopped for the restore and started
    # again (same container), and every seeded document is back.
    assert docker("inspect", "-f", "{{.Id}}", stack.container("api")).stdout.strip() == api_id
    assert _docs(stack)["documents"] == before + 3
    assert "RTO" in json.dumps(result.task("Print the recovery")["msg"])


def _apt_seed(root):
    """The machine's apt lists and a hard-linked copy of its package cache (see module docstring)."""
    lists, archives = os.path.join(root, "lists"), os.path.join(root, "archives")
    shutil.copytree("/var/lib/apt/lists", lists, symlinks=True, ignore=shutil.ignore_patterns("lock", "partial"))
    os.makedirs(os.path.join(archives, "partial"))
    for deb in glob.glob("/var/cache/apt/archives/*.deb"):
        try:
            os.link(deb, os.path.join(archives, os.path.basename(deb)))
        except OSError:
            shutil.copy2(deb, archives)
    return lists, archives


def test_dr_restore_onto_bare_container_host(backed_up, tmp_path):
    src = backed_up["stack"]
    backup_dir = backed_up["backup_dir"]
    # The disaster: the whole source stack is gone, containers AND volumes.
    src.remove()
    assert docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % src.project).stdout.strip() == ""
    assert docker("volume", "ls", "-q", "--filter", "name=%s_" % src.project).stdout.strip() == ""

    target = Stack(unique_project("itdrh"))
    host = "%s-host" % target.project
    config_dir = target.model["config_dir"]
    # The host's own catalog starts empty: the first run copies the pinned backups from the
    # source host (the controller's catalog, ner11_dr_source_host), the second finds them there.
    host_catalog = str(tmp_path / "host-backups")
    client = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
    try:
        os.makedirs(config_dir, mode=0o700)
        os.makedirs(host_catalog, mode=0o700)
        lists, archives = _apt_seed(str(tmp_path / "apt"))
        docker(
            "run", "-d", "--name", host, "--network", "host",
            "--label", "io.ner11.project=%s" % target.project, "--label", "io.ner11.test=1",
            "-v", "/var/run/docker.sock:/var/run/docker.sock",
            "-v", "%s:%s" % (config_dir, config_dir), "-v", "%s:%s" % (host_catalog, host_catalog),
            "-v", "%s:/usr/bin/docker:ro" % client,
            "-v", "%s:/var/lib/apt/lists" % lists, "-v", "%s:/var/cache/apt/archives" % archives,
            "ner11/base:ref", "sleep", "infinity",
        )  # fmt: skip
        inventory = tmp_path / "hosts.json"
        inventory.write_text(
            json.dumps(
                {
                    "controller": {
                        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
                    },
                    "ner11": {
                        "hosts": {host: {}},
                        "vars": {
                            "ansible_connection": "community.docker.docker",
                            "ansible_python_interpreter": "/usr/bin/python3",
                            "ner11_dr_backup_dir": host_catalog,
                            "ner11_dr_source_host": "localhost",
                            "ner11_dr_source_backup_dir": backup_dir,
                            "ner11_backup_ids": {
                                "database": backed_up["db"]["backup_id"],
                                "models": backed_up["models"]["backup_id"],
                            },
                            **target.vars,
                        },
                    },
                }
            )
        )

        first = run_playbook("playbooks/dr_restore.yml", inventory=str(inventory), env=STATS)
        assert first.rc == 0, first.explain()
        assert first.task("Install the Python libraries of the Docker modules", host).get("changed") is True
        assert first.task("Install the Docker package", host).get("skipped") is True
        copied = first.task("Copy the files onto this host", host)
        assert copied.get("changed") is True
        for kind, key in (("database", "db"), ("models", "models")):
            manifest = os.path.join(host_catalog, kind, backed_up[key]["backup_id"], "manifest.json")
            assert os.stat(manifest).st_mode & 0o777 == 0o600
        summary = first.custom_stats["ner11_dr_restore"][host]
        assert summary["health"] == "pass"
        assert summary["database_backup_id"] == backed_up["db"]["backup_id"]
        assert summary["database_restored"] is True
        assert summary["models_backup_id"] == backed_up["models"]["backup_id"]
        assert summary["models_restored"] is True
        assert 0 < summary["rto_s"] < 600
        health = first.task("Wait until the whole stack passes", host)
        assert health["status"] == "pass"
        # The seeded rows are back, served by the recovered api.
        assert _docs(target) == backed_up["counts"]
        print("DR restore onto a bare host: RTO %.1f s (first run)" % summary["rto_s"])
        # The api started only after the restore: the restore log is the only ner11_ops row and
        # the api's migrations found the restored schema (no second seed of the canary tables).
        assert target.psql("SELECT count(*) FROM ner11_ops.restore_log") == "1"
        assert summary["row_counts"] == backed_up["db"]["manifest"]["row_counts"]

        second = run_playbook("playbooks/dr_restore.yml", inventory=str(inventory), env=STATS)
        assert second.rc == 0, second.explain()
        # Nothing on the stack changed; the run ledger gained its audit line (not a change).
        assert second.changed(host) == 0, second.changed_tasks(host)
        again = second.custom_stats["ner11_dr_restore"][host]
        assert again["database_operation"] == "none" and again["models_restored"] is False
        assert again["health"] == "pass"
        assert _docs(target) == backed_up["counts"]

        with open(os.path.join(config_dir, "ledger.jsonl")) as fh:
            ledger = [json.loads(line) for line in fh]
        assert [entry["playbook"] for entry in ledger] == ["dr_restore", "dr_restore"]
        assert ledger[0]["rto_s"] == summary["rto_s"]
        assert target.password not in json.dumps(ledger)
    finally:
        docker("rm", "-f", host, check=False)
        remove_project(target.project)
        remove_project(src.project)

"""Which hosts each play of the multi-host playbooks runs on (docs/multi-host.md), read from
`ansible-playbook --list-hosts` on a four-host inventory (db, api1, api2, web) and on a one-host
inventory in no ner11_* group. No host is contacted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK), reason="ansible-playbook is not installed beside this Python")

FLEET = """
all:
  children:
    ner11:
      children:
        ner11_db: {hosts: {db: }}
        ner11_api: {hosts: {api1: , api2: }}
        ner11_frontend: {hosts: {web: }}
"""
BARE = """
ner11:
  hosts:
    bare:
"""


def plays(tmp_path, playbook, inventory=FLEET, extra=None):
    """[(play name, sorted hosts)] in play order."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(inventory)
    cmd = [PLAYBOOK, "--list-hosts", "-i", str(inv), os.path.join(ROOT, "playbooks", playbook)]
    for key, value in (extra or {}).items():
        cmd += ["-e", "%s=%s" % (key, value)]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    if os.path.isdir(os.path.join(ROOT, ".collections")):  # make setup: ner11.ops -> this checkout
        env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(ROOT, ".collections")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stderr
    out = []
    for block in re.split(r"\n\s*play #\d+ ", proc.stdout)[1:]:
        name = re.match(r"\(.*?\): (.*?)\tTAGS", block).group(1)
        hosts = re.search(r"hosts \(\d+\):\n((?:\s{6}\S+\n?)*)", block)
        out.append((name, sorted(hosts.group(1).split()) if hosts else []))
    return out


def test_service_rolls_over_the_api_hosts_only_with_a_serial(tmp_path):
    at_once = plays(tmp_path, "service.yml", extra={"ner11_service": "api", "ner11_action": "restart"})
    assert [h for _n, h in at_once[:2]] == [["api1", "api2", "db", "web"], []]
    rolling = plays(tmp_path, "service.yml", extra={"ner11_service": "api", "ner11_action": "restart", "ner11_serial": 1})
    assert [h for _n, h in rolling[:2]] == [[], ["api1", "api2"]]
    # Only the api service rolls: every other service keeps the one play on every host.
    other = plays(tmp_path, "service.yml", extra={"ner11_service": "all", "ner11_action": "restart", "ner11_serial": 1})
    assert [h for _n, h in other[:2]] == [["api1", "api2", "db", "web"], []]


def test_service_rolling_play_takes_serial_and_max_fail_from_the_declared_inputs():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "playbooks", "service.yml")) as fh:
        book = yaml.safe_load(fh)
    rolling = [p for p in book if "serial" in p]
    assert len(rolling) == 1
    assert "ner11_serial" in rolling[0]["serial"] and "ner11_max_fail_percentage" in rolling[0]["max_fail_percentage"]
    with open(os.path.join(ROOT, "playbooks", "vars", "service.yml")) as fh:
        options = yaml.safe_load(fh)["argument_specs"]["main"]["options"]
    assert {k: options[k]["default"] for k in ("ner11_serial", "ner11_max_fail_percentage", "ner11_settle_s")} == {
        "ner11_serial": 0,
        "ner11_max_fail_percentage": 0,
        "ner11_settle_s": 12,
    }


def test_restore_stops_every_hosts_writers_around_the_database_host(tmp_path):
    assert [h for _n, h in plays(tmp_path, "restore.yml")] == [
        ["db"],  # plan
        ["web"],  # stop the frontends
        ["api1", "api2"],  # stop the apis
        ["db"],  # replace
        ["api1", "api2"],  # start the apis
        ["web"],  # start the frontends
        ["db"],  # report
        ["db"],  # ledger
    ]


def test_backup_runs_on_the_database_and_api_hosts(tmp_path):
    assert plays(tmp_path, "backup.yml")[0][1] == ["api1", "api2", "db"]


def test_dr_restore_runs_on_the_database_host_only(tmp_path):
    assert plays(tmp_path, "dr_restore.yml")[0][1] == ["db"]
    # An inventory without the ner11_db group: its ner11 hosts run the whole stack.
    assert plays(tmp_path, "dr_restore.yml", inventory=BARE)[0][1] == ["bare"]


# Playbooks whose plays act across hosts (stop the writers of every host, restore on the db
# host, roll the api hosts) are wrong when AWX slices the inventory: a slice without the db host
# would restore nothing and a slice with it would not stop the other slices' writers. Only
# playbooks where each host acts for itself alone may be sliced.
SLICEABLE = {"playbooks/health.yml"}


def test_only_per_host_playbooks_may_be_sliced_in_awx():
    import yaml

    data = yaml.safe_load(open(os.path.join(ROOT, "awx", "job_templates.yml")))
    defaults = data["ner11_awx_job_template_defaults"]
    assert defaults["job_slice_count"] == 1 and not defaults.get("ask_job_slice_count_on_launch")
    sliceable = set()
    for template in data["ner11_awx_job_templates"]:
        merged = dict(defaults, **template)
        if merged.get("job_slice_count", 1) != 1 or merged.get("ask_job_slice_count_on_launch"):
            sliceable.add(template["playbook"])
    assert sliceable <= SLICEABLE, "sliced templates of cross-host playbooks: %s" % sorted(sliceable - SLICEABLE)
    assert "playbooks/restore.yml" not in sliceable and "playbooks/dr_restore.yml" not in sliceable

"""ner11.ops.common discovery: the peers each host fills in from the inventory (docs/multi-host.md).

No containers: the role's own peers task (roles/common/tasks/discovery.yml) runs as written in a
play over a four-host inventory of local hosts, with the model and the selected services set as
the tasks before it would. The multi-host fleet (test_fleet.py) proves the peers on real engines;
this file proves the address rule (ner11_address, else ansible_host, else the inventory name) and
that peers set in ner11_stack win, on every kind of host.
"""

import json
import os

import yaml
from conftest import ROOT, run_playbook

TASK = "Fill the peers from the inventory (the database and API hosts of other hosts)"
MODEL = {"services": {"postgres": {"ports": [{"host": 15432}]}, "api": {"ports": [{"host": 18000}]}}}
HOSTS = {
    "db1": {"ner11_address": "10.0.0.1", "__common_selected": ["postgres"]},
    "api1": {"ansible_host": "10.0.0.2", "__common_selected": ["api"]},
    "api2": {"__common_selected": ["api"]},
    "fe1": {"ner11_address": "10.0.0.4", "__common_selected": ["frontend"]},
}


def peers_task():
    with open(os.path.join(ROOT, "roles", "common", "tasks", "discovery.yml")) as fh:
        tasks = yaml.safe_load(fh)
    (task,) = [t for t in tasks if t.get("name") == TASK]
    return task


def run(tmp_path, common_stack):
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local"},
            "children": {
                "ner11": {
                    "children": {
                        "ner11_db": {"hosts": {"db1": HOSTS["db1"]}},
                        "ner11_api": {"hosts": {"api1": HOSTS["api1"], "api2": HOSTS["api2"]}},
                        "ner11_frontend": {"hosts": {"fe1": HOSTS["fe1"]}},
                    }
                }
            },
        }
    }
    play = {
        "name": "the common role's peers task",
        "hosts": "ner11",
        "gather_facts": False,
        "vars": {"common_stack": common_stack, "__common_model": MODEL},
        "tasks": [peers_task(), {"name": "peers", "ansible.builtin.debug": {"var": "__common_stack.peers"}}],
    }
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "play.json").write_text(json.dumps([play]))
    res = run_playbook(str(tmp_path / "play.json"), inventory=str(tmp_path / "inventory.json"), timeout=300)
    assert res.rc == 0, res.explain()
    return {h: dict(res.tasks(h))["peers"]["__common_stack.peers"] for h in HOSTS}


def test_each_host_gets_the_peers_it_does_not_run_by_the_address_rule(tmp_path):
    peers = run(tmp_path, {"project": "p"})
    database = "10.0.0.1:15432"  # db1's ner11_address
    apis = ["10.0.0.2:18000", "api2:18000"]  # api1's ansible_host, api2's inventory name
    assert peers["fe1"] == {"postgres": database, "api": apis}
    assert peers["api1"] == {"postgres": database, "api": []}  # runs an api itself: no api peers
    assert peers["api2"] == {"postgres": database, "api": []}
    assert peers["db1"] == {"postgres": "", "api": apis}  # runs postgres itself


def test_peers_set_in_the_stack_win(tmp_path):
    given = {"postgres": "db.example.internal:5432", "api": ["a.example.internal:8000"]}
    peers = run(tmp_path, {"project": "p", "peers": given})
    assert all(p == given for p in peers.values()), peers

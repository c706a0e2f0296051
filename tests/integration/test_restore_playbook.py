"""playbooks/restore.yml (job template "NER11 restore") end to end on its own stack."""

from __future__ import annotations

import json
import urllib.request

from conftest import docker, run_playbook
from test_restore import DB, raw_backup

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat

STATS = {"ANSIBLE_SHOW_CUSTOM_STATS": "1"}


def restore_stats(result):
    stats = result.custom_stats.get("localhost", result.custom_stats)["ner11_restore"]
    return stats.get("localhost", stats)


def started_at(name):
    return json.loads(docker("inspect", name).stdout)[0]["State"]["StartedAt"]


def post_ner(api_url, text):
    req = urllib.request.Request(
        api_url + "/api/v1/ner",
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - 127.0.0.1 only
        assert resp.status == 200


def test_restore_playbook_rolls_back_a_seeded_row(own_stack, tmp_path):
    stack = own_stack()
    backup = raw_backup(stack, str(tmp_path))
    post_ner(stack.api_url, "Siemens SIMATIC S7-1500 hit by Industroyer2 at the ItSeeded plant")
    seeded = "SELECT count(*) FROM ner_documents WHERE text LIKE '%ItSeeded%'"
    assert stack.psql(seeded) == "1"
    ev = dict(stack.vars, ner11_backup_dir=str(tmp_path), ner11_backup_id=backup)
    api_started = started_at(stack.container("api"))

    # Without ner11_confirm: fails before anything is stopped.
    res = run_playbook("playbooks/restore.yml", ev, env=STATS)
    assert res.rc != 0 and "ner11_confirm=ner11_db" in res.explain()
    assert started_at(stack.container("api")) == api_started
    assert stack.psql(seeded) == "1"

    # The seeded row is newer than the backup: force is the operator's explicit choice.
    ev.update(ner11_confirm=DB, ner11_force=True)
    res = run_playbook("playbooks/restore.yml", ev, env=STATS)
    assert res.rc == 0, res.explain()
    assert stack.psql(seeded) == "0"
    summary = restore_stats(res)
    assert summary["backup_id"] == backup and summary["restored"] is True and summary["health"] == "pass"
    assert summary["row_counts"]["vendor_equipment"] == 8
    # The undo: the replaced database was backed up first and that backup is pinned.
    undo = summary["undo_backup_id"]
    assert undo and undo != backup
    pins = cat.Catalog(str(tmp_path)).pins("database", undo)
    assert [p["reason"] for p in pins] == ["before the restore of %s" % backup], pins
    assert summary["repaired"] == [] and summary["leftovers"] == []
    restarted = started_at(stack.container("api"))
    assert restarted != api_started

    # Same backup again, nothing written since, no force (force always restores): nothing stopped or restored.
    ev["ner11_force"] = False
    res = run_playbook("playbooks/restore.yml", ev, env=STATS)
    assert res.rc == 0, res.explain()
    assert res.changed() == 0, res.changed_tasks()
    assert started_at(stack.container("api")) == restarted

"""The DR copy (roles/dr/tasks/fetch.yml) publishes like every catalog writer: .partial + rename (issue 8).

No stack is needed: the copy is file-level between two real catalogs on this machine, through
the controller, with the real tasks file. The run is killed (SIGKILL of the whole
ansible-playbook process group) while the copy is under way; the host's catalog must show no
entry, and the next run must publish a complete backup that verifies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import BIN, LOCAL_INVENTORY, ansible_env, run_playbook

from ansible_collections.ner11.ops.plugins.module_utils import catalog as cat

BACKUP_ID = "ner11_db-20261201T020000Z"


def _source_backup(root):
    """A published database backup (a real catalog entry, 24 MB so the copy takes a moment)."""
    c = cat.Catalog(root)
    partial = c.begin("database", BACKUP_ID)
    with open(os.path.join(partial, "dump.pgdump"), "wb") as fh:
        fh.write(os.urandom(24 * 1024 * 1024))
    with open(os.path.join(partial, "globals.sql"), "wb") as fh:
        fh.write(b"-- globals\n")
    manifest = {
        "created_at": "2026-12-01T02:00:00Z",
        "period": "daily",
        "source": {"host": "db-old", "db_name": "ner11_db", "instance": "container:ner11-postgres-1"},
        "format": "custom",
        "artifact": "dump.pgdump",
        "files": cat.hash_tree(partial),
    }
    c.publish("database", BACKUP_ID, manifest)


def _play(path, src, dst):
    play = [
        {
            "name": "DR copy only",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Copy the chosen backups from the source host",
                    "ansible.builtin.include_role": {"name": "ner11.ops.dr", "tasks_from": "fetch"},
                    "vars": {
                        "dr_source_host": "localhost",
                        "dr_backup_dir": dst,
                        "dr_backup_ids": {"database": BACKUP_ID},
                        "__dr_ids": {"database": BACKUP_ID},
                        "__dr_catalog_dir": src,
                        "__dr_with_models": False,
                    },
                }
            ],
        }
    ]
    with open(path, "w") as fh:
        json.dump(play, fh)


def test_a_killed_dr_copy_leaves_no_visible_entry(tmp_path):
    src, dst = str(tmp_path / "source"), str(tmp_path / "host")
    _source_backup(src)
    playbook = str(tmp_path / "dr_copy.json")
    _play(playbook, src, dst)
    partial = os.path.join(dst, "database", cat.PARTIAL_PREFIX + BACKUP_ID)

    proc = subprocess.Popen(
        [os.path.join(BIN, "ansible-playbook"), "-i", LOCAL_INVENTORY, playbook],
        env=ansible_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # kill as soon as the copy has put its first file into the partial directory
        while not os.path.exists(os.path.join(partial, "dump.pgdump")):
            assert proc.poll() is None, "the DR copy ended before it could be interrupted"
            assert time.monotonic() < deadline, "the DR copy never started"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)

    host = cat.Catalog(dst)
    assert host.entries("database") == [] and host.list("database") == []
    assert os.path.isdir(partial)  # left for the next run, never listed

    done = run_playbook(playbook)
    assert done.rc == 0, done.explain()
    assert [m["backup_id"] for m in host.list("database")] == [BACKUP_ID]
    assert not os.path.exists(partial) and host.verify("database", BACKUP_ID) == []
    assert oct(os.stat(host.path("database", BACKUP_ID)).st_mode & 0o777) == "0o700"
    # (a re-run copies nothing: tests/integration/test_dr.py proves it on the whole dr_restore.yml)

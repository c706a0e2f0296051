"""A confirmed restore of backup B means "the database is in the state B produced" (issue 9).

One stack for the module. After every kind of write the same confirmed restore runs
again and brings the data back; with no write in between it changes nothing. The
state fingerprint is described in docs/restore.md ("When a re-run is a no-op").
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from conftest import Stack, docker, run_playbook, unique_project
from test_restore import DB, counts, raw_backup, restore
from test_restore_playbook import post_ner

from ansible_collections.ner11.ops.plugins.module_utils import pgrestore_state as fpr


@pytest.fixture(scope="module")
def stack():
    made = Stack(unique_project("itst"))
    made.remove()
    result = made.deploy()
    assert result.rc == 0, result.explain()
    yield made
    made.remove()


def entities(stack):
    return int(stack.psql("SELECT count(*) FROM ner_entities"))


def test_any_write_since_the_restore_makes_the_confirmed_restore_run_again(stack, tmp_path):
    post_ner(stack.api_url, "Siemens SIMATIC S7-1500 hit by Industroyer2 at the ItState plant")
    assert entities(stack) > 0
    backup = raw_backup(stack, str(tmp_path))
    before = counts(stack)
    ents = entities(stack)
    args = {"backup_id": backup, "if_exists": "replace", "confirm": DB}

    first = restore(stack, tmp_path, **args)
    assert first.get("failed") is not True, first.get("msg")
    assert first["restored"] is True and first["operation"] == "replace"

    def rerun_restores(what):
        res = restore(stack, tmp_path, **args)
        assert res.get("failed") is not True, (what, res.get("msg"))
        assert res["changed"] is True and res["restored"] is True and res["operation"] == "replace", what
        assert res["changes_since_restore"], what
        assert counts(stack) == before and entities(stack) == ents, what
        # Immediately again, no write in between: nothing to do.
        same = restore(stack, tmp_path, **args)
        assert same["changed"] is False and same["operation"] == "none", (what, same.get("reason"), same.get("msg"))
        return res

    # No write since the restore: a no-op, in check mode too.
    plan = restore(stack, tmp_path, check=True, **args)
    assert plan["changed"] is False and plan["operation"] == "none" and plan["changes_since_restore"] == []
    same = restore(stack, tmp_path, **args)
    assert same["changed"] is False and same["restored"] is False

    stack.psql("DELETE FROM vendor_equipment WHERE id = (SELECT max(id) FROM vendor_equipment)")
    plan = restore(stack, tmp_path, check=True, **args)
    assert plan["changed"] is True and plan["operation"] == "replace", plan.get("reason")
    assert "changed since backup %s was restored" % backup in plan["reason"]
    plan = rerun_restores("delete")
    assert any("public.vendor_equipment: %d rows" % (before["vendor_equipment"] - 1) in c for c in plan["changes_since_restore"])

    # An UPDATE that leaves every timestamp alone (the old key could not see it).
    stack.psql("UPDATE compliance_frameworks SET version = 'ItEdited' WHERE id = (SELECT min(id) FROM compliance_frameworks)")
    plan = rerun_restores("update without timestamps")
    assert "public.compliance_frameworks: rows inserted or updated since the restore" in plan["changes_since_restore"]
    assert stack.psql("SELECT count(*) FROM compliance_frameworks WHERE version = 'ItEdited'") == "0"

    # TRUNCATE of a table that is not a canary table (no delete counters, a new relfilenode).
    stack.psql("TRUNCATE ner_entities")
    plan = rerun_restores("truncate")
    assert "public.ner_entities was rewritten or truncated" in plan["changes_since_restore"]

    # force always restores, even with nothing written.
    forced = restore(stack, tmp_path, force=True, **args)
    assert forced["changed"] is True and forced["restored"] is True and "(forced)" in forced["reason"]


def test_the_fingerprint_counts_newer_rows_as_the_circular_xid_comparison_did(stack):
    """The age() filter of fingerprint_sql (issue 16) gives the numbers of the filter it replaced, on a real server."""
    stack.psql("DROP TABLE IF EXISTS it_age_check")
    horizons = [int(stack.psql("SELECT txid_current()"))]
    stack.psql("CREATE TABLE it_age_check (id int); INSERT INTO it_age_check SELECT generate_series(1, 5)")
    horizons.append(int(stack.psql("SELECT txid_current()")))
    stack.psql("INSERT INTO it_age_check SELECT generate_series(6, 8)")
    stack.psql("UPDATE it_age_check SET id = id WHERE id = 1")
    horizons.append(int(stack.psql("SELECT txid_current()")))
    try:
        got = []
        for h in horizons:
            old = stack.psql(
                "SELECT count(*) FILTER (WHERE ((xmin::text::bigint - %d + 4294967296) %% 4294967296) < 2147483648) "
                "FROM it_age_check" % (h % 4294967296)
            )
            fingerprint = json.loads(stack.psql(fpr.fingerprint_sql(h, ["public.it_age_check"])))
            got.append(fingerprint["rels"]["public.it_age_check"][4])
            assert got[-1] == "8/%s" % old, (h, got[-1], old)
        assert got == ["8/8", "8/4", "8/0"]  # all rows; the 3 inserted and the 1 updated after h2; none after h3
    finally:
        stack.psql("DROP TABLE IF EXISTS it_age_check")


def crash_postgres(stack):
    """Kill -9 the checkpointer: the postmaster crash-restarts every backend and drops its statistics."""
    pg = stack.container("postgres")
    docker("exec", pg, "sh", "-c", 'kill -9 "$(pgrep -f "^postgres: checkpointer")"')
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if docker("exec", "-u", "postgres", pg, "psql", "-XAtc", "SELECT 1", check=False).stdout.strip() == "1":
            return
        time.sleep(0.5)
    raise AssertionError("postgres did not come back after the crash")


def test_a_write_then_a_postgres_crash_still_restores(stack, tmp_path):
    backup = raw_backup(stack, str(tmp_path))
    before = counts(stack)
    args = {"backup_id": backup, "if_exists": "replace", "confirm": DB}
    res = restore(stack, tmp_path, **args)
    assert res.get("failed") is not True, res.get("msg")

    # A crash alone is no write: still the state the backup produced.
    crash_postgres(stack)
    same = restore(stack, tmp_path, **args)
    assert same.get("failed") is not True, same.get("msg")
    assert same["changed"] is False and same["operation"] == "none", same.get("reason")

    # A delete right before the crash: its statistics are lost, the fingerprint is not.
    stack.psql("DELETE FROM threat_intelligence WHERE id = (SELECT min(id) FROM threat_intelligence)")
    crash_postgres(stack)
    res = restore(stack, tmp_path, **args)
    assert res.get("failed") is not True, res.get("msg")
    assert res["restored"] is True and counts(stack) == before


def test_database_modules_on_a_debian_11_python_39_host(stack, tmp_path):
    """pg_backup, pg_restore (twice: the fingerprint on 3.9) and ner_health run on a Debian 11 container host.

    The host is ``ner11/py39:ref`` (images/bullseye/, Python 3.9) reached with
    community.docker.docker; it drives the engine through the mounted socket with the
    machine's static docker client, shares the machine's network namespace (the stack's
    127.0.0.1 ports) and sees the catalog at the same path inside and outside.
    """
    if docker("image", "inspect", "ner11/py39:ref", check=False).returncode != 0:
        pytest.fail("image ner11/py39:ref is missing: run `make images` (images/bullseye/build.sh)")
    client = shutil.which("docker", path="/usr/local/bin") or "/usr/bin/docker"
    catalog = str(tmp_path / "catalog")
    os.makedirs(catalog, mode=0o700)
    host = "%s-py39host" % stack.project
    docker(
        "run", "-d", "--name", host, "--network", "host",
        "--label", "io.ner11.project=%s" % stack.project, "--label", "io.ner11.test=1",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", "%s:/usr/bin/docker:ro" % client,
        "-v", "%s:%s" % (catalog, catalog), "ner11/py39:ref", "sleep", "infinity",
    )  # fmt: skip
    try:
        assert docker("exec", host, "python3", "-c", "import sys; print(sys.version_info[:2])").stdout.strip() == "(3, 9)"
        inventory = tmp_path / "hosts.json"
        inventory.write_text(
            json.dumps(
                {
                    "py39": {
                        "hosts": {host: {}},
                        "vars": {
                            "ansible_connection": "community.docker.docker",
                            "ansible_python_interpreter": "/usr/bin/python3",
                        },
                    }
                }
            )
        )
        pg = stack.container("postgres")
        conn = {"container": pg, "db_name": DB}
        tasks = [
            {"name": "take a backup", "ner11.ops.pg_backup": dict(conn, backup_dir=catalog, period="manual"), "register": "made"},
            {
                "name": "lose a row",
                "ansible.builtin.command": {
                    "argv": [
                        "docker",
                        "exec",
                        "-u",
                        "postgres",
                        pg,
                        "psql",
                        "-X",
                        "-d",
                        DB,
                        "-c",
                        "DELETE FROM vendor_equipment WHERE id = (SELECT max(id) FROM vendor_equipment)",
                    ]
                },
            },  # fmt: skip
            {
                "name": "bring it back",
                "ner11.ops.pg_restore": dict(
                    conn, backup_dir=catalog, backup_id="{{ made.backup_id }}", if_exists="replace", confirm=DB
                ),
            },  # fmt: skip
            {
                "name": "once more",
                "ner11.ops.pg_restore": dict(
                    conn, backup_dir=catalog, backup_id="{{ made.backup_id }}", if_exists="replace", confirm=DB
                ),
            },  # fmt: skip
            {
                "name": "stack health",
                "ner11.ops.ner_health": dict(conn, api_url=stack.api_url, checks=["api", "db"], wait_for="pass", timeout=120),
            },  # fmt: skip
        ]
        play = tmp_path / "py39.json"
        play.write_text(json.dumps([{"name": "py39 host", "hosts": "py39", "gather_facts": False, "tasks": tasks}]))
        before = counts(stack)
        res = run_playbook(str(play), inventory=str(inventory))
        assert res.rc == 0, res.explain()
        assert res.task("take a backup", host)["changed"] is True
        restored = res.task("bring it back", host)
        assert restored["restored"] is True and restored["changed"] is True
        again = res.task("once more", host)
        assert again["changed"] is False and again["operation"] == "none", again.get("reason")
        assert res.task("stack health", host)["status"] == "pass"
        assert counts(stack) == before
    finally:
        docker("rm", "-f", host, check=False)

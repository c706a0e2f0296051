"""Adopting a compose stack with custom volume names, then converting it (issue 10, variant c).

The postgres volume is not ``<project>_postgres_data``: deploy never creates that empty
look-alike, and ``adopt.yml`` (check -> apply -> apply again) moves the stack to managed
containers on the SAME volume, after a pinned backup, with the seeded rows intact.
"""

from __future__ import annotations

import json
import os

import pytest
from compose_stack import ComposeStack, compose_available, day_two
from conftest import docker, run_playbook, unique_project

pytestmark = pytest.mark.skipif(not compose_available(), reason="docker compose v2 missing: run `make compose`")


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    project = unique_project("itadvol")
    cs = ComposeStack(
        project,
        tmp_path_factory.mktemp("composevol"),
        volume_names={"postgres_data": "%s_pgdata_custom" % project, "models": "%s_models_custom" % project},
    )
    cs.remove()
    try:
        cs.up()
        cs.seed()
        yield cs
    finally:
        cs.remove()


def _volumes(name):
    mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", name).stdout)
    return {m["Destination"]: m["Name"] for m in mounts if m["Type"] == "volume"}


def test_day_two_playbooks_never_create_the_model_volume(compose, tmp_path):
    deploy = day_two(compose, tmp_path / "bk")
    report = "\n".join(deploy.task("Report the drift of the adopted containers")["msg"])
    assert "%s_pgdata_custom:/var/lib/postgresql/data" % compose.project in report
    assert docker("volume", "inspect", "%s_postgres_data" % compose.project, check=False).returncode != 0


def test_adopt_converts_on_the_same_volumes(compose, tmp_path):
    before = compose.documents()
    pg_volumes = _volumes(compose.name("postgres"))
    assert pg_volumes == {"/var/lib/postgresql/data": "%s_pgdata_custom" % compose.project}
    ev = dict(compose.vars, ner11_confirm=compose.project, ner11_backup_dir=str(tmp_path / "bk"))

    refused = run_playbook("playbooks/adopt.yml", dict(ev, ner11_confirm="wrong"))
    assert refused.rc != 0 and "-e ner11_confirm=%s" % compose.project in refused.stdout

    ids = compose.ids()
    plan = run_playbook("playbooks/adopt.yml", ev, check=True)
    assert plan.rc == 0, plan.explain()
    lines = plan.task("Report the plan")["msg"]
    assert any(line.startswith("back up ner11_db from %s" % compose.name("postgres")) for line in lines)
    assert any("with volumes %s_pgdata_custom" % compose.project in line for line in lines)
    assert compose.ids() == ids and not os.path.exists(str(tmp_path / "bk"))

    applied = run_playbook("playbooks/adopt.yml", ev)
    assert applied.rc == 0, applied.explain()
    backup = applied.task("Take a pinned backup of the database first")
    assert backup["backup_id"].startswith("ner11_db-")
    for service in ("postgres", "api", "frontend"):
        labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", "%s-%s-1" % (compose.project, service)).stdout)
        assert labels["io.ner11.project"] == compose.project and labels["io.ner11.service"] == service
    # Same volumes, same rows; the compose containers are gone, their volumes stay.
    assert _volumes("%s-postgres-1" % compose.project) == pg_volumes
    assert _volumes("%s-api-1" % compose.project) == {"/app/models": "%s_models_custom" % compose.project}
    assert compose.ids() == {}
    assert compose.documents() == before

    again = run_playbook("playbooks/adopt.yml", ev)
    assert again.rc == 0 and again.changed() == 0, again.changed_tasks()
    deploy = run_playbook("playbooks/deploy.yml", compose.vars)
    assert deploy.rc == 0 and deploy.changed() == 0, deploy.changed_tasks()

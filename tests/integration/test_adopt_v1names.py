"""Adopting a compose stack with v1-style names set in ``ner11_stack`` (issue 10, variant b).

The runbooks' hosts run ``<project>_postgres_1``, ``<project>_api_1``, ``<project>_frontend_1``;
the operator names them in ``ner11_stack`` (the documented override). The day-two playbooks
never recreate them, and a managed postgres that fails its health gate during ``adopt.yml``
puts the compose containers back: same ids, data intact.
"""

from __future__ import annotations

import pytest
from compose_stack import ComposeStack, compose_available, day_two
from conftest import docker, run_playbook, unique_project

pytestmark = pytest.mark.skipif(not compose_available(), reason="docker compose v2 missing: run `make compose`")


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    cs = ComposeStack(unique_project("itadv1"), tmp_path_factory.mktemp("composev1"), v1_names=True, model_names=True)
    cs.remove()
    try:
        cs.up()
        cs.seed()
        yield cs
    finally:
        cs.remove()


def test_day_two_playbooks_keep_the_compose_containers(compose, tmp_path):
    assert compose.name("postgres") == "%s_postgres_1" % compose.project
    day_two(compose, tmp_path / "bk")


def test_failed_gate_during_adopt_puts_the_compose_containers_back(compose, tmp_path):
    ids = compose.ids()
    before = compose.documents()
    ev = dict(compose.vars, ner11_confirm=compose.project, ner11_backup_dir=str(tmp_path / "bk"))
    stack = dict(ev["ner11_stack"])
    services = {k: dict(v) for k, v in stack["services"].items()}
    # The managed postgres gets a healthcheck that always fails: its gate fails for real.
    services["postgres"].update(
        {
            "start_timeout": 6,
            "healthcheck": {
                "test": ["CMD-SHELL", "exit 1"],
                "interval": "1s",
                "timeout": "2s",
                "retries": 1,
                "start_period": "0s",
            },
        }
    )
    stack["services"] = services
    ev["ner11_stack"] = stack

    result = run_playbook("playbooks/adopt.yml", ev)
    assert result.rc != 0
    msg = result.task("Fail with the cause")["msg"]
    assert "failed and was rolled back" in msg and "did not become healthy" in msg
    assert "The pre-adoption backup is ner11_db-" in msg
    # The compose containers run again under their names, same ids, same volume, same rows.
    assert compose.ids() == ids
    for service in ("postgres", "api", "frontend"):
        state = docker("inspect", "-f", "{{.State.Running}}", compose.name(service)).stdout.strip()
        assert state == "true", service
    assert (
        docker(
            "ps", "-aq", "--filter", "name=preadopt", "--filter", "label=com.docker.compose.project=%s" % compose.project
        ).stdout.strip()
        == ""
    )
    assert docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % compose.project).stdout.strip() == ""
    assert compose.documents() == before

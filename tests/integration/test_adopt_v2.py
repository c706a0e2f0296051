"""Adopting a stack made by ``docker compose`` v2 with its default names (issue 10, variant a).

One compose project per module (``<project>-<service>-1``, volumes ``<project>_*``):
health, backup, service restart, startup and deploy run on it and never recreate it;
a model that differs from what runs (image, env, memory limit) is reported as drift
and left alone.
"""

from __future__ import annotations

import pytest
from compose_stack import ComposeStack, compose_available, day_two
from conftest import run_playbook, unique_project

pytestmark = pytest.mark.skipif(not compose_available(), reason="docker compose v2 missing: run `make compose`")


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    cs = ComposeStack(unique_project("itadv2"), tmp_path_factory.mktemp("composev2"))
    cs.remove()
    try:
        cs.up()
        cs.seed()
        yield cs
    finally:
        cs.remove()


def test_day_two_playbooks_keep_the_compose_containers(compose, tmp_path):
    deploy = day_two(compose, tmp_path / "bk", rerun_deploy=True)
    shown = deploy.task("Show where the stack answers")["msg"]
    assert "Containers: %s" % ", ".join(compose.name(s) for s in ("postgres", "api", "frontend")) in shown
    assert "Adopted (not managed, left as they run): postgres, api, frontend" in shown


def test_drift_is_reported_and_left_alone(compose):
    ids = compose.ids()
    ev = dict(compose.vars)
    stack = dict(ev["ner11_stack"])
    services = {k: dict(v) for k, v in stack["services"].items()}
    services["postgres"].update({"image": "ner11/postgres:drifted", "memory": "512m"})
    services["api"]["env"] = {"NER11_VERSION": "9.9.9"}
    stack["services"] = services
    ev["ner11_stack"] = stack
    result = run_playbook("playbooks/deploy.yml", ev)
    assert result.rc == 0, result.explain()
    assert result.changed() == 0, result.changed_tasks()
    report = "\n".join(result.task("Report the drift of the adopted containers")["msg"])
    name = compose.name("postgres")
    assert "postgres (%s) image: model ner11/postgres:drifted, running ner11/postgres:ref" % name in report
    assert "postgres (%s) limits.memory: model 536870912, running 0" % name in report
    assert "api (%s) env.NER11_VERSION: model 9.9.9, running (unset)" % compose.name("api") in report
    # Secret values never appear, only whether they are set.
    assert compose.password not in result.stdout
    assert compose.ids() == ids
    assert compose.documents() >= 2

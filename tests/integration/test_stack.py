"""The stack role and deploy.yml against the real Docker engine (issue: foundation)."""

from __future__ import annotations

import json
import urllib.request

import pytest
from conftest import docker, wait_http


def get(url, timeout=5):
    req = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - 127.0.0.1 only
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def inspect(name):
    return json.loads(docker("inspect", name).stdout)[0]


def test_every_container_is_healthy_and_bound_to_loopback(shared_stack):
    for service in ("postgres", "api", "frontend"):
        info = inspect(shared_stack.container(service))
        assert info["State"]["Running"] is True
        assert info["State"]["Health"]["Status"] == "healthy", info["State"]["Health"]["Log"][-1:]
        assert info["Config"]["Labels"]["io.ner11.project"] == shared_stack.project
        assert info["Config"]["Labels"]["io.ner11.service"] == service
        bindings = [b for v in info["HostConfig"]["PortBindings"].values() for b in v]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
        # G8: per-service stop timeouts reach the engine.
        assert info["Config"]["StopTimeout"] == {"postgres": 120, "api": 60, "frontend": 30}[service]


def test_secrets_never_reach_the_container_environment(shared_stack):
    for service in ("postgres", "api"):
        info = inspect(shared_stack.container(service))
        env = "\n".join(info["Config"]["Env"])
        assert shared_stack.password not in env
        assert "POSTGRES_PASSWORD_FILE=/run/secrets/db_password" in env
    secret = "/var/lib/ner11/%s/secrets/db_password" % shared_stack.project
    import os
    import stat

    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(secret)).st_mode) == 0o700


def test_api_contract(shared_stack):
    api = shared_stack.api_url
    status, _hdrs, body = get(api + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "healthy"
    assert {"timestamp", "version", "uptime_seconds"} <= set(health)

    status, _hdrs, body = get(api + "/api/v1/db/health")
    db = json.loads(body)
    assert status == 200 and db["database"] == "connected"
    assert db["pool_size"] == 10 and isinstance(db["active_connections"], int)

    status, _hdrs, body = get(api + "/api/v1/models/status")
    models = json.loads(body)
    assert status == 200 and models["models_loaded"] is True
    assert models["available_models"] and isinstance(models["load_time_seconds"], (int, float))

    status, _hdrs, _body = get(api + "/docs")
    assert status == 200

    for path in (
        "vendor-equipment",
        "threat-intelligence",
        "compliance",
        "economic-impact",
        "demographics",
        "prioritization",
    ):
        status, _hdrs, body = get("%s/api/v1/%s/health" % (api, path))
        assert status == 200 and json.loads(body)["status"] == "healthy", path

    status, _hdrs, body = get(api + "/api/v1/vendor-equipment/")
    assert status == 200 and "items" in json.loads(body)


def test_ner_extracts_and_stores_entities(shared_stack):
    api = shared_stack.api_url
    before = int(shared_stack.psql("SELECT count(*) FROM ner_documents"))
    payload = json.dumps({"text": "Siemens PLCs were hit by CVE-2023-12345 over Modbus from 10.1.2.3."}).encode()
    req = urllib.request.Request(api + "/api/v1/ner", data=payload, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - 127.0.0.1 only
        result = json.loads(resp.read())
    labels = {e["label"] for e in result["entities"]}
    assert {"VENDOR", "CVE", "PROTOCOL"} <= labels
    assert int(shared_stack.psql("SELECT count(*) FROM ner_documents")) == before + 1
    stored = shared_stack.psql("SELECT count(*) FROM ner_entities WHERE document_id = %d" % result["document_id"])
    assert int(stored) == len(result["entities"])


def test_metrics_are_prometheus_text(shared_stack):
    wait_http(shared_stack.api_url + "/health")
    status, headers, body = get(shared_stack.api_url + "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "http_requests_total{" in text and 'status="200"' in text
    assert "http_request_duration_seconds_bucket{" in text
    assert "ner11_db_pool_size" in text


def test_frontend_contract(shared_stack):
    fe = shared_stack.frontend_url
    status, _hdrs, body = get(fe + "/")
    page = body.decode()
    assert status == 200
    assert "<title>NER11 Gold Model</title>" in page and '<div id="root">' in page
    status, headers, _js = get(fe + "/static/js/main.chunk.js")
    assert status == 200 and headers["Content-Type"].startswith("application/javascript")
    status, _hdrs, proxied = get(fe + "/api/v1/health")
    _code, _hdrs, direct = get(shared_stack.api_url + "/api/v1/health")
    assert status == 200
    assert json.loads(proxied)["status"] == json.loads(direct)["status"] == "healthy"


def test_second_deploy_and_check_mode_change_nothing(shared_stack):
    again = shared_stack.deploy()
    assert again.rc == 0, again.explain()
    assert again.changed() == 0, again.changed_tasks()
    check = shared_stack.deploy(check=True)
    assert check.rc == 0, check.explain()
    assert check.changed() == 0, check.changed_tasks()


def test_four_steps_on_a_fresh_project(own_stack):
    stack = own_stack(deploy=False)
    plan = stack.deploy(check=True)
    assert plan.rc == 0, plan.explain()
    assert plan.changed() > 0
    # Check mode planned, created nothing.
    assert docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % stack.project).stdout.strip() == ""
    applied = stack.deploy()
    assert applied.rc == 0, applied.explain()
    assert applied.changed() > 0
    assert inspect(stack.container("frontend"))["State"]["Health"]["Status"] == "healthy"
    recheck = stack.deploy(check=True)
    assert recheck.rc == 0 and recheck.changed() == 0, recheck.changed_tasks()
    again = stack.deploy()
    assert again.rc == 0 and again.changed() == 0, again.changed_tasks()


def test_corrupt_model_reports_not_loaded(own_stack):
    stack = own_stack()
    api = stack.container("api")
    manifest = json.loads(docker("exec", api, "cat", "/app/models/manifest.json").stdout)
    first = manifest["models"][0]["files"][0]["path"]
    docker("exec", api, "sh", "-c", "printf 'garbage' >> /app/models/%s" % first)
    docker("restart", api)
    body = json.loads(wait_http(stack.api_url + "/api/v1/models/status", deadline_s=60))
    assert body["models_loaded"] is False
    health = json.loads(wait_http(stack.api_url + "/health"))
    assert health["status"] == "degraded"


@pytest.mark.parametrize(
    "override, message",
    [
        ({"services": {"api": {"ports": [{"host": 1, "container": 8000}, {"host": 1, "container": 8001}]}}}, "already published"),
        ({"servics": {}}, "unknown key(s) servics"),
    ],
)
def test_invalid_stack_model_fails_before_touching_anything(override, message):
    from conftest import run_playbook, unique_project

    project = unique_project("itbad")
    stack = dict(override, project=project)
    result = run_playbook("playbooks/deploy.yml", {"ner11_stack": stack, "ner11_db_password": "x" * 12})
    assert result.rc != 0
    assert message in result.stdout
    assert docker("ps", "-aq", "--filter", "label=io.ner11.project=%s" % project).stdout.strip() == ""


def test_missing_password_is_named():
    from conftest import run_playbook, unique_project

    result = run_playbook("playbooks/deploy.yml", {"ner11_stack": {"project": unique_project("itbad")}, "ner11_db_password": ""})
    assert result.rc != 0
    assert "ner11_db_password is not set" in result.stdout


def test_removing_volumes_needs_the_project_confirmed(own_stack):
    from conftest import run_playbook

    stack = own_stack(deploy=False)
    ev = dict(stack.vars, ner11_stack_state="absent", ner11_stack_remove_volumes=True)
    docker("volume", "create", "--label", "io.ner11.project=%s" % stack.project, "%s_postgres_data" % stack.project)
    refused = run_playbook("playbooks/deploy.yml", ev)
    assert refused.rc != 0
    assert "-e ner11_confirm=%s" % stack.project in refused.task("Check the confirmation before removing volumes")["msg"]
    # The role options set directly (the old way) are guarded the same.
    old_way = run_playbook("playbooks/deploy.yml", dict(stack.vars, stack_state="absent", stack_remove_volumes=True))
    assert old_way.rc != 0 and "Nothing was removed" in old_way.stdout
    assert docker("volume", "inspect", "%s_postgres_data" % stack.project, check=False).returncode == 0
    removed = run_playbook("playbooks/deploy.yml", dict(ev, ner11_confirm=stack.project))
    assert removed.rc == 0, removed.explain()
    assert docker("volume", "inspect", "%s_postgres_data" % stack.project, check=False).returncode != 0

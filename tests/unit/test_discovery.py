"""Discovery of a stack's containers on real ``docker inspect`` documents.

tests/unit/fixtures/compose_inspect.json holds the (trimmed) inspect output of two stacks
brought up with docker compose 2.26: ``h10fxa`` with compose v2 default names and volumes,
``h10fxb`` with compose v1-style ``container_name``s and a custom postgres volume name.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from ansible_collections.ner11.ops.plugins.module_utils.discovery import (
    DiscoveryError,
    discover,
    drift,
    drift_text,
    explicit_names_of,
    find_service,
    keep_volumes,
    port_owners,
    size_bytes,
)
from ansible_collections.ner11.ops.plugins.module_utils.stack_model import container_spec, normalize

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "compose_inspect.json")


@pytest.fixture
def engine():
    with open(FIXTURES) as fh:
        return json.load(fh)


def _stack(project, ports, names=None):
    stack = {"project": project, "services": {s: {"ports": [{"host": p, "container": c}]} for s, (p, c) in ports.items()}}
    for service, name in (names or {}).items():
        stack["services"][service]["container_name"] = name
    return stack


def _ports_of(engine, project):
    out = {}
    for c in engine:
        labels = c["Config"]["Labels"]
        if labels.get("com.docker.compose.project") == project:
            for key, binds in c["HostConfig"]["PortBindings"].items():
                out[labels["com.docker.compose.service"]] = (int(binds[0]["HostPort"]), int(key.split("/")[0]))
    return out


def _discover(engine, stack, services=None):
    model = normalize(stack)
    specs = {s: container_spec(model, s) for s in ("postgres", "api", "frontend")}
    return discover(engine, model, explicit_names_of(stack), services, specs)


def test_compose_v2_default_names_are_adopted_by_labels(engine):
    found = _discover(engine, _stack("h10fxa", _ports_of(engine, "h10fxa")))
    assert found["containers"] == {"postgres": "h10fxa-postgres-1", "api": "h10fxa-api-1", "frontend": "h10fxa-frontend-1"}
    assert found["adopted"] == ["postgres", "api", "frontend"]
    assert found["managed"] == [] and found["missing"] == []
    pg = found["services"]["postgres"]
    assert pg["origin"] == "compose" and pg["adopted"] and not pg["managed"]
    assert pg["compose"]["project"] == "h10fxa" and pg["compose"]["version"].startswith("2.")
    assert pg["id"].startswith("9d2faf") and pg["running"] and pg["health"] == "healthy"
    assert pg["volumes"] == ["h10fxa_postgres_data"]
    assert pg["mounts"][0]["target"] == "/var/lib/postgresql/data"
    assert found["network"] == "h10fxa_default"
    # The stack's own ports are not conflicts: the adopted containers are the stack itself.
    assert found["port_conflicts"] == []


def test_compose_v1_style_names_and_a_custom_volume(engine):
    found = _discover(engine, _stack("h10fxb", _ports_of(engine, "h10fxb")))
    assert found["containers"] == {"postgres": "h10fxb_postgres_1", "api": "h10fxb_api_1", "frontend": "h10fxb_frontend_1"}
    pg = found["services"]["postgres"]
    assert pg["volumes"] == ["h10fxb_pgdata_custom"]
    # The model names another volume: reported as drift, and the desired container keeps the one in use.
    assert {"field": "volumes", "model": ["h10fxb_postgres_data:/var/lib/postgresql/data"],
            "actual": ["h10fxb_pgdata_custom:/var/lib/postgresql/data"]} in pg["drift"]  # fmt: skip
    assert pg["kept_volumes"] == [
        {"target": "/var/lib/postgresql/data", "model": "h10fxb_postgres_data", "actual": "h10fxb_pgdata_custom"}
    ]
    data = [m for m in pg["desired"]["mounts"] if m["target"] == "/var/lib/postgresql/data"]
    assert data == [
        {"source": "h10fxb_pgdata_custom", "target": "/var/lib/postgresql/data", "type": "volume", "read_only": False}
    ]


def test_explicit_names_win_and_secret_values_never_show(engine):
    stack = _stack("h10fxb", _ports_of(engine, "h10fxb"), names={"postgres": "h10fxb_postgres_1"})
    found = _discover(engine, stack)
    pg = found["services"]["postgres"]
    assert pg["origin"] == "name"
    text = json.dumps(found)
    assert "it-test-password" not in text
    fields = {d["field"]: d for d in pg["drift"]}
    assert fields["env.POSTGRES_PASSWORD_FILE"] == {
        "field": "env.POSTGRES_PASSWORD_FILE", "model": "/run/secrets/db_password", "actual": "(unset)"
    }  # fmt: skip
    assert "POSTGRES_PASSWORD" in pg["env_keys"]


def test_drift_lists_image_ports_healthcheck_and_limits(engine):
    stack = _stack("h10fxa", {"postgres": (5999, 5432), "api": (5998, 8000), "frontend": (5997, 3000)})
    stack["services"]["postgres"]["image"] = "ner11/postgres:other"
    stack["services"]["postgres"]["memory"] = "512m"
    found = _discover(engine, stack)
    fields = {d["field"]: d for d in found["services"]["postgres"]["drift"]}
    assert fields["image"] == {"field": "image", "model": "ner11/postgres:other", "actual": "ner11/postgres:ref"}
    assert fields["ports"]["model"] == ["127.0.0.1:5999:5432"]
    assert fields["limits.memory"] == {"field": "limits.memory", "model": 512 * 1024**2, "actual": 0}
    assert fields["healthcheck.test"]["actual"][0] == "CMD-SHELL"
    assert found["drifted"] == ["postgres", "api", "frontend"]
    assert any(line.startswith("postgres (h10fxa-postgres-1) image: model ner11/postgres:other") for line in drift_text(found))


def test_other_containers_holding_the_ports_are_conflicts(engine):
    # Model h10fxb on the ports h10fxa publishes: h10fxa's containers are someone else's.
    found = _discover(engine, _stack("h10fxb", _ports_of(engine, "h10fxa")))
    owners = sorted(name for _port, name in found["port_conflicts"])
    assert owners == ["h10fxa-api-1", "h10fxa-frontend-1", "h10fxa-postgres-1"]
    # Stopped containers hold no port.
    stopped = copy.deepcopy(engine)
    for c in stopped:
        c["State"]["Running"] = False
    assert port_owners(stopped, [p for p, _c in _ports_of(engine, "h10fxa").values()], set()) == []


def test_collection_labels_win_over_compose_labels(engine):
    managed = copy.deepcopy([c for c in engine if c["Name"] == "/h10fxa-api-1"][0])
    managed["Id"] = "f" * 64
    managed["Name"] = "/h10fxa-api-new"
    managed["Config"]["Labels"] = {"io.ner11.project": "h10fxa", "io.ner11.service": "api"}
    found = _discover(engine + [managed], _stack("h10fxa", _ports_of(engine, "h10fxa")))
    api = found["services"]["api"]
    assert api["name"] == "h10fxa-api-new" and api["managed"] and not api["adopted"] and api["origin"] == "collection"
    assert found["adopted"] == ["postgres", "frontend"] and found["managed"] == ["api"]
    # Two containers with our labels for one service: the operator must decide.
    twin = copy.deepcopy(managed)
    twin["Name"] = "/h10fxa-api-twin"
    with pytest.raises(DiscoveryError, match="remove all but one"):
        find_service(engine + [managed, twin], "h10fxa", "api")


def test_missing_services_get_the_derived_name_and_one_off_containers_are_ignored(engine):
    oneoff = copy.deepcopy([c for c in engine if c["Name"] == "/h10fxa-api-1"][0])
    oneoff["Config"]["Labels"].update({"com.docker.compose.project": "h10new", "com.docker.compose.oneoff": "True"})
    found = _discover(engine + [oneoff], _stack("h10new", {"postgres": (1, 5432), "api": (2, 8000), "frontend": (3, 3000)}))
    assert found["missing"] == ["postgres", "api", "frontend"]
    assert found["containers"]["api"] == "h10new-api-1"
    assert found["network"] == "h10new_default"
    assert found["services"]["api"]["state"] == "missing" and found["services"]["api"]["drift"] == []


def test_selected_services_limit_the_lists(engine):
    found = _discover(engine, _stack("h10fxa", _ports_of(engine, "h10fxa")), services=["postgres"])
    assert found["adopted"] == ["postgres"]
    assert found["containers"]["api"] == "h10fxa-api-1"  # names of every service stay known


def test_keep_volumes_adds_volumes_the_model_does_not_name(engine):
    api = [c for c in engine if c["Name"] == "/h10fxa-api-1"][0]
    spec = container_spec(normalize({"project": "h10fxa", "services": {"api": {"volumes": []}}}), "api")
    desired, kept = keep_volumes(spec, api)
    assert kept == [{"target": "/app/models", "model": "", "actual": "h10fxa_models"}]
    assert {"source": "h10fxa_models", "target": "/app/models", "type": "volume", "read_only": False} in desired["mounts"]


def test_sizes_and_drift_of_an_identical_container():
    assert size_bytes("512m") == 512 * 1024**2 and size_bytes("1g") == 1024**3 and size_bytes("") == 0
    spec = {"image": "x:1", "env": {"A": "1"}, "published_ports": ["127.0.0.1:1:2"], "mounts": [], "stop_timeout": 30}
    container = {
        "Config": {"Image": "x:1", "Env": ["A=1"], "StopTimeout": 30},
        "HostConfig": {"PortBindings": {"2/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1"}]}, "Memory": 0},
        "Mounts": [],
    }
    assert drift(spec, container) == []


def test_engine_errors_name_the_socket(tmp_path):
    from ansible_collections.ner11.ops.plugins.module_utils.docker_socket import Engine, EngineError

    missing = "unix://%s/docker.sock" % tmp_path
    with pytest.raises(EngineError, match="docker.sock"):
        Engine(missing, timeout=2).info()
    with pytest.raises(EngineError, match="unsupported docker host"):
        Engine("ssh://somewhere")


def test_log_limits_and_shm_size_of_a_compose_stack_are_reported_as_drift(engine):
    # Compose-made containers run with Docker's defaults: 64 MB /dev/shm, json-file without limits.
    found = _discover(engine, _stack("h10fxa", _ports_of(engine, "h10fxa")))
    pg = {d["field"]: d for d in found["services"]["postgres"]["drift"]}
    assert pg["log.max-size"]["model"] == "100m" and pg["log.max-file"]["model"] == "5"
    assert pg["limits.shm_size"]["model"] == 256 * 1024**2
    api = {d["field"]: d for d in found["services"]["api"]["drift"]}
    assert api["log.max-size"] == {"field": "log.max-size", "model": "50m", "actual": "(unset)"}
    assert found["services"]["postgres"]["log"] == {"driver": "", "options": {}}  # the recorded fixture has no LogConfig

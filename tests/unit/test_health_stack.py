"""ner_health with ``stack``: discovery in the same run, targets filled from the model (health_stack)."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.ner11.ops.plugins.filter.host_services import host_services as host_services_filter
from ansible_collections.ner11.ops.plugins.module_utils import health_result as hr
from ansible_collections.ner11.ops.plugins.module_utils import health_stack as hs
from ansible_collections.ner11.ops.plugins.module_utils import stack_model as sm
from ansible_collections.ner11.ops.plugins.module_utils.discovery import discover, explicit_names_of
from ansible_collections.ner11.ops.plugins.module_utils.stack_model import normalize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class FakeEngine:
    """The Engine API paths ner_health reads, answered from real ``docker inspect`` documents."""

    def __init__(self, docs, root="/var/lib/docker"):
        self.docs = docs
        self.root = root
        self.paths = []

    def get(self, path):
        self.paths.append(path)
        if path == "/info":
            return {"DockerRootDir": self.root}
        if path.startswith("/containers/json"):
            return [{"Id": d["Id"], "Names": [d["Name"]], "Labels": d["Config"]["Labels"]} for d in self.docs]
        key = path.split("/")[2]
        for d in self.docs:
            if key in (d["Id"], d["Name"].lstrip("/")):
                return d
        return None


@pytest.fixture
def docs():
    with open(os.path.join(HERE, "fixtures", "compose_inspect.json")) as fh:
        return json.load(fh)


def test_the_roles_pick_services_with_the_one_map():
    # The common role's discovery and services entry points use the host_services filter, which
    # is stack_model.host_services, the function ner_health runs: no second copy of the map.
    for name in ("discovery.yml", "services.yml"):
        with open(os.path.join(ROOT, "roles", "common", "tasks", name)) as fh:
            text = fh.read()
        assert "ner11.ops.host_services(common_services)" in text, name
    assert host_services_filter(["ner11_api", "x"]) == ["api"]
    assert host_services_filter(["ner11_api"], ["frontend"]) == ["frontend"]


@pytest.mark.parametrize(
    "services, groups, expected",
    [
        (None, [], ["postgres", "api", "frontend"]),
        (None, ["ner11", "other"], ["postgres", "api", "frontend"]),
        (None, ["ner11_api"], ["api"]),
        (None, ["ner11_frontend", "ner11_db"], ["postgres", "frontend"]),
        (["frontend", "api"], ["ner11_db"], ["api", "frontend"]),
    ],
)
def test_host_services(services, groups, expected):
    assert sm.host_services(services, groups) == expected


def test_only_the_stacks_containers_are_inspected_and_found_as_stack_info_does(docs):
    stack = {"project": "h10fxa"}
    engine = FakeEngine(docs)
    model, found = hs.discover_stack(engine, stack, ["postgres", "api", "frontend"])
    inspected = [p for p in engine.paths if p.startswith("/containers/") and not p.startswith("/containers/json")]
    assert len(inspected) == 3  # h10fxa's three, not h10fxb's
    full = discover(docs, normalize(stack), explicit_names_of(stack), ["postgres", "api", "frontend"])
    assert (
        found["containers"]
        == full["containers"]
        == {
            "postgres": "h10fxa-postgres-1",
            "api": "h10fxa-api-1",
            "frontend": "h10fxa-frontend-1",
        }
    )
    for key in ("running", "missing", "adopted", "managed", "volumes", "network", "ids"):
        assert found[key] == full[key], key
    assert found["docker_root_dir"] == "/var/lib/docker"
    assert "port_conflicts" not in found and "desired" not in found["services"]["api"]
    assert model["project"] == "h10fxa"


def test_an_explicit_container_name_is_inspected(docs):
    stack = {"project": "other", "services": {"postgres": {"container_name": "h10fxb_postgres_1"}}}
    model, found = hs.discover_stack(FakeEngine(docs), stack, ["postgres"])
    assert found["services"]["postgres"]["found"] and found["containers"]["postgres"] == "h10fxb_postgres_1"
    assert found["missing"] == [] and found["selected"] == ["postgres"]
    assert model["project"] == "other"


def test_fill_targets_from_the_model(docs):
    stack = {"project": "h10fxa", "db_name": "gold", "db_user": "ner", "canary_tables": ["t1"]}
    model, found = hs.discover_stack(FakeEngine(docs, root="/srv/docker"), stack, ["postgres", "api"])
    params = {"db_name": "ner11_db", "login_user": "postgres", "canary_tables": None, "disks": ["/"], "checks": None}
    p = hs.fill_targets(params, model, found, ["postgres", "api"], docker_root_disk=True)
    assert p["api_url"] == model["api_url"] and "frontend_url" not in p
    assert p["container"] == "h10fxa-postgres-1"
    assert p["containers"] == ["h10fxa-postgres-1", "h10fxa-api-1"]
    assert (p["db_name"], p["login_user"], p["canary_tables"]) == ("gold", "ner", ["t1"])
    assert p["disks"] == ["/", "/srv/docker"]
    assert p["checks"] == ["api", "db", "container", "disk", "memory"]
    assert params["checks"] is None  # the caller's dict is not changed


def test_explicit_options_win(docs):
    model, found = hs.discover_stack(FakeEngine(docs), {"project": "h10fxa"}, ["frontend"])
    params = {"frontend_url": "http://10.0.0.9:3000", "db_name": "x", "canary_tables": [], "checks": ["frontend"], "disks": ["/"]}
    p = hs.fill_targets(params, model, found, ["frontend"])
    assert p["frontend_url"] == "http://10.0.0.9:3000" and p["db_name"] == "x" and p["canary_tables"] == []
    assert p["checks"] == ["frontend"] and "container" not in p and p["disks"] == ["/"]


def test_engine_inspect_reports_missing_and_errors(docs):
    inspect = hs.engine_inspect(FakeEngine(docs))
    rc, out, err = inspect(["h10fxa-api-1", "nope"])
    assert rc == 0 and list(out) == ["h10fxa-api-1"] and err == ""

    class Down:
        def get(self, path):
            raise OSError("connection refused")

    rc, out, err = hs.engine_inspect(Down())(["h10fxa-api-1"])
    assert rc == 1 and out == {} and "refused" in err


def test_report_lines_is_the_roles_table():
    checks = {
        "api:http": hr.make_check("api", "http", "pass", "healthy", "healthy", None, 8.4),
        "db:canary": hr.make_check("db", "canary", "pass", "ok", {"vendor_equipment": 8, "threat_intelligence": 3}, None, 187),
        "db:connect": hr.make_check("db", "connect", "pass", "authenticated", None, None, None),
        "disk:/": hr.make_check("disk", "/", "warn", "85% used", 85.04, "percent", 0.1),
    }
    status, summ, _failed = hr.aggregate(checks)
    lines = hr.report_lines({"checks": checks, "status": status, "summary": summ, "duration_ms": 196.2, "attempts": 1})
    assert lines[0] == "CHECK                          STATUS VALUE                      LATENCY  OUTPUT"
    assert lines[1] == "api:http                       pass   healthy                       8 ms  healthy"
    assert lines[2].startswith('db:canary                      pass   {"vendor_equipment": 8,~    187 ms  ok')
    assert lines[3] == "db:connect                     pass   -                                -  authenticated"
    assert lines[4] == "disk:/                         warn   85.04 percent                 0 ms  85% used"
    assert lines[5] == "WARN: 3 pass, 1 warn, 0 fail in 196 ms (1 attempt(s))"


def test_summary_orders_and_lists_what_to_start(docs):
    stopped = json.loads(json.dumps(docs))
    for d in stopped:
        if d["Name"] == "/h10fxa-api-1":
            d["State"]["Running"] = False
            d["State"]["Status"] = "exited"
    model, found = hs.discover_stack(FakeEngine(stopped), {"project": "h10fxa"}, ["frontend", "api"])
    out = hs.summary(model, found, ["api", "frontend"])
    assert out["order"] == [s for s in model["start_order"] if s in ("api", "frontend")] == ["api", "frontend"]
    assert out["to_start"] == ["api"] and out["found"] is found and out["services"] == ["api", "frontend"]
    # Not done: something to start; done: every container runs and the check did not fail.
    assert not hs.host_is_done("pass", out)
    running = hs.summary(model, found, ["frontend"])
    assert running["to_start"] == [] and hs.host_is_done("pass", running) and hs.host_is_done("warn", running)
    assert not hs.host_is_done("fail", running)
    missing = dict(running, found=dict(found, missing=["frontend"]))
    assert not hs.host_is_done("pass", missing)
    # Without a stack there is nothing to start: the status alone decides.
    assert hs.host_is_done("warn", None) and not hs.host_is_done("fail", None)

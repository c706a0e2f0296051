import pytest

from ansible_collections.ner11.ops.plugins.module_utils.stack_model import (
    StackModelError,
    container_spec,
    normalize,
    topological_order,
)


def test_defaults_are_the_reference_stack():
    model = normalize({})
    assert model["project"] == "ner11"
    assert model["network"] == "ner11_default"
    assert model["containers"] == {"postgres": "ner11-postgres-1", "api": "ner11-api-1", "frontend": "ner11-frontend-1"}
    assert model["start_order"] == ["postgres", "api", "frontend"]
    assert model["stop_order"] == ["frontend", "api", "postgres"]
    # G8: per-service stop timeouts from the service-control runbook.
    assert [model["services"][s]["stop_timeout"] for s in ("frontend", "api", "postgres")] == [30, 60, 120]
    # Host ports bind to 127.0.0.1 unless configured otherwise.
    assert model["services"]["api"]["ports"][0]["spec"] == "127.0.0.1:8000:8000"
    assert model["api_url"] == "http://127.0.0.1:8000"
    assert model["frontend_url"] == "http://127.0.0.1:3000"
    assert model["services"]["postgres"]["volumes"][0]["source"] == "ner11_postgres_data"


def test_project_is_a_variable_everywhere():
    model = normalize({"project": "t1"})
    assert model["network"] == "t1_default"
    assert model["config_dir"] == "/var/lib/ner11/t1"
    assert model["services"]["api"]["volumes"][0]["source"] == "t1_models"
    assert model["services"]["postgres"]["labels"] == {"io.ner11.project": "t1", "io.ner11.service": "postgres"}


def test_overrides_merge_deeply_and_lists_replace():
    model = normalize({"services": {"api": {"ports": [{"host": 18000, "container": 8000}], "env": {"X": 1}}}})
    assert model["services"]["api"]["ports"][0]["spec"] == "127.0.0.1:18000:8000"
    assert model["services"]["api"]["env"] == {"X": "1"}
    assert model["services"]["api"]["image"] == "ner11/ner-api:ref"
    assert model["services"]["api"]["healthcheck"]["interval"] == "2s"


def test_healthcheck_expands_names():
    model = normalize({"db_name": "other_db", "db_user": "app"})
    assert model["services"]["postgres"]["healthcheck"]["test"][1] == "pg_isready -U app -d other_db -h 127.0.0.1"


@pytest.mark.parametrize(
    "stack, message",
    [
        ({"bogus": 1}, "unknown key(s) bogus in ner11_stack"),
        ({"services": {"redis": {}}}, "unknown key(s) redis"),
        ({"services": {"api": {"imag": "x"}}}, "unknown key(s) imag in ner11_stack.services.api"),
        ({"project": "Bad Name"}, "not a valid project name"),
        (
            {"services": {"api": {"ports": [{"host": 5432, "container": 8000}]}}},
            "host port 5432 is already published by postgres",
        ),
        ({"services": {"api": {"ports": [{"host": 70000, "container": 8000}]}}}, "between 1 and 65535"),
        ({"services": {"api": {"stop_timeout": -1}}}, "stop_timeout must be between 1 and 3600"),
        ({"services": {"api": {"stop_timeout": "soon"}}}, "stop_timeout must be an integer"),
        ({"services": {"postgres": {"depends_on": ["frontend"]}}}, "cycle"),
        ({"services": {"api": {"depends_on": ["cache"]}}}, "unknown service 'cache'"),
        ({"services": {"api": {"container_name": "ner11-postgres-1"}}}, "also used by postgres"),
        ({"services": {"api": {"healthcheck": {"test": ["CMD", "true"], "interval": "often"}}}}, "must be a duration"),
        ({"db_name": "x; drop"}, "not a valid PostgreSQL name"),
        ({"secrets_mode": "plain"}, "'file' or 'env'"),
        ({"config_dir": "relative"}, "absolute path"),
    ],
)
def test_invalid_models_name_the_fix(stack, message):
    with pytest.raises(StackModelError) as err:
        normalize(stack)
    assert message in str(err.value)


def test_wildcard_bind_collides_with_any_address():
    with pytest.raises(StackModelError, match="already published"):
        normalize({"services": {"api": {"ports": [{"host": 5432, "container": 8000, "bind": "0.0.0.0"}]}}})
    # Same port on two distinct addresses is fine.
    model = normalize({"services": {"api": {"ports": [{"host": 5432, "container": 8000, "bind": "127.0.0.2"}]}}})
    assert model["services"]["api"]["ports"][0]["spec"] == "127.0.0.2:5432:8000"


def test_topological_order_is_stable():
    services = {"frontend": {"depends_on": ["api"]}, "api": {"depends_on": []}, "postgres": {"depends_on": []}}
    assert topological_order(services) == ["postgres", "api", "frontend"]


def test_container_spec_keeps_secrets_out_of_the_environment():
    model = normalize({"project": "t2"})
    spec = container_spec(model, "api")
    assert spec["env"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "POSTGRES_PASSWORD" not in spec["env"]
    assert {
        "source": "/var/lib/ner11/t2/secrets/db_password",
        "target": "/run/secrets/db_password",
        "type": "bind",
        "read_only": True,
    } in spec["mounts"]
    assert spec["networks"] == [{"name": "t2_default", "aliases": ["api"]}]
    assert spec["secret_vars"] == {}


def test_container_spec_env_mode_names_the_secret_vars_only():
    model = normalize({"secrets_mode": "env"})
    spec = container_spec(model, "postgres")
    assert spec["secret_vars"] == {"POSTGRES_PASSWORD": "db_password"}
    assert not any(k.startswith("POSTGRES_PASSWORD") for k in spec["env"])
    assert spec["env"]["POSTGRES_DB"] == "ner11_db"


def test_frontend_upstream_follows_the_api_container_port():
    model = normalize({"services": {"api": {"ports": [{"host": 18000, "container": 8080}]}}})
    assert container_spec(model, "frontend")["env"]["NER11_API_UPSTREAM"] == "api:8080"


def test_port_owners_names_the_container_holding_a_port():
    pytest.importorskip("ansible")  # filters are controller code (ansible-core); make units39 has no ansible
    from ansible_collections.ner11.ops.plugins.filter.stack_model import port_owners

    containers = [
        {"Names": ["/web"], "Ports": [{"PublicPort": 8000, "PrivatePort": 80}]},
        {"Names": ["/db"], "Ports": [{"PrivatePort": 5432}]},
        {"Names": ["/other"]},
    ]
    assert port_owners(containers, [8000, 5432]) == [["8000", "web"]]
    assert port_owners(containers, []) == []


def test_stack_model_filter_reports_invalid_models_as_filter_errors():
    pytest.importorskip("ansible")  # filters are controller code (ansible-core); make units39 has no ansible
    from ansible.errors import AnsibleFilterError

    from ansible_collections.ner11.ops.plugins.filter.stack_model import stack_model

    with pytest.raises(AnsibleFilterError, match="invalid ner11_stack: unknown key"):
        stack_model({"nope": 1})
    assert stack_model(None)["project"] == "ner11"


def test_postgres_gets_a_sized_shm_and_every_container_json_file_log_limits():
    from ansible_collections.ner11.ops.plugins.module_utils.stack_model import container_spec

    model = normalize({})
    pg = container_spec(model, "postgres")
    assert pg["shm_size"] == "256m"
    assert pg["log_driver"] == "json-file" and pg["log_options"] == {"max-size": "100m", "max-file": "5"}
    for service in ("api", "frontend"):
        spec = container_spec(model, service)
        assert spec["shm_size"] is None
        assert spec["log_options"] == {"max-size": "50m", "max-file": "3"}
    custom = normalize({"services": {"api": {"logging": {"max_size": "5m", "max_file": 2}, "shm_size": "128M"}}})
    assert container_spec(custom, "api")["log_options"] == {"max-size": "5m", "max-file": "2"}
    assert container_spec(custom, "api")["shm_size"] == "128m"
    assert container_spec(normalize({"services": {"api": {"logging": None}}}), "api")["log_options"] == {}


@pytest.mark.parametrize(
    "service, words",
    [
        ({"shm_size": "lots"}, "shm_size must be a size"),
        ({"logging": {"max_size": "big"}}, "max_size must be a size"),
        ({"logging": {"driver": "syslog"}}, "driver must be 'json-file' or 'local'"),
        ({"logging": {"max_file": 3, "max_size": ""}}, "max_file needs max_size"),
        ({"logging": {"rotate": 1}}, "unknown key"),
    ],
)
def test_invalid_shm_and_log_limits_name_the_fix(service, words):
    with pytest.raises(StackModelError, match=words):
        normalize({"services": {"postgres": service}})

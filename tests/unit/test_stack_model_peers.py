# Copyright (c) ner11.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Multi-host peers in the stack model: the api's database and the frontend's API upstreams."""

from __future__ import annotations

import pytest

from ansible_collections.ner11.ops.plugins.module_utils.stack_model import StackModelError, container_spec, normalize


def test_single_host_keeps_the_network_aliases():
    model = normalize({})
    assert model["peers"] == {"postgres": "", "api": []}
    assert container_spec(model, "api")["env"]["POSTGRES_HOST"] == "postgres"
    assert container_spec(model, "api")["env"]["POSTGRES_PORT"] == "5432"
    assert container_spec(model, "frontend")["env"]["NER11_API_UPSTREAM"] == "api:8000"


def test_api_reaches_the_database_of_another_host():
    model = normalize({"peers": {"postgres": "10.231.1.1:15432"}})
    env = container_spec(model, "api")["env"]
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("10.231.1.1", "15432")


def test_frontend_balances_over_every_api_host():
    model = normalize({"peers": {"api": ["10.231.2.1:18000", "api2.example.internal:18000"]}})
    env = container_spec(model, "frontend")["env"]
    assert env["NER11_API_UPSTREAM"] == "10.231.2.1:18000,api2.example.internal:18000"


def test_api_peers_as_a_string_list():
    model = normalize({"peers": {"api": "a:1, b:2"}})
    assert model["peers"]["api"] == ["a:1", "b:2"]


def test_explicit_env_still_wins():
    model = normalize({"peers": {"api": ["a:1"]}, "services": {"frontend": {"env": {"NER11_API_UPSTREAM": "x:9"}}}})
    assert container_spec(model, "frontend")["env"]["NER11_API_UPSTREAM"] == "x:9"


def test_ipv6_peer():
    assert normalize({"peers": {"postgres": "[fd00::5]:5432"}})["peers"]["postgres"] == "[fd00::5]:5432"


@pytest.mark.parametrize(
    "peers, text",
    [
        ({"postgres": "db1"}, "ner11_stack.peers.postgres must be host:port"),
        ({"postgres": "db1:0"}, "ner11_stack.peers.postgres must be host:port"),
        ({"postgres": "db1:70000"}, "ner11_stack.peers.postgres must be host:port"),
        ({"api": ["a:1", "bad host:2"]}, r"ner11_stack.peers.api\[1\] must be host:port"),
        ({"api": ["a:1", "a:1"]}, "lists a:1 twice"),
        ({"api": {"a": 1}}, "must be a list of host:port"),
        ({"web": []}, "unknown key"),
        ("x", "ner11_stack.peers must be a mapping"),
    ],
)
def test_invalid_peers_name_the_fix(peers, text):
    with pytest.raises(StackModelError, match=text):
        normalize({"peers": peers})

"""The NetworkPolicy evaluator against Kubernetes' documented semantics, on small policies: the
platform's tests are only as good as its answers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.networkpolicy import (
    Cluster,
    External,
    Pod,
    allowed,
    network_policies,
    selector_matches,
)

WEB = Pod("web", "shop", {"app": "web"}, "10.0.1.1")
DB = Pod("db", "shop", {"app": "db"}, "10.0.1.2")
OTHER_WEB = Pod("web", "other", {"app": "web"}, "10.0.2.1")
OUTSIDE = External("outside", "203.0.113.9")


def _policy(spec: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": spec,
    }


def _cluster(*specs: dict[str, Any]) -> Cluster:
    return Cluster([_policy(spec) for spec in specs], {"other": {"team": "b"}})


DB_ONLY = {"podSelector": {"matchLabels": {"app": "db"}}}


def test_a_pod_no_policy_selects_is_open() -> None:
    cluster = _cluster({**DB_ONLY, "policyTypes": ["Ingress"]})
    assert allowed(cluster, OTHER_WEB, WEB, 80)
    assert not allowed(cluster, WEB, DB, 5432)


def test_policy_types_default_to_ingress_plus_egress_when_it_has_egress_rules() -> None:
    ingress_only = _cluster(DB_ONLY)
    assert not allowed(ingress_only, WEB, DB, 5432)
    assert allowed(ingress_only, DB, OUTSIDE, 443)
    with_egress = _cluster({**DB_ONLY, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]})
    assert not allowed(with_egress, DB, OUTSIDE, 443)
    assert allowed(with_egress, DB, OUTSIDE, 53, "UDP")


def test_rules_add_up_across_policies() -> None:
    from_web = {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}
    cluster = _cluster(
        {**DB_ONLY, "ingress": [from_web]},
        {**DB_ONLY, "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]},
    )
    assert allowed(cluster, WEB, DB, 5432)
    assert allowed(cluster, OUTSIDE, DB, 5432)
    assert not allowed(cluster, Pod("job", "shop", {"app": "job"}, "10.0.1.3"), DB, 5432)


def test_a_rule_without_peers_or_ports_matches_all() -> None:
    assert allowed(_cluster({**DB_ONLY, "ingress": [{}]}), OTHER_WEB, DB, 1)
    assert allowed(_cluster({**DB_ONLY, "ingress": [{"from": [], "ports": []}]}), OUTSIDE, DB, 1)
    assert not allowed(_cluster({**DB_ONLY, "ingress": []}), WEB, DB, 1)


def test_a_pod_selector_peer_is_the_policys_namespace_unless_a_namespace_selector_says() -> None:
    web = {"podSelector": {"matchLabels": {"app": "web"}}}
    team_b = {"namespaceSelector": {"matchLabels": {"team": "b"}}}
    assert not allowed(_cluster({**DB_ONLY, "ingress": [{"from": [web]}]}), OTHER_WEB, DB, 1)
    both = _cluster({**DB_ONLY, "ingress": [{"from": [{**web, **team_b}]}]})
    assert allowed(both, OTHER_WEB, DB, 1)
    assert not allowed(both, Pod("job", "other", {"app": "job"}, "10.0.2.2"), DB, 1)
    assert not allowed(both, WEB, DB, 1)
    either = _cluster({**DB_ONLY, "ingress": [{"from": [web, team_b]}]})
    assert allowed(either, WEB, DB, 1)
    assert allowed(either, Pod("job", "other", {"app": "job"}, "10.0.2.2"), DB, 1)
    by_name = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}
    assert allowed(_cluster({**DB_ONLY, "ingress": [{"from": [by_name]}]}), OTHER_WEB, DB, 1)


def test_ip_blocks_with_exceptions_and_pod_addresses() -> None:
    block = {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["203.0.113.9/32"]}}
    cluster = _cluster({**DB_ONLY, "ingress": [{"from": [block]}]})
    assert not allowed(cluster, OUTSIDE, DB, 1)
    assert allowed(cluster, External("x", "198.51.100.1"), DB, 1)
    assert not allowed(cluster, WEB, DB, 1)
    assert allowed(cluster, WEB, DB, 1, ipblock_matches_pods=True)


def test_ports_protocols_and_ranges() -> None:
    ports = [{"port": 8000}, {"protocol": "UDP", "port": 53}, {"port": 10002, "endPort": 19999}]
    cluster = _cluster({**DB_ONLY, "ingress": [{"ports": ports}]})
    assert allowed(cluster, WEB, DB, 8000)
    assert not allowed(cluster, WEB, DB, 8000, "UDP")
    assert not allowed(cluster, WEB, DB, 53)
    assert allowed(cluster, WEB, DB, 19999)
    assert not allowed(cluster, WEB, DB, 20000)
    named = _cluster({**DB_ONLY, "ingress": [{"ports": [{"port": "http"}]}]})
    with pytest.raises(ValueError, match="named port"):
        allowed(named, WEB, DB, 80)


def test_a_flow_needs_both_the_egress_and_the_ingress() -> None:
    web_egress = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}
    assert not allowed(_cluster(web_egress), WEB, DB, 5432)
    assert not allowed(_cluster({**DB_ONLY, "ingress": []}), WEB, DB, 5432)


@pytest.mark.parametrize(
    ("expression", "labels", "matches"),
    [
        ({"key": "a", "operator": "In", "values": ["1", "2"]}, {"a": "2"}, True),
        ({"key": "a", "operator": "In", "values": ["1"]}, {}, False),
        ({"key": "a", "operator": "NotIn", "values": ["1"]}, {}, True),
        ({"key": "a", "operator": "NotIn", "values": ["1"]}, {"a": "1"}, False),
        ({"key": "a", "operator": "Exists"}, {"a": ""}, True),
        ({"key": "a", "operator": "DoesNotExist"}, {"a": "x"}, False),
    ],
)
def test_match_expressions(
    expression: dict[str, Any], labels: dict[str, str], matches: bool
) -> None:
    assert selector_matches({"matchExpressions": [expression]}, labels) is matches
    assert (
        selector_matches({"matchLabels": {"b": "1"}, "matchExpressions": [expression]}, labels)
        is False
    )


def test_a_charts_policies_land_in_the_release_namespace() -> None:
    doc = {"kind": "NetworkPolicy", "metadata": {"name": "p"}, "spec": DB_ONLY}
    (policy,) = network_policies([doc, {"kind": "Service", "metadata": {}}], "shop")
    assert policy["metadata"] == {"name": "p", "namespace": "shop"}
    assert not allowed(Cluster([policy]), WEB, DB, 1)

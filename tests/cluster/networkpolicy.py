"""Kubernetes NetworkPolicy semantics (networking.k8s.io/v1), evaluated on parsed manifests.

No cluster can run here, so the tests ask this evaluator what the policies as written allow:
- a pod no policy selects (for a direction) is open in that direction; once any policy selects
  it, only what some selecting policy's rules allow gets through (the rules add up, never deny);
- policyTypes defaults to Ingress, plus Egress when the policy has egress rules;
- a flow between two pods needs the source's egress and the destination's ingress;
- a rule without `from`/`to` (or with an empty list) matches every peer, one without `ports`
  every port; a podSelector peer without a namespaceSelector means the policy's own namespace.
ipBlock is meant for addresses outside the cluster; whether a pod's own address matches one is
up to the implementation (the AWS VPC CNI gives pods VPC addresses and matches them), so
`allowed` takes `ipblock_matches_pods` and the tests ask both ways where it matters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PROTOCOL = "TCP"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: Mapping[str, str]
    ip: str


@dataclass(frozen=True)
class External:
    """An address outside the cluster: the load balancer, RDS, S3, the instance metadata."""

    name: str
    ip: str


Endpoint = Pod | External


@dataclass(frozen=True)
class Cluster:
    """The policies and what their selectors can see: namespaces and their labels."""

    policies: list[dict[str, Any]]
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def labels_of(self, namespace: str) -> Mapping[str, str]:
        # Kubernetes sets this label on every namespace (1.22+); policies select by it.
        return {
            "kubernetes.io/metadata.name": namespace,
            **self.namespace_labels.get(namespace, {}),
        }


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions all hold; {} matches everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not holds:
            return False
    return True


def _policy_types(spec: Mapping[str, Any]) -> set[str]:
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress", "Egress"} if "egress" in spec else {"Ingress"}


def _in_ip_block(block: Mapping[str, Any], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except", []))


def _peer_matches(
    peer: Mapping[str, Any],
    policy_namespace: str,
    other: Endpoint,
    cluster: Cluster,
    ipblock_matches_pods: bool,
) -> bool:
    if "ipBlock" in peer:
        if isinstance(other, Pod) and not ipblock_matches_pods:
            return False
        return _in_ip_block(peer["ipBlock"], other.ip)
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], cluster.labels_of(other.namespace)):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector"), other.labels)


def _port_matches(entry: Mapping[str, Any], port: int, protocol: str) -> bool:
    if entry.get("protocol", DEFAULT_PROTOCOL) != protocol:
        return False
    if "port" not in entry:
        return True
    if not isinstance(entry["port"], int):
        # Named ports depend on the destination's containers; none of the policies uses one.
        raise ValueError(f"named port {entry['port']!r}: not modelled, use the number")
    return entry["port"] <= port <= entry.get("endPort", entry["port"])


def _direction_allows(
    cluster: Cluster,
    pod: Pod,
    direction: str,
    other: Endpoint,
    port: int,
    protocol: str,
    ipblock_matches_pods: bool,
) -> bool:
    """Whether `pod` lets this flow through in `direction` (Ingress: from `other`; Egress: to)."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolated = False
    for policy in cluster.policies:
        spec, namespace = policy["spec"], policy["metadata"]["namespace"]
        if namespace != pod.namespace or direction not in _policy_types(spec):
            continue
        if not selector_matches(spec["podSelector"], pod.labels):
            continue
        isolated = True
        for rule in spec.get(rules_key) or []:
            peers = rule.get(peers_key) or []
            ports = rule.get("ports") or []
            if peers and not any(
                _peer_matches(peer, namespace, other, cluster, ipblock_matches_pods)
                for peer in peers
            ):
                continue
            if ports and not any(_port_matches(entry, port, protocol) for entry in ports):
                continue
            return True
    return not isolated


def allowed(
    cluster: Cluster,
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = DEFAULT_PROTOCOL,
    *,
    ipblock_matches_pods: bool = False,
) -> bool:
    """Whether a connection from `source` to `destination`:`port` gets through."""
    if isinstance(source, Pod) and not _direction_allows(
        cluster, source, "Egress", destination, port, protocol, ipblock_matches_pods
    ):
        return False
    return not isinstance(destination, Pod) or _direction_allows(
        cluster, destination, "Ingress", source, port, protocol, ipblock_matches_pods
    )


def network_policies(docs: Iterable[Mapping[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The NetworkPolicy objects among parsed manifests, with the namespace they land in (a
    chart's objects name none: Helm installs them in the release's namespace)."""
    policies = []
    for doc in docs:
        if doc["kind"] == "NetworkPolicy":
            metadata = {"namespace": namespace, **doc["metadata"]}
            policies.append({**doc, "metadata": metadata})
    return policies

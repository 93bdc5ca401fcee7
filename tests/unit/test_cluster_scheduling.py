"""Scheduling, IPAM and restart backoff: pure decisions of the controller."""

from __future__ import annotations

import pytest

from pyztunnel.cluster.ipam import IpamExhausted, NodeIpam
from pyztunnel.cluster.process import backoff
from pyztunnel.cluster.scheduling import Candidate, pick_node

NODES = [Candidate("node-1"), Candidate("node-2", labels={"zone": "b"}), Candidate("node-3", labels={"zone": "b"})]


def test_replicas_spread_before_total_load() -> None:
    # node-1 is busy with other pods, but holds none of this deployment's: replicas still spread first.
    assert pick_node(NODES, same_deployment={"node-2": 1, "node-3": 1}, total={"node-1": 5}) == "node-1"


def test_least_loaded_then_node_order() -> None:
    assert pick_node(NODES, same_deployment={}, total={"node-1": 2, "node-2": 1, "node-3": 1}) == "node-2"
    assert pick_node(NODES, same_deployment={}, total={}) == "node-1"


def test_cordoned_nodes_get_nothing() -> None:
    nodes = [Candidate("node-1", schedulable=False), Candidate("node-2")]
    assert pick_node(nodes, same_deployment={}, total={"node-2": 10}) == "node-2"
    assert pick_node([Candidate("node-1", schedulable=False)], same_deployment={}, total={}) is None


def test_node_selector_and_node_name() -> None:
    assert pick_node(NODES, same_deployment={}, total={"node-2": 3}, node_selector={"zone": "b"}) == "node-3"
    assert pick_node(NODES, same_deployment={}, total={}, node_name="node-3") == "node-3"
    assert pick_node(NODES, same_deployment={}, total={}, node_selector={"zone": "z"}) is None


def test_round_robin_over_a_sequence_of_pods() -> None:
    same: dict[str, int] = {}
    placed = []
    for _ in range(6):
        node = pick_node(NODES, same_deployment=same, total=same)
        assert node is not None
        same[node] = same.get(node, 0) + 1
        placed.append(node)
    assert placed == ["node-1", "node-2", "node-3"] * 2


def test_ipam_hands_out_from_2_and_does_not_reuse_at_once() -> None:
    ipam = NodeIpam(3)
    assert [ipam.allocate() for _ in range(3)] == ["10.244.3.2", "10.244.3.3", "10.244.3.4"]
    ipam.release("10.244.3.2")
    assert ipam.allocate() == "10.244.3.5"
    assert ipam.in_use == 3


def test_ipam_wraps_around_and_exhausts() -> None:
    ipam = NodeIpam(1)
    ips = [ipam.allocate() for _ in range(253)]
    assert ips[0] == "10.244.1.2" and ips[-1] == "10.244.1.254"
    with pytest.raises(IpamExhausted):
        ipam.allocate()
    ipam.release("10.244.1.7")
    assert ipam.allocate() == "10.244.1.7"


def test_ipam_rejects_foreign_addresses() -> None:
    with pytest.raises(ValueError, match="not in node 1"):
        NodeIpam(1).release("10.244.2.5")


def test_restart_backoff_doubles_and_caps() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    assert backoff(30) == 10.0


def test_clusters_found_by_state_dirs_and_namespaces() -> None:
    from pyztunnel.cluster.manage import clusters_from

    namespaces = [
        "pzt-demo-fabric",
        "pzt-c2-node-node-1",
        "pzt-c3-pod-web-abcde",
        "pzt-tagent-x",
        "pzt-tx-pod",
        "other",
    ]
    assert clusters_from(["demo", "Not_A_Cluster", "c4"], namespaces) == ["c2", "c3", "c4", "demo"]


def test_a_pod_pinned_with_node_name_ignores_cordon_as_in_kubernetes() -> None:
    nodes = [Candidate("node-1", schedulable=False), Candidate("node-2")]
    assert pick_node(nodes, same_deployment={}, total={}, node_name="node-1") == "node-1"
    assert pick_node(nodes, same_deployment={}, total={}) == "node-2"

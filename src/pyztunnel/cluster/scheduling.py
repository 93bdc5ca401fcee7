"""Where a new pod goes (pure): the least-loaded schedulable node that matches, ties broken by node order.

Load is counted first among the deployment's own pods (so replicas spread across nodes), then over all pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pyztunnel.cluster.spec import Labels, matches


@dataclass(frozen=True)
class Candidate:
    name: str
    schedulable: bool = True
    labels: Labels = field(default_factory=dict)


def pick_node(
    nodes: Sequence[Candidate],
    *,
    same_deployment: Mapping[str, int],
    total: Mapping[str, int],
    node_selector: Labels | None = None,
    node_name: str | None = None,
) -> str | None:
    """The chosen node's name, or None when no node fits (all cordoned, or none matches)."""
    best: tuple[int, int, int] | None = None
    chosen: str | None = None
    for order, node in enumerate(nodes):
        # A pod pinned with nodeName bypasses the scheduler, as in Kubernetes: cordon does not apply to it.
        if not node.schedulable and node_name is None:
            continue
        if node_name is not None and node.name != node_name:
            continue
        if node_selector and not matches(node_selector, node.labels):
            continue
        key = (same_deployment.get(node.name, 0), total.get(node.name, 0), order)
        if best is None or key < best:
            best, chosen = key, node.name
    return chosen

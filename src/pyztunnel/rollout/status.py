"""Following a DaemonSet's own RollingUpdate, pure: `kubectl rollout status` (kubectl
pkg/polymorphichelpers/rollout_status.go) and the per-node view with its deadline.

kubectl's rule, exactly: an error unless the strategy is RollingUpdate; waiting while generation > observedGeneration
("Waiting for daemon set spec update to be observed..."), then while updatedNumberScheduled < desired ("Waiting for
daemon set "x" rollout to finish: 1 out of 3 new pods have been updated..."), then while numberAvailable < desired
("... 2 of 3 updated pods are available..."); then done ("daemon set "x" successfully rolled out").
"""

from __future__ import annotations

import dataclasses

from pyztunnel.rollout.backend import ProxyPod, RolloutView


class NotRollingUpdate(ValueError):
    pass


def rollout_status(view: RolloutView, name: str) -> tuple[str, bool]:
    """kubectl's message and whether the rollout is complete."""
    if view.strategy != "RollingUpdate":
        raise NotRollingUpdate(f"rollout status is only available for RollingUpdate strategy type (is {view.strategy})")
    if view.generation > view.observed_generation:
        return "Waiting for daemon set spec update to be observed...", False
    if view.updated < view.desired:
        return (
            f'Waiting for daemon set "{name}" rollout to finish: {view.updated} out of {view.desired} new pods have '
            "been updated...",
            False,
        )
    if view.available < view.desired:
        return (
            f'Waiting for daemon set "{name}" rollout to finish: {view.available} of {view.desired} updated pods are '
            "available...",
            False,
        )
    return f'daemon set "{name}" successfully rolled out', True


@dataclasses.dataclass(frozen=True)
class NodeState:
    node: str
    phase: str  # pending | surge | wait-ready | done
    proxy: ProxyPod | None  # the node's new-revision proxy, if any
    waiting_since: float | None  # when its new-revision proxy was first seen not Ready


class NodeTracker:
    """Per-node progress of a controller-driven rollout and the per-node deadline: a node whose new-revision proxy
    is not Ready `ready_timeout` seconds after it was first seen is overdue."""

    def __init__(self, nodes: list[str], ready_timeout: float) -> None:
        self.nodes = nodes
        self.ready_timeout = ready_timeout
        self._since: dict[str, float] = {}

    def observe(self, proxies: tuple[ProxyPod, ...] | list[ProxyPod], now: float) -> list[NodeState]:
        states = []
        for node in self.nodes:
            mine = [p for p in proxies if p.node == node]
            new = [p for p in mine if p.updated and not p.terminating]
            old = [p for p in mine if not p.updated]
            proxy = next((p for p in new if p.ready), new[0] if new else None)
            if proxy is None:
                self._since.pop(node, None)
                states.append(NodeState(node, "pending", None, None))
            elif not proxy.ready:
                since = self._since.setdefault(node, now)
                states.append(NodeState(node, "wait-ready", proxy, since))
            else:
                self._since.pop(node, None)
                states.append(NodeState(node, "delete-old" if old else "done", proxy, None))
        return states

    def overdue(self, states: list[NodeState], now: float) -> NodeState | None:
        for state in states:
            if state.waiting_since is not None and now - state.waiting_since > self.ready_timeout:
                return state
        return None


class ProgressDeadline:
    """The bound on a controller-driven rollout as a whole (Deployment's progressDeadlineSeconds, for a DaemonSet):
    a node whose new pod exists has its own deadline (NodeTracker), but one that never gets a pod of the new revision
    would be waited for forever. So the rollout is stalled when nothing it shows (status counts, each node's phase,
    new pod and readiness) changed for `within` seconds, which covers one node's replacement: the old pod's grace
    period plus the new one's ready timeout."""

    def __init__(self, within: float, now: float) -> None:
        self.within = within
        self._seen: object = None
        self._since = now

    def observe(self, view: RolloutView | None, states: list[NodeState], now: float) -> bool:
        """Record this observation (None: nothing seen yet); True when nothing changed for `within` seconds."""
        shown = (
            None
            if view is None
            else (
                view.generation,
                view.observed_generation,
                view.desired,
                view.updated,
                view.available,
                tuple(
                    (s.node, s.phase, s.proxy.name if s.proxy else "", s.proxy.ready if s.proxy else None)
                    for s in states
                ),
            )
        )
        if shown != self._seen:
            self._seen, self._since = shown, now
        return now - self._since > self.within

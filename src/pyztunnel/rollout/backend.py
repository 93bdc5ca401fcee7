"""What a rollout needs from a cluster. The local cluster implements it (local.py), Kubernetes later; the strategies
are written once against it (strategies.py) and tested with a fake (testing.py)."""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    schedulable: bool = True


@dataclasses.dataclass(frozen=True)
class Pod:
    """An application pod (not a proxy)."""

    name: str
    node: str
    grace_seconds: float = 30.0
    deployment: str | None = None


@dataclasses.dataclass(frozen=True)
class ProxyPod:
    name: str
    node: str
    version: str
    ready: bool = False


class BackendError(Exception):
    """The cluster refused or failed an operation; the message says which and why."""


class ClusterBackend(Protocol):
    async def nodes(self) -> list[Node]: ...

    async def cordon(self, node: str) -> None: ...

    async def uncordon(self, node: str) -> None: ...

    async def pods_on(self, node: str) -> list[Pod]:
        """Application pods scheduled on the node (proxies excluded)."""
        ...

    async def evict(self, pod: Pod) -> None:
        """SIGTERM the pod, SIGKILL after its own grace period; its deployment reschedules it on a schedulable node.
        Returns when the old pod is gone and its replacement is ready, or at once when no node can take the
        replacement now (a pod pinned to the cordoned node: it comes back when the node is uncordoned)."""
        ...

    async def proxies(self, node: str) -> list[ProxyPod]:
        """The proxy pods on the node (two during a surge), with their version and readiness."""
        ...

    async def create_proxy(self, node: str, version: str) -> ProxyPod: ...

    async def delete_proxy(self, name: str) -> None:
        """SIGTERM; the backend SIGKILLs after the DaemonSet's grace period. Returns when the pod has exited."""
        ...

    async def wait_proxy_ready(self, name: str, within: float) -> bool:
        """True once the proxy answers ready; False after `within` seconds (or if it died)."""
        ...

    async def update_daemonset(self, *, version: str, strategy: str, grace_seconds: int | None) -> None:
        """Record the DaemonSet's desired template (version, RollingUpdate|OnDelete, terminationGracePeriodSeconds).
        The rollout itself creates and deletes the proxies; the backend must not replace a deleted one on its own."""
        ...

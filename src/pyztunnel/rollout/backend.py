"""What a rollout needs from a cluster, written around what both the local cluster and Kubernetes can do.

The strategies (strategies.py, drain.py, canary.py) are written once against `ClusterBackend`; the local cluster
implements it over its controller API (local.py), Kubernetes over the API server (pyztunnel.k8s.backend), and tests
use an in-memory fake (testing.py).

The one difference the strategies see is `rolls_itself`: a Kubernetes DaemonSet controller performs RollingUpdate
itself once the template changes (the client follows `kubectl rollout status`), while the local cluster's controller
only replaces a proxy that is gone, so the client surges node by node (`replace_proxy(surge=True)`: new proxy Ready,
then the old one SIGTERMed). Everything else (template with history, cordon, eviction, per-node replacement under
OnDelete, metrics, resume state) is common.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    schedulable: bool = True


@dataclasses.dataclass(frozen=True)
class Pod:
    """A pod on a node that is not one of the proxies being rolled, with the facts `kubectl drain` filters on."""

    name: str
    node: str
    grace_seconds: float = 30.0
    owner: str | None = None  # "Kind/name" of its controller (ownerReferences[controller=true]); None: unmanaged
    namespace: str = "default"
    uid: str = ""
    mirror: bool = False  # a static pod's mirror (annotation kubernetes.io/config.mirror)
    emptydir: bool = False  # has an emptyDir volume (local storage)
    terminating: bool = False  # already being deleted
    owner_missing: bool = False  # its controller no longer exists

    @property
    def owner_kind(self) -> str | None:
        return self.owner.split("/", 1)[0] if self.owner else None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class ProxyPod:
    name: str
    node: str
    version: str
    ready: bool = False
    revision: str = ""  # Kubernetes: controller-revision-hash; the local cluster: the version
    updated: bool = False  # carries the DaemonSet's current revision
    restarts: int = 0
    last_exit: str = ""  # e.g. "exit code 1 (Error)": the last termination of its container
    created: float = 0.0  # epoch seconds
    terminating: bool = False


@dataclasses.dataclass(frozen=True)
class Template:
    """The DaemonSet's whole desired pod template (and strategy), as the backend stores it.

    `body` is the backend's own representation (Kubernetes: the DaemonSet's spec.template and updateStrategy; the
    local cluster: the controller's proxy spec); restoring a Template restores all of it, not only the version."""

    version: str
    strategy: str  # RollingUpdate | OnDelete
    grace_seconds: int
    body: dict[str, Any]
    revision: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Template:
        return cls(
            str(doc["version"]),
            str(doc["strategy"]),
            int(doc["grace_seconds"]),
            dict(doc["body"]),
            str(doc.get("revision", "")),
        )


@dataclasses.dataclass(frozen=True)
class TemplateChange:
    """What a rollout changes in the template; None: leave as is."""

    version: str | None = None
    image: str | None = None  # Kubernetes: a whole image reference instead of a new tag
    strategy: str | None = None  # RollingUpdate | OnDelete
    grace_seconds: int | None = None
    max_surge: int | None = None
    max_unavailable: int | None = None


@dataclasses.dataclass(frozen=True)
class RolloutView:
    """One observation of a self-rolling DaemonSet: its status (as `kubectl rollout status` reads it) and proxies."""

    name: str
    generation: int
    observed_generation: int
    desired: int
    updated: int
    available: int
    strategy: str
    proxies: tuple[ProxyPod, ...]


class BackendError(Exception):
    """The cluster refused or failed an operation; the message says which and why."""


class EvictionBlocked(BackendError):
    """429: a PodDisruptionBudget does not allow the eviction now (retry later, as kubectl drain does)."""


class ProxyNotReady(BackendError):
    """The node's new proxy did not become Ready in time; `proxy` is it (None: none was created) and the message
    gives the cause (exit code, restarts, the proxy's own last error line)."""

    def __init__(self, message: str, proxy: ProxyPod | None) -> None:
        super().__init__(message)
        self.proxy = proxy


class StateStore(Protocol):
    """Where a rollout's resumable state lives (a file beside the local cluster, an annotation on the DaemonSet)."""

    @property
    def where(self) -> str: ...

    async def load(self) -> str | None: ...

    async def save(self, text: str | None) -> None:
        """Replace the state (None: remove it)."""
        ...


class ClusterBackend(Protocol):
    rolls_itself: bool  # True: the DaemonSet controller performs RollingUpdate itself (see the module doc)
    state: StateStore

    async def nodes(self) -> list[Node]: ...

    async def cordon(self, node: str) -> None: ...

    async def uncordon(self, node: str) -> None: ...

    async def pods_on(self, node: str) -> list[Pod]:
        """Every pod on the node except the proxies this rollout replaces."""
        ...

    async def evict(self, pod: Pod, grace_seconds: int | None = None) -> None:
        """Ask for the pod's eviction (its own grace period unless given); EvictionBlocked on 429. Returns once the
        eviction is accepted; `wait_gone` waits for the pod to be gone."""
        ...

    async def wait_gone(self, pod: Pod, within: float) -> None:
        """Until the pod object is gone (or replaced by one with a new UID); BackendError after `within` s."""
        ...

    async def proxies(self, node: str | None = None) -> list[ProxyPod]:
        """The proxy pods (of one node, or all), with their revision, readiness, restarts, last termination."""
        ...

    async def replace_proxy(self, node: str, *, surge: bool, within: float) -> ProxyPod:
        """Make the node run exactly one proxy of the current template, Ready. With `surge` (where the backend can)
        the new proxy is Ready before the old one gets SIGTERM; without, the old one is deleted first and its
        replacement comes once it is gone (OnDelete). Idempotent. ProxyNotReady if the new one is not Ready within
        `within` s (it is left in place: the caller decides)."""
        ...

    async def describe(self, proxy: ProxyPod) -> str:
        """Why a proxy is not Ready, in one line: exit code, restarts, the proxy's last error line from its log."""
        ...

    async def scrape(self, proxy: ProxyPod) -> str:
        """The proxy's own metrics (:15020/metrics); BackendError if unreachable."""
        ...

    async def template(self) -> Template: ...

    async def set_template(self, change: TemplateChange) -> Template: ...

    async def restore_template(self, template: Template) -> Template:
        """Put the whole template back (strategy included)."""
        ...

    async def history(self) -> list[Template]:
        """Earlier templates the cluster remembers, newest first (Kubernetes: ControllerRevisions); may be empty."""
        ...

    def watch_rollout(self) -> AsyncIterator[RolloutView]:
        """For `rolls_itself` backends: the DaemonSet's status and proxies, once now and again on every change."""
        ...

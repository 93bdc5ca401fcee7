"""What a rollout is asked to do (`Plan`, with its canary) and what it reports (`Progress`, its two errors), and
`RolloutRun`: what the canary phase (bake.py) and the follower of a self-rolling DaemonSet (follow.py) need of the
running rollout. Apart from strategies.py, which drives them, so those two depend on this and not back on it."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

from pyztunnel.rollout.backend import ClusterBackend, Template, TemplateChange
from pyztunnel.rollout.canary import Thresholds
from pyztunnel.rollout.drain import DrainOptions
from pyztunnel.rollout.store import RolloutStore

DEFAULT_INTERVAL = 5.0  # the canary's sampling interval


@dataclasses.dataclass(frozen=True)
class CanaryPlan:
    count: int
    bake_seconds: float
    auto_rollback: bool = False
    interval: float = DEFAULT_INTERVAL
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)

    def check(self) -> None:
        if self.count < 1:
            raise ValueError("--canary must be at least 1 node")
        if self.bake_seconds < 0 or self.interval <= 0:
            raise ValueError("--bake cannot be negative and --canary-interval must be positive")


Strategy = Literal["rolling", "drain"]
DEFAULT_READY_TIMEOUT = 120.0


class RolloutFailed(Exception):
    """A step failed; the message says which node, what happened and what was done to keep it serving."""


class RolloutRefused(Exception):
    """The request conflicts with the saved unfinished rollout (or names an unknown node): nothing was changed."""


@dataclasses.dataclass(frozen=True)
class Progress:
    node: str
    phase: str
    status: str  # pending | running | done | failed
    elapsed: float
    detail: str = ""
    revision: str = ""  # the node's new proxy: revision (hash), Ready, age
    ready: bool | None = None
    created: float = 0.0


@dataclasses.dataclass(frozen=True)
class Plan:
    version: str
    strategy: Strategy = "rolling"
    nodes: tuple[str, ...] | None = None  # None: every node
    max_surge: int = 1
    max_unavailable: int = 0
    grace_seconds: int | None = None
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    image: str | None = None
    drain: DrainOptions = dataclasses.field(default_factory=DrainOptions)
    canary: CanaryPlan | None = None
    target: Template | None = None  # a rollback: restore this whole template

    def check(self) -> None:
        if self.max_surge < 0 or self.max_unavailable < 0:
            raise ValueError("--max-surge and --max-unavailable cannot be negative")
        if self.strategy == "rolling" and self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("--max-surge and --max-unavailable cannot both be 0 (nothing could ever be replaced)")
        if self.grace_seconds is not None and self.grace_seconds < 0:
            raise ValueError("--grace cannot be negative")
        if self.ready_timeout <= 0:
            raise ValueError("--ready-timeout must be positive")
        if self.canary is not None:
            self.canary.check()

    def params(self) -> dict[str, Any]:
        """The request, as saved for the resume check (store.REQUEST_FLAGS)."""
        canary = self.canary
        return {
            "nodes": sorted(self.nodes) if self.nodes else [],
            "max_surge": self.max_surge,
            "max_unavailable": self.max_unavailable,
            "grace_seconds": self.grace_seconds,
            "canary": canary.count if canary else None,
            "bake_seconds": canary.bake_seconds if canary else None,
            "auto_rollback": canary.auto_rollback if canary else None,
            "image": self.image,
        }

    def change(self, strategy: str) -> TemplateChange:
        return TemplateChange(
            version=None if self.image else self.version,
            image=self.image,
            strategy=strategy,
            grace_seconds=self.grace_seconds,
            max_surge=self.max_surge if strategy == "RollingUpdate" else None,
            max_unavailable=self.max_unavailable if strategy == "RollingUpdate" else None,
        )


class RolloutRun(Protocol):
    """The running rollout, as its phases see it (strategies.Rollout)."""

    backend: ClusterBackend
    plan: Plan
    store: RolloutStore
    in_effect: str  # the strategy it last set

    @property
    def previous(self) -> Template: ...

    def emit(self, progress: Progress) -> None: ...

    async def set_strategy(self, strategy: str) -> Template: ...

    async def run_node(self, node: str, *, drain: bool, surge: bool) -> None: ...

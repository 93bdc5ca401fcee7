"""Rollout strategies, written once against `ClusterBackend`.

- RollingUpdate (ztunnel's Helm default maxSurge 1, maxUnavailable 0): per node, start the new proxy beside the old,
  wait until it is ready, delete the old and wait until it has exited. `maxSurge` nodes may surge at once;
  `maxUnavailable` more nodes may be done the other way round (delete first, then create), which leaves them without a
  proxy for a while. With maxUnavailable 0 no node is ever without a ready proxy.
- NodeDrain (the seeds' procedure, DaemonSet OnDelete): one node at a time: cordon, evict its pods (each with its own
  grace period; their deployments put them elsewhere), replace the proxy, uncordon, wait until the proxy is ready.

Every step is idempotent and reconciled against what the backend shows, so a rollout interrupted anywhere continues
correctly when re-run with the same store. A failed step stops the rollout with a message and leaves the node served:
a new proxy that never becomes ready is deleted and the old one kept (or, if it was already gone, put back).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.rollout.backend import BackendError, ClusterBackend, Pod, ProxyPod
from pyztunnel.rollout.store import NodeRecord, RolloutRecord, RolloutStore

Strategy = Literal["rolling", "drain"]
DEFAULT_READY_TIMEOUT = 120.0


class RolloutFailed(Exception):
    """A step failed; the message says which node, what happened and what was done to keep it serving."""


@dataclasses.dataclass(frozen=True)
class Progress:
    node: str
    phase: str
    status: str  # running | done | failed
    elapsed: float
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
    version: str
    strategy: Strategy = "rolling"
    nodes: tuple[str, ...] | None = None  # None: every node
    max_surge: int = 1
    max_unavailable: int = 0
    grace_seconds: int | None = None
    ready_timeout: float = DEFAULT_READY_TIMEOUT

    def check(self) -> None:
        if self.max_surge < 0 or self.max_unavailable < 0:
            raise ValueError("--max-surge and --max-unavailable cannot be negative")
        if self.strategy == "rolling" and self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("--max-surge and --max-unavailable cannot both be 0 (nothing could ever be replaced)")


class Rollout:
    def __init__(
        self,
        backend: ClusterBackend,
        plan: Plan,
        store: RolloutStore | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        plan.check()
        self.backend = backend
        self.plan = plan
        self.store = store or RolloutStore(None)
        self._emit = on_progress or (lambda _p: None)
        self.record: RolloutRecord | None = None
        self.resumed = False

    # Entry point ------------------------------------------------------------------------------------------------

    async def run(self) -> RolloutRecord:
        record = await self._open()
        self.record = record
        await self._template(self.plan.version)
        try:
            if self.plan.strategy == "drain":
                for node in self._todo(record):
                    await self._node(node, self._drain_node)
            else:
                await self._rolling(record)
        except RolloutFailed as exc:
            record.status, record.error = "failed", str(exc)
            self.store.save(record)
            raise
        record.status = "done"
        self.store.save(record)
        return record

    async def _open(self) -> RolloutRecord:
        previous = self.store.load()
        if previous is not None and previous.resumes(self.plan.version, self.plan.strategy):
            self.resumed = True
            previous.status, previous.error = "running", None
            return previous
        known = [n.name for n in await self.backend.nodes()]
        nodes = list(self.plan.nodes) if self.plan.nodes else known
        unknown = sorted(set(nodes) - set(known))
        if unknown:
            raise RolloutFailed(f"no node named {unknown[0]!r} (nodes: {', '.join(known)})")
        params: dict[str, Any] = {"max_surge": self.plan.max_surge, "max_unavailable": self.plan.max_unavailable}
        params["grace_seconds"] = self.plan.grace_seconds
        record = RolloutRecord(self.plan.version, self.plan.strategy, nodes, params)
        for node in nodes:
            record.node(node)
        self.store.save(record)
        return record

    def _todo(self, record: RolloutRecord) -> list[str]:
        return [n for n in record.nodes if record.node(n).status != "done"]

    # Bookkeeping ------------------------------------------------------------------------------------------------

    async def _node(self, node: str, body: Callable[[str, NodeRecord, float], Awaitable[None]]) -> None:
        assert self.record is not None
        rec = self.record.node(node)
        started = time.monotonic() - rec.elapsed
        rec.status, rec.error = "running", None
        try:
            await body(node, rec, started)
        except BackendError as exc:
            self._phase(node, rec, started, rec.phase, "failed", str(exc))
            raise RolloutFailed(f"node {node}: {rec.phase} failed: {exc}") from None
        except RolloutFailed as exc:
            self._phase(node, rec, started, rec.phase, "failed", str(exc))
            raise
        self._phase(node, rec, started, "done", "done")

    def _phase(
        self, node: str, rec: NodeRecord, started: float, phase: str, status: str = "running", detail: str = ""
    ) -> None:
        assert self.record is not None
        rec.phase, rec.status, rec.elapsed = phase, status, round(time.monotonic() - started, 3)
        if status == "failed":
            rec.error = detail
        self.store.save(self.record)
        self._emit(Progress(node, phase, status, rec.elapsed, detail))

    # Proxy replacement, shared by both strategies ---------------------------------------------------------------

    async def _split(self, node: str, rec: NodeRecord) -> tuple[list[ProxyPod], list[ProxyPod]]:
        proxies = await self.backend.proxies(node)
        new = [p for p in proxies if p.version == self.plan.version]
        old = [p for p in proxies if p.version != self.plan.version]
        if old and rec.previous_version is None:
            rec.previous_version = old[0].version
        return new, old

    async def _ensure_new(self, node: str, rec: NodeRecord, new: list[ProxyPod]) -> ProxyPod:
        if new:
            ready = [p for p in new if p.ready]
            keep = (ready or new)[0]
            for extra in new:  # an interrupted earlier run may have left a second one behind
                if extra is not keep:
                    await self.backend.delete_proxy(extra.name)
            rec.new_proxy = keep.name
            return keep
        created = await self.backend.create_proxy(node, self.plan.version)
        rec.new_proxy = created.name
        return created

    async def _await_ready(self, node: str, rec: NodeRecord, started: float, proxy: ProxyPod, restore: bool) -> None:
        """Wait for the new proxy; if it never becomes ready, delete it and (if the old one is gone) put it back."""
        self._phase(node, rec, started, "wait-ready")
        if await self.backend.wait_proxy_ready(proxy.name, self.plan.ready_timeout):
            return
        self._phase(node, rec, started, "rollback")
        previous = rec.previous_version
        if previous is not None:
            # The template goes back first, so that nothing (a DaemonSet controller replacing a deleted or crashed
            # proxy) brings the broken version back.
            await self._template(previous)
        await self.backend.delete_proxy(proxy.name)
        what = "the old proxy keeps serving"
        if restore:
            if previous is None:
                what = "no previous version known to restore"
            else:
                same = [p for p in await self.backend.proxies(node) if p.version == previous]
                back = same[0] if same else await self.backend.create_proxy(node, previous)
                ok = await self.backend.wait_proxy_ready(back.name, self.plan.ready_timeout)
                what = f"restored {previous}" + ("" if ok else ", which is not ready either")
        raise RolloutFailed(
            f"node {node}: proxy {proxy.name} ({self.plan.version}) not ready within {self.plan.ready_timeout:g}s; "
            f"deleted it, {what}; rollout stopped"
        )

    async def _template(self, version: str) -> None:
        await self.backend.update_daemonset(
            version=version,
            strategy="RollingUpdate" if self.plan.strategy == "rolling" else "OnDelete",
            grace_seconds=self.plan.grace_seconds,
        )

    async def _surge_node(self, node: str, rec: NodeRecord, started: float) -> None:
        self._phase(node, rec, started, "surge")
        new, old = await self._split(node, rec)
        proxy = await self._ensure_new(node, rec, new)
        self.store.save(self._rec())
        await self._await_ready(node, rec, started, proxy, restore=False)
        self._phase(node, rec, started, "delete-old")
        for p in old:
            await self.backend.delete_proxy(p.name)

    async def _replace_node(self, node: str, rec: NodeRecord, started: float) -> None:
        """Delete first, then create, then wait until ready (a maxUnavailable slot of RollingUpdate)."""
        proxy = await self._delete_then_create(node, rec, started)
        await self._await_ready(node, rec, started, proxy, restore=True)

    async def _delete_then_create(self, node: str, rec: NodeRecord, started: float) -> ProxyPod:
        self._phase(node, rec, started, "delete-old")
        new, old = await self._split(node, rec)
        self.store.save(self._rec())
        for p in old:
            await self.backend.delete_proxy(p.name)
        self._phase(node, rec, started, "create")
        if old:  # a DaemonSet controller may have replaced the deleted proxy from the template already
            new, _ = await self._split(node, rec)
        proxy = await self._ensure_new(node, rec, new)
        self.store.save(self._rec())
        return proxy

    def _rec(self) -> RolloutRecord:
        assert self.record is not None
        return self.record

    # RollingUpdate ----------------------------------------------------------------------------------------------

    async def _rolling(self, record: RolloutRecord) -> None:
        todo = self._todo(record)
        surge_free, unavailable_free = self.plan.max_surge, self.plan.max_unavailable
        running: dict[asyncio.Task[RolloutFailed | None], str] = {}
        failure: RolloutFailed | None = None
        try:
            while todo or running:
                while todo and failure is None and (surge_free or unavailable_free):
                    node = todo.pop(0)
                    if surge_free:
                        surge_free -= 1
                        running[spawn(self._outcome(node, self._surge_node), f"rollout-{node}")] = "surge"
                    else:
                        unavailable_free -= 1
                        running[spawn(self._outcome(node, self._replace_node), f"rollout-{node}")] = "unavailable"
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if running.pop(task) == "surge":
                        surge_free += 1
                    else:
                        unavailable_free += 1
                    failed = task.result()  # anything but a RolloutFailed (an interruption) propagates from here
                    if failed is not None:
                        failure = failure or failed
        finally:
            await cancel_and_wait(*running)
        if failure is not None:
            raise failure

    async def _outcome(
        self, node: str, body: Callable[[str, NodeRecord, float], Awaitable[None]]
    ) -> RolloutFailed | None:
        """A node's rollout as a task: its failure is a result, not an error for the task logger."""
        try:
            await self._node(node, body)
        except RolloutFailed as exc:
            return exc
        return None

    # NodeDrain --------------------------------------------------------------------------------------------------

    async def _drain_node(self, node: str, rec: NodeRecord, started: float) -> None:
        self._phase(node, rec, started, "cordon")
        await self.backend.cordon(node)
        self._phase(node, rec, started, "evict")
        pods = await self.backend.pods_on(node)
        results = await asyncio.gather(*(self._evict(p) for p in pods), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancellation or the process going away is not a failed eviction
        failed = [(p, r) for p, r in zip(pods, results, strict=True) if isinstance(r, Exception)]
        if failed:
            await self.backend.uncordon(node)
            pod, why = failed[0]
            raise RolloutFailed(f"node {node}: evicting {pod.name} failed: {why}; node uncordoned, rollout stopped")
        # The seeds' order: replace the proxy (OnDelete: delete, then the new one), uncordon, wait until it is ready.
        proxy = await self._delete_then_create(node, rec, started)
        self._phase(node, rec, started, "uncordon")
        await self.backend.uncordon(node)
        await self._await_ready(node, rec, started, proxy, restore=True)

    async def _evict(self, pod: Pod) -> None:
        await self.backend.evict(pod)

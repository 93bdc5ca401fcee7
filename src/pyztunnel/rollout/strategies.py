"""Rollout strategies, written once against `ClusterBackend`.

- RollingUpdate (ztunnel's Helm default maxSurge 1, maxUnavailable 0). Where the DaemonSet controller rolls by itself
  (Kubernetes) the template is patched and the rollout followed as `kubectl rollout status` does (status.py), node by
  node with a deadline. Elsewhere (the local cluster) the client surges: per node the new proxy beside the old, Ready,
  then the old deleted (surge.py); `maxSurge` nodes at once, `maxUnavailable` more the other way round.
- NodeDrain (the seeds' procedure): strategy OnDelete, the new template, then one node at a time: cordon, evict,
  replace the proxy, uncordon (drain.py). The previous strategy is put back at the end.
- Canary (`Plan.canary`): the first N nodes first, then a bake watching their proxies' metrics (canary.py), then the
  rest — or a halt, with the whole previous template restored (and the canary nodes rolled back with auto_rollback).

A failed step stops the rollout with a message giving the cause and leaves the node served: a new proxy that is not
Ready in time makes the whole previous template come back (so nothing brings the broken one back) and the node runs
the previous proxy again. Every step is idempotent and reconciled against the cluster, so an interrupted rollout
continues correctly when re-run with the same request; a different request for the same target is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.rollout import bake
from pyztunnel.rollout.backend import BackendError, ClusterBackend, ProxyNotReady, Template, TemplateChange
from pyztunnel.rollout.drain import DrainFailed, drain_node
from pyztunnel.rollout.follow import follow_rollout
from pyztunnel.rollout.plan import Plan, Progress, RolloutFailed, RolloutRefused
from pyztunnel.rollout.store import NodeRecord, RolloutRecord, RolloutStore


class Rollout:
    def __init__(
        self,
        backend: ClusterBackend,
        plan: Plan,
        store: RolloutStore | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        plan.check()
        self.backend = backend
        self.plan = plan
        self.store = store or RolloutStore(None)
        self._emit = on_progress or (lambda _p: None)
        self.warn = on_warning or (lambda _w: None)
        self.record: RolloutRecord | None = None
        self.resumed = False
        self.in_effect = "RollingUpdate"  # the strategy this rollout last set (a restored template keeps it)

    # Entry point ------------------------------------------------------------------------------------------------

    async def run(self) -> RolloutRecord:
        record = self.record = await self._open()
        try:
            await self._run(record)
        except (RolloutFailed, bake.CanaryHalted) as exc:
            record.status = "halted" if isinstance(exc, bake.CanaryHalted) else "failed"
            record.error = str(exc)
            await self.store.save(record)
            raise RolloutFailed(str(exc)) from None
        record.status, record.error = "done", None
        await self.store.save(record)
        return record

    async def _run(self, record: RolloutRecord) -> None:
        canary = self.plan.canary
        if canary is not None and record.canary.get("status") != "baked":
            await bake.run_canary(self, record, canary)
        if self.plan.strategy == "drain":
            await self.set_strategy("OnDelete")
            for node in self._todo(record):
                await self._node(node, self._drain_node)
            await self._restore_strategy()
        elif self.backend.rolls_itself:
            if self.plan.nodes:
                raise RolloutFailed(
                    "--nodes needs --strategy drain here: the DaemonSet's RollingUpdate covers every node"
                )
            await self.set_strategy("RollingUpdate")
            await follow_rollout(self, record)
        else:
            await self.set_strategy("RollingUpdate")
            await self._rolling(record)

    async def _open(self) -> RolloutRecord:
        try:
            saved = await self.store.load()
        except ValueError as exc:
            raise RolloutRefused(str(exc)) from None
        params = self.plan.params()
        if saved is not None and saved.resumes(self.plan.version, self.plan.strategy):
            differs = saved.mismatch(params)
            if differs is not None:
                raise RolloutRefused(
                    f"an unfinished rollout to {saved.version} ({saved.strategy}) is saved in {self.store.where}; "
                    f"this request differs in {differs}: re-run it as saved to continue, or add --restart"
                )
            self.resumed = True
            saved.status, saved.error = "running", None
            return saved
        known = [n.name for n in await self.backend.nodes()]
        nodes = sorted(self.plan.nodes) if self.plan.nodes else sorted(known)
        unknown = sorted(set(nodes) - set(known))
        if unknown:
            raise RolloutRefused(f"no node named {unknown[0]!r} (nodes: {', '.join(sorted(known))})")
        current = await self.backend.template()
        record = RolloutRecord(self.plan.version, self.plan.strategy, nodes, params, previous=current.as_dict())
        record.rollback = self.plan.target is not None
        for node in nodes:
            record.node(node)
        await self.store.save(record)
        return record

    def _todo(self, record: RolloutRecord) -> list[str]:
        return [n for n in record.nodes if record.node(n).status != "done"]

    @property
    def previous(self) -> Template:
        assert self.record is not None and self.record.previous is not None
        return Template.from_dict(self.record.previous)

    async def set_strategy(self, strategy: str) -> Template:
        """The rollout's template with this strategy: the target's whole template (rollback) or the change."""
        self.in_effect = strategy
        if self.plan.target is not None:
            return await self.backend.restore_template(dataclasses.replace(self.plan.target, strategy=strategy))
        return await self.backend.set_template(self.plan.change(strategy))

    async def run_node(self, node: str, *, drain: bool, surge: bool) -> None:
        """One node the way the strategy does it (the canary's nodes go first, one by one)."""
        if drain:
            await self._node(node, self._drain_node)
        else:
            await self._node(node, self._surge_node if surge else self._unavailable_node)

    async def _restore_strategy(self) -> None:
        before = self.previous.strategy
        if before != "OnDelete":
            await self.backend.set_template(TemplateChange(strategy=before))

    # Bookkeeping ------------------------------------------------------------------------------------------------

    async def _node(self, node: str, body: Callable[[str, NodeRecord, float], Awaitable[None]]) -> None:
        assert self.record is not None
        rec = self.record.node(node)
        started = time.monotonic() - rec.elapsed
        rec.status, rec.error = "running", None
        try:
            await body(node, rec, started)
        except BackendError as exc:
            await self.phase(node, rec, started, rec.phase, "failed", str(exc))
            raise RolloutFailed(f"node {node}: {rec.phase} failed: {exc}") from None
        except (RolloutFailed, DrainFailed) as exc:
            message = str(exc) if isinstance(exc, RolloutFailed) else f"node {node}: {exc}, rollout stopped"
            await self.phase(node, rec, started, rec.phase, "failed", message)
            raise RolloutFailed(message) from None
        await self.phase(node, rec, started, "done", "done")

    async def phase(
        self, node: str, rec: NodeRecord, started: float, phase: str, status: str = "running", detail: str = ""
    ) -> None:
        assert self.record is not None
        rec.phase, rec.status, rec.elapsed = phase, status, round(time.monotonic() - started, 3)
        if status == "failed":
            rec.error = detail
        await self.store.save(self.record)
        self.emit(Progress(node, phase, status, rec.elapsed, detail))

    def emit(self, progress: Progress) -> None:
        self._emit(progress)

    # Proxy replacement, shared by every strategy ----------------------------------------------------------------

    async def replace(self, node: str, rec: NodeRecord, started: float, *, surge: bool) -> None:
        """Replace the node's proxy; if the new one is not Ready in time, restore the whole previous template, put
        the node back on it and stop with the cause."""
        await self.phase(node, rec, started, "surge" if surge else "replace")
        before = {p.name: p for p in await self.backend.proxies(node)}
        if rec.previous_version is None and before:
            rec.previous_version = next(iter(before.values())).version
        try:
            proxy = await self.backend.replace_proxy(node, surge=surge, within=self.plan.ready_timeout)
        except ProxyNotReady as exc:
            await self.phase(node, rec, started, "rollback")
            what = await self.restore_node(node, surge=surge, kept=set(before))
            raise RolloutFailed(f"node {node}: {exc}; {what}; rollout stopped") from None
        rec.new_proxy = proxy.name

    async def restore_node(self, node: str, *, surge: bool, kept: set[str]) -> str:
        """The previous template back (all of it: nothing brings the broken one back), the node back on it."""
        previous = self.previous
        await self.backend.restore_template(dataclasses.replace(previous, strategy=self.in_effect))
        try:
            back = await self.backend.replace_proxy(node, surge=surge, within=self.plan.ready_timeout)
        except ProxyNotReady as exc:
            return f"previous template restored, but its proxy is not ready either ({exc})"
        if back.name in kept:
            return "deleted it, the old proxy keeps serving (previous template restored)"
        return f"restored {previous.version} (the whole previous template)"

    # RollingUpdate driven by the client -------------------------------------------------------------------------

    async def _rolling(self, record: RolloutRecord) -> None:
        todo = self._todo(record)
        surge_free, unavailable_free = self.plan.max_surge, self.plan.max_unavailable
        running: dict[asyncio.Task[RolloutFailed | None], str] = {}
        failure: RolloutFailed | None = None
        try:
            while todo or running:
                while todo and failure is None and (surge_free or unavailable_free):
                    node = todo.pop(0)
                    kind = "surge" if surge_free else "unavailable"
                    if surge_free:
                        surge_free -= 1
                    else:
                        unavailable_free -= 1
                    body = self._surge_node if kind == "surge" else self._unavailable_node
                    running[spawn(self._outcome(node, body), f"rollout-{node}")] = kind
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

    async def _surge_node(self, node: str, rec: NodeRecord, started: float) -> None:
        await self.replace(node, rec, started, surge=True)

    async def _unavailable_node(self, node: str, rec: NodeRecord, started: float) -> None:
        await self.replace(node, rec, started, surge=False)

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
        async def phase(name: str) -> None:
            await self.phase(node, rec, started, name)

        async def replace() -> None:
            # A drained node has nothing left to hand over: the old proxy goes first (OnDelete), as in the seeds.
            try:
                await self.replace(node, rec, started, surge=False)
            except RolloutFailed:
                await self.backend.uncordon(node)
                raise

        await drain_node(self.backend, node, self.plan.drain, phase, self.warn, replace)

"""RollingUpdate where the DaemonSet controller rolls by itself (Kubernetes): follow it as `kubectl rollout status`
does, show each node's new proxy (revision, Ready, age), and stop at the first node whose new proxy is not Ready by
its deadline: the cause is read (exit code, restarts, the proxy's last error line), the whole previous template is
restored (the controller then rolls the broken pods back) and the rollout stops with that message."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.rollout.backend import RolloutView
from pyztunnel.rollout.plan import Progress, RolloutFailed, RolloutRun
from pyztunnel.rollout.status import NodeState, NodeTracker, ProgressDeadline, rollout_status
from pyztunnel.rollout.store import RolloutRecord

TICK_S = 1.0  # re-check the deadlines at least this often while no change arrives


class LatestView:
    """The newest view of a watch, read with a bound: a task owns the watch and keeps only the last view."""

    def __init__(self, source: AsyncIterator[RolloutView]) -> None:
        self._view: RolloutView | None = None
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self.task = spawn(self._pump(source), "rollout-watch")

    async def _pump(self, source: AsyncIterator[RolloutView]) -> None:
        try:
            async for view in source:
                self._view = view
                self._changed.set()
        except Exception as exc:  # handed to the reader, which raises it
            self._error = exc
            self._changed.set()

    async def next(self, within: float) -> RolloutView | None:
        try:
            async with asyncio.timeout(within):
                await self._changed.wait()
        except TimeoutError:
            return self._view
        self._changed.clear()
        if self._error is not None:
            raise self._error
        return self._view

    async def close(self) -> None:
        await cancel_and_wait(self.task)


async def follow_rollout(rollout: RolloutRun, record: RolloutRecord) -> None:
    backend, plan = rollout.backend, rollout.plan
    tracker = NodeTracker(record.nodes, plan.ready_timeout)
    started = {n: time.monotonic() - record.node(n).elapsed for n in record.nodes}
    grace = max(rollout.previous.grace_seconds, plan.grace_seconds or 0)
    progress = ProgressDeadline(plan.ready_timeout + grace, time.monotonic())
    shown: dict[str, tuple[str, str, bool | None]] = {}
    latest = LatestView(backend.watch_rollout())
    try:
        while True:
            view = await latest.next(TICK_S)
            now = time.monotonic()
            if view is None:
                if progress.observe(None, [], now):
                    raise RolloutFailed(f"no status of the DaemonSet within {progress.within:g}s; rollout stopped")
                continue
            status_line, complete = rollout_status(view, view.name)
            states = tracker.observe(view.proxies, now)
            for state in states:
                rec = record.node(state.node)
                status = "done" if state.phase == "done" else ("pending" if state.phase == "pending" else "running")
                key = (state.phase, state.proxy.name if state.proxy else "", state.proxy.ready if state.proxy else None)
                if shown.get(state.node) == key:
                    continue
                shown[state.node] = key
                rec.phase, rec.status = state.phase, status
                rec.elapsed = round(now - started[state.node], 3)
                if state.proxy is not None:
                    rec.new_proxy = state.proxy.name
                await rollout.store.save(record)
                p = state.proxy
                rollout.emit(
                    Progress(
                        state.node,
                        state.phase,
                        status,
                        rec.elapsed,
                        revision=p.revision if p else "",
                        ready=p.ready if p else None,
                        created=p.created if p else 0.0,
                    )
                )
            if complete and all(s.phase == "done" for s in states):
                return
            late = tracker.overdue(states, now)
            if late is not None and late.proxy is not None:
                cause = await backend.describe(late.proxy)
                previous = rollout.previous
                await backend.restore_template(dataclasses.replace(previous, strategy="RollingUpdate"))
                message = (
                    f"node {late.node}: proxy {late.proxy.name} ({late.proxy.version}) not ready within "
                    f"{plan.ready_timeout:g}s: {cause}; the whole previous template ({previous.version}) is restored, "
                    "the DaemonSet rolls the new pods back; rollout stopped"
                )
                rec = record.node(late.node)
                rec.status, rec.error = "failed", message
                rollout.emit(Progress(late.node, late.phase, "failed", rec.elapsed, message))
                raise RolloutFailed(message)
            if progress.observe(view, states, now):
                raise RolloutFailed(stalled_message(states, status_line, progress.within))
    finally:
        await latest.close()


def stalled_message(states: list[NodeState], status_line: str, within: float) -> str:
    """Nothing changed for a node's whole replacement time: the controller is not rolling (no new pod anywhere to
    blame, so the template is left as it is; re-running the command follows it again)."""
    waiting = ", ".join(s.node for s in states if s.phase != "done") or "none"
    return (
        f"the DaemonSet made no progress for {within:g}s ({status_line}); nodes not done: {waiting}; the template is "
        "left as it is; rollout stopped"
    )

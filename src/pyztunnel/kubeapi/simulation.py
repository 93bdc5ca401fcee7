"""The controllers of the stand-in, run after every change until nothing changes, and again when a timer they asked
for is due (a pod starting, a Terminating pod's grace running out, minReadySeconds)."""

from __future__ import annotations

import asyncio
import logging

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.kubeapi.daemonset import DaemonSetController
from pyztunnel.kubeapi.kubelet import NodeSide, SimOptions
from pyztunnel.kubeapi.sail import SailOperator
from pyztunnel.kubeapi.store import Event, Store

_log = logging.getLogger("pyztunnel.kubeapi")


class Simulation:
    def __init__(self, store: Store, options: SimOptions | None = None, *, sail: bool = False) -> None:
        self.store = store
        self.options = options or SimOptions()
        self.daemonsets = DaemonSetController(store, self.wake_at)
        self.nodes = NodeSide(store, self.options, self.wake_at)
        self.sail = SailOperator(store) if sail else None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        store.listen(self._changed)

    def _changed(self, _event: Event) -> None:
        self._wake.set()

    def wake_at(self, seconds: float) -> None:
        """Reconcile again in `seconds`; only the earliest pending wake-up is kept (controllers ask on every round)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, seconds) + 0.001
        if self._timer is not None and self._timer.when() <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(due, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake.set()

    def start(self) -> None:
        self._wake.set()
        self._task = spawn(self._run(), "kubeapi-simulation")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.reconcile()
            except Exception:  # a controller bug must not stop the others; it is logged and retried on next change
                _log.exception("stand-in reconcile failed")
            await asyncio.sleep(0)  # let the API serve between rounds

    def reconcile(self) -> None:
        if self.sail is not None:
            self.sail.reconcile()
        self.daemonsets.reconcile()
        self.nodes.reconcile()

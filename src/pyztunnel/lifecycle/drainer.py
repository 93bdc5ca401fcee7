"""The asyncio shell around `drain.DrainMachine`: owns the timer, the signal handlers and the connection registry.

Signal handlers only queue an event; everything else happens in `Drainer.run()`, which feeds the machine and carries
out its actions through the callbacks the proxy hands in. A second signal makes `run()` return `Outcome.FORCED` at once;
the caller exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal as _signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.lifecycle import drain
from pyztunnel.tcp import rst_close

_log = logging.getLogger("pyztunnel.lifecycle.drain")


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


class Resettable(Protocol):
    def reset(self) -> None:
        """RST the connection now."""

    def log_fields(self) -> Mapping[str, Any]:
        """What the drain log says about it (src/dst addresses, identities…)."""


class ConnectionSet:
    """The registry of accepted connections a drain waits for and, at the deadline, resets."""

    def __init__(self) -> None:
        self._items: dict[int, Resettable] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, conn: Resettable) -> None:
        self._items[id(conn)] = conn
        self._empty.clear()

    def discard(self, conn: Resettable) -> None:
        self._items.pop(id(conn), None)
        if not self._items:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Resettable]:
        return iter(list(self._items.values()))

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def reset_all(self) -> int:
        """RST every connection left and log each one; returns how many."""
        items = list(self._items.values())
        for conn in items:
            fields = dict(conn.log_fields())
            try:
                conn.reset()
            except OSError as exc:
                fields["error"] = str(exc)
            _log.warning("connection reset at drain deadline", extra={"fields": fields})
            self.discard(conn)
        return len(items)


class TrackedSocket:
    """A plain socket as a `Resettable` (tests and simple servers)."""

    def __init__(self, sock: socket.socket, **fields: Any) -> None:
        self.sock = sock
        self.fields = fields

    def reset(self) -> None:
        rst_close(self.sock)

    def log_fields(self) -> Mapping[str, Any]:
        return self.fields


class Drainer:
    """Runs one drain. Callbacks: `stop_accepting()`, `goaway()`; `connections` is the live registry."""

    def __init__(
        self,
        deadline: float,
        *,
        stop_accepting: Callable[[], Awaitable[None] | None],
        goaway: Callable[[], Awaitable[None] | None],
        connections: ConnectionSet,
        component: str = "proxy",
    ) -> None:
        self.machine = drain.DrainMachine(deadline)
        self._stop_accepting = stop_accepting
        self._goaway = goaway
        self._connections = connections
        self._component = component
        self._events: asyncio.Queue[drain.Event] = asyncio.Queue()
        self._helpers: list[asyncio.Task[None]] = []
        self._installed: list[int] = []
        self.started = asyncio.Event()  # set when the drain begins (for readiness, admin, tests)
        self.finished = asyncio.Event()  # set when run() returns (what /quitquitquit waits for)
        self.outcome: drain.Outcome | None = None
        self.reset_count = 0

    # Inputs: safe to call from signal handlers and HTTP handlers; they only queue an event.
    def signal(self) -> None:
        self._events.put_nowait(drain.Signal())

    def quitquitquit(self) -> None:
        self._events.put_nowait(drain.QuitQuitQuit())

    def install_signal_handlers(self, signals: tuple[int, ...] = (_signal.SIGTERM, _signal.SIGINT)) -> None:
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self.signal)
            self._installed.append(sig)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    async def run(self) -> drain.Outcome:
        """Wait for the first signal, drain, and return how it ended."""
        try:
            while True:
                event = await self._events.get()
                for action in self.machine.handle(event):
                    if isinstance(action, drain.Exit):
                        self._finish(action.outcome)
                        return action.outcome
                    await self._do(action)
        finally:
            await cancel_and_wait(*self._helpers)
            self._helpers.clear()

    async def _do(self, action: drain.Action) -> None:
        if isinstance(action, drain.StopAccepting):
            self.started.set()
            await _maybe_await(self._stop_accepting())
        elif isinstance(action, drain.SendGoaway):
            await _maybe_await(self._goaway())
        elif isinstance(action, drain.StartTimer):
            _log.info(
                f"drain started, waiting {action.seconds:g}s for any connections to complete",
                extra={"fields": {"component": self._component, "connections": len(self._connections)}},
            )
            self._helpers.append(spawn(self._timer(action.seconds), "drain-timer"))
        elif isinstance(action, drain.WatchConnections):
            self._helpers.append(spawn(self._watch(), "drain-watch"))
        elif isinstance(action, drain.ResetConnections):
            _log.warning(
                "drain duration expired with pending connections, forcefully shutting down",
                extra={"fields": {"component": self._component, "connections": len(self._connections)}},
            )
            self.reset_count = self._connections.reset_all()

    def _finish(self, outcome: drain.Outcome) -> None:
        self.outcome = outcome
        self.finished.set()
        if outcome is drain.Outcome.FORCED:
            _log.warning("second signal, exiting now", extra={"fields": {"component": self._component}})
        _log.info("shutdown complete", extra={"fields": {"component": self._component, "outcome": outcome.value}})

    async def _timer(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # the drain deadline itself, not a synchronisation
        self._events.put_nowait(drain.DeadlineReached())

    async def _watch(self) -> None:
        await self._connections.wait_empty()
        self._events.put_nowait(drain.ConnectionsDone())

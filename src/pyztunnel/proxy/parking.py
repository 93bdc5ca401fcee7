"""Parked app sockets of stopped HBONE streams: the bookkeeping of resumable streams, with no pod in sight.

When a resumable stream is stopped (proxy/resumable.py), its app socket waits here for the stream that continues
it: at a server end until the client end's resume CONNECT claims it (`ResumeRegistry.park` / `claim`, at most
`PARK_TIMEOUT`), at a client end while our own resume CONNECT is on its way (`hold`). Meanwhile it is a live
connection for the drain (reset at the deadline like any other), and if nothing continues it, it ends here: the app
socket is reset and the connection logged once, with the bytes of the whole connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

from pyztunnel import authz
from pyztunnel.lifecycle.drainer import ConnectionSet
from pyztunnel.observe.access import ConnectionRecord, opened_fields
from pyztunnel.proxy.relay import TcpLeg
from pyztunnel.proxy.telemetry import Telemetry, fail

PARK_TIMEOUT = 15.0  # a server end holds a stopped stream's app socket this long for its resume CONNECT
CLAIM_WAIT = 5.0  # a resume CONNECT may arrive before the app socket does (the handoff is still on its way)


@dataclasses.dataclass(eq=False)
class Parked:
    """An app socket whose stream stopped, waiting to be joined to a new stream."""

    pod_key: str  # the pod whose listener the stream arrived at (a resume is honoured only there)
    app: TcpLeg
    record: ConnectionRecord
    token: str
    stream_received: int  # payload bytes the stopped stream(s) delivered: the new stream's count continues from it
    client_side: bool
    authorized: authz.ConnectionInfo | None = None
    timer: asyncio.TimerHandle | None = None
    ended: bool = False
    registry: ResumeRegistry | None = None  # set while it is held

    # The drain registry's interface (lifecycle.drainer.Resettable).
    def reset(self) -> None:
        if self.registry is not None:
            self.registry.give_up(
                self, "connection reset at drain deadline while waiting for its hbone stream to resume"
            )

    def log_fields(self) -> dict[str, Any]:
        return opened_fields(self.record)


class ResumeRegistry:
    """Parked app sockets: server-side ones by token (and the resume CONNECTs that arrived before theirs), and every
    held one in the proxy's live connections."""

    def __init__(self, telemetry: Telemetry, connections: ConnectionSet, park_timeout: float = PARK_TIMEOUT) -> None:
        self.telemetry = telemetry
        self.connections = connections
        self.park_timeout = park_timeout
        self._parked: dict[str, Parked] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self.resumed = 0
        self.expired = 0

    def hold(self, parked: Parked) -> None:
        """A live connection while its stream is being continued (the drain waits for it, or resets it)."""
        parked.registry = self
        self.connections.add(parked)

    def park(self, parked: Parked) -> None:
        """Server end: wait for the client end's resume CONNECT, up to `park_timeout`."""
        self.hold(parked)
        parked.timer = asyncio.get_running_loop().call_later(self.park_timeout, self._expire, parked)
        self.restore(parked)

    def release(self, parked: Parked) -> None:
        """It goes on, on a new stream (or in another process): no longer ours."""
        self._drop(parked)

    def waiting(self, pod_key: str) -> list[Parked]:
        """The server-side app sockets of pod `pod_key` still waiting for their resume CONNECT (a migration moves
        them with the rest: the resume may reach the next instance)."""
        return [p for p in self._parked.values() if p.pod_key == pod_key]

    def withdraw(self, parked: Parked) -> bool:
        """Out of reach of claims while it is offered to another process (a resume arriving meanwhile waits for it,
        as for one not parked yet); it stays held, its timer runs. False if it is no longer waiting."""
        if self._parked.get(parked.token) is not parked:
            return False
        del self._parked[parked.token]
        return True

    def restore(self, parked: Parked) -> None:
        """Withdrawn and not taken: claimable again (by a claim already waiting, too)."""
        if parked.registry is not self or parked.ended:
            return
        self._parked[parked.token] = parked
        event = self._arrived.pop(parked.token, None)
        if event is not None:
            event.set()

    def give_up(self, parked: Parked, why: str) -> None:
        """The connection ends here: the app socket is reset (unless the app already closed it) and the record
        logged, once."""
        self._drop(parked)
        if parked.ended:
            return
        parked.ended = True
        if not parked.app.done:
            parked.app.abort()
        record = parked.record
        app_bytes, stream_bytes = parked.app.received, parked.stream_received
        record.bytes_recv = app_bytes if parked.client_side else stream_bytes
        record.bytes_sent = stream_bytes if parked.client_side else app_bytes
        fail(record, why)
        self.telemetry.complete(record)

    def _drop(self, parked: Parked) -> None:
        if parked.timer is not None:
            parked.timer.cancel()
        if self._parked.get(parked.token) is parked:
            del self._parked[parked.token]
        self.connections.discard(parked)

    def _expire(self, parked: Parked) -> None:
        self.expired += 1
        self.give_up(parked, f"hbone stream not resumed within {self.park_timeout:g}s")

    async def claim(
        self, token: str, pod_key: str, identity: str, authority: str, wait: float = CLAIM_WAIT
    ) -> Parked | None:
        """The parked stream `token` of pod `pod_key`, if `identity` held it at `authority`; waits up to `wait` for
        it. A claim that does not match leaves it parked (a guessed token gets nothing)."""
        if token not in self._parked:
            event = self._arrived.setdefault(token, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait)
            if self._arrived.get(token) is event:
                del self._arrived[token]
        parked = self._parked.get(token)
        if parked is None:
            return None
        record = parked.record
        if parked.pod_key != pod_key or record.src_identity != identity or record.dst_hbone_addr != authority:
            return None
        del self._parked[token]
        self.resumed += 1
        return parked

    def __len__(self) -> int:
        return len(self._parked)

"""The agent side of ZDS (istio-cni's): one connection's state machine, `ServerConnection`."""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Sequence

from pyztunnel.protocols.zds.messages import (
    ACK_TIMEOUT,
    HELLO_TIMEOUT,
    Ack,
    AddWorkload,
    DelWorkload,
    Hello,
    KeepWorkload,
    Request,
    SnapshotSent,
    ZdsError,
    decode_ack,
    decode_hello,
)

# ------------------------------------------------------------------------------------- server (agent) state machine


class ServerPhase(enum.Enum):
    AWAIT_HELLO = "await-hello"
    SNAPSHOT = "snapshot"
    READY = "ready"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class Send:
    """Send this request (and, for an Add, the netns fd of its uid), then wait for its Ack (deadline `ACK_TIMEOUT`)."""

    request: Request


@dataclasses.dataclass(frozen=True)
class Completed:
    """A request got its answer, or failed (`ack.error` says why). `token` is the caller's handle given to `enqueue`
    (None for snapshot messages)."""

    request: Request
    ack: Ack
    token: object = None


@dataclasses.dataclass(frozen=True)
class SnapshotDone:
    """The proxy ACKed SnapshotSent: it is synchronised with the agent."""


@dataclasses.dataclass(frozen=True)
class Close:
    reason: str


ServerAction = Send | Completed | SnapshotDone | Close


@dataclasses.dataclass
class _Queued:
    request: Request
    token: object  # the caller's handle for matching the `Completed` (e.g. a future); None in the snapshot


class ServerConnection:
    """One agent-side ZDS connection. Feed it what the socket delivers; do what the returned actions say.

    The snapshot is fixed when the connection is made (`snapshot`: Add or Keep per pod). Requests enqueued before the
    snapshot completes are sent after it, in order, one at a time, as istio-cni does.
    """

    def __init__(self, snapshot: Sequence[AddWorkload | KeepWorkload]) -> None:
        self.phase = ServerPhase.AWAIT_HELLO
        self.hello: Hello | None = None
        self._queue: deque[_Queued] = deque(_Queued(r, None) for r in snapshot)
        self._queue.append(_Queued(SnapshotSent(), None))
        self._snapshot_left = len(self._queue)
        self._in_flight: _Queued | None = None

    @property
    def in_flight(self) -> Request | None:
        return self._in_flight.request if self._in_flight else None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def receive_hello(self, data: bytes, fd_count: int = 0, flags: int = 0) -> list[ServerAction]:
        if self.phase is not ServerPhase.AWAIT_HELLO:
            return self._fail("unexpected ZdsHello")
        try:
            self.hello = decode_hello(data, fd_count, flags)
        except ZdsError as exc:
            return self._fail(f"bad hello: {exc}")
        self.phase = ServerPhase.SNAPSHOT
        return self._next()

    def receive(self, data: bytes, fd_count: int = 0, flags: int = 0) -> list[ServerAction]:
        """A datagram after the hello: must be the Ack of the request in flight."""
        if self.phase is ServerPhase.AWAIT_HELLO:
            return self.receive_hello(data, fd_count, flags)
        if self.phase is ServerPhase.CLOSED:
            return []
        try:
            ack = decode_ack(data, fd_count, flags)
        except ZdsError as exc:
            return self._fail(str(exc))
        if self._in_flight is None:
            return self._fail("message from the proxy while no request was in flight")
        done, self._in_flight = self._in_flight, None
        # A NACK does not end the connection: istio-cni logs it and carries on, in the snapshot too (ztunnel retries
        # a workload it failed to start by itself). The shell logs `Completed` with an error.
        actions: list[ServerAction] = [Completed(done.request, ack, done.token)]
        if self.phase is ServerPhase.SNAPSHOT:
            self._snapshot_left -= 1
            if self._snapshot_left == 0:
                self.phase = ServerPhase.READY
                actions.append(SnapshotDone())
        return actions + self._next()

    def enqueue(self, request: AddWorkload | DelWorkload, token: object = None) -> list[ServerAction]:
        if self.phase is ServerPhase.CLOSED:
            return [Completed(request, Ack("connection closed"), token)]
        self._queue.append(_Queued(request, token))
        return self._next()

    def timeout(self) -> list[ServerAction]:
        """The hello or the Ack in flight did not come within its deadline."""
        if self.phase is ServerPhase.AWAIT_HELLO:
            return self._fail(f"no ZdsHello within {HELLO_TIMEOUT:g}s")
        if self._in_flight is not None:
            return self._fail(f"no Ack for {type(self._in_flight.request).__name__} within {ACK_TIMEOUT:g}s")
        return []

    def unsolicited(self) -> list[ServerAction]:
        """The liveness check read a message although nothing was in flight: a protocol error, as in istio-cni."""
        return self._fail("unexpected message from the proxy")

    def closed(self, reason: str) -> list[ServerAction]:
        """The socket closed or failed (EOF, send error)."""
        return self._fail(reason)

    def _fail(self, reason: str) -> list[ServerAction]:
        if self.phase is ServerPhase.CLOSED:
            return []
        if self.phase is ServerPhase.SNAPSHOT:
            reason = f"{reason} (during the snapshot)"
        self.phase = ServerPhase.CLOSED
        actions: list[ServerAction] = [Close(reason)]
        pending = ([self._in_flight] if self._in_flight else []) + list(self._queue)
        self._in_flight = None
        self._queue.clear()
        for item in pending:
            if item.token is not None:
                actions.append(Completed(item.request, Ack(f"ztunnel connection lost: {reason}"), item.token))
        return actions

    def _next(self) -> list[ServerAction]:
        if self._in_flight is not None or not self._queue or self.phase is ServerPhase.AWAIT_HELLO:
            return []
        if self.phase is ServerPhase.CLOSED:
            return []
        self._in_flight = self._queue.popleft()
        return [Send(self._in_flight.request)]

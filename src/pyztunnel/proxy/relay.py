"""The hot path: byte relays between two legs, each a TCP socket (`TcpLeg`, here) or one HTTP/2 stream of an HBONE
connection (`StreamLeg`, proxy/stream.py).

Everything is callback-driven asyncio Protocols (no coroutine per connection, no await per chunk): a chunk read on
one leg is written to the other in the same callback. Backpressure is explicit:

- a TCP leg whose write buffer fills holds its peer leg (`pause_writing` → `peer.pause_reading()`);
- an HTTP/2 stream leg with no send window left keeps the remainder and holds its peer until WINDOW_UPDATE;
- an HTTP/2 stream leg whose peer is held withholds its WINDOW_UPDATEs, so the remote sender stops (flow control).

Half-close travels across: EOF on TCP → END_STREAM; END_STREAM → `shutdown(SHUT_WR)`. A reset on one side resets the
other (RST_STREAM / TCP RST). The state of a leg (directions, holds) is `protocols.legstate.LegState`; all the state
of one proxied connection lives in its `Relay` and its two legs (DESIGN §5.5), never in a coroutine's locals, so that
drain can reset it and an upgrade can hand it over: `Relay.detach()` ends a relay without a trace, and its legs go on
with a new owner (a migration, a resumed HBONE stream).
"""

from __future__ import annotations

import asyncio
import socket
import typing
from collections.abc import Callable
from typing import Any

from pyztunnel.observe.access import ConnectionRecord, opened_fields
from pyztunnel.protocols.legstate import LegState
from pyztunnel.tcp import nodelay, rst_abort

_ALIVE = object()  # TcpLeg._lost_with before connection_lost


class Reset(Exception):
    """A leg was reset (TCP RST, RST_STREAM, or its HBONE connection died)."""


class Refused(Reset):
    """The peer never processed the stream (above its GOAWAY's last stream id, or REFUSED_STREAM): nothing of it
    reached the other side, so it is safe to open again on another connection (RFC 9113 §8.7)."""


class Leg(LegState):
    """One side of a relay. Subclasses carry bytes; this base keeps the relay bookkeeping."""

    __slots__ = ("_early", "peer", "relay")

    def __init__(self) -> None:
        LegState.__init__(self)
        self.peer: Leg | None = None
        self.relay: Relay | None = None
        self._early: list[bytes] | None = None  # bytes received before the relay started (no peer yet)

    # --- what the other leg calls
    def write(self, data: bytes | memoryview) -> None:
        """Send `data`; a memoryview may be a view of a receive buffer (see `keeps_writes`)."""
        raise NotImplementedError

    def keeps_writes(self) -> bool:
        """Is written data still referenced, to be sent later? A view of a receive buffer must then not be reused."""
        return False

    def write_eof(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        if self.hold():
            self._set_reading(False)

    def resume_reading(self) -> None:
        if self.let_go():
            self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Reset this leg now (TCP RST / RST_STREAM)."""
        raise NotImplementedError

    # --- what the relay (or a new owner) calls
    @property
    def steady(self) -> bool:
        """Both directions open, nothing finished, nothing held back for a relay not started yet: the whole state is
        in the kernel socket or the stream, what a hand-over needs."""
        return self.open_both_ways and not self._early

    def join(self, relay: Relay, peer: Leg) -> None:
        self.relay, self.peer = relay, peer

    def begin(self) -> None:
        """The relay started: hand over what arrived before it; whatever held the leg until now (no peer yet, or the
        stop of the stream it had before a resume) is over."""
        assert self.peer is not None
        early, self._early = self._early, None
        for chunk in early or ():
            self.peer.write(chunk)
        if self.eof_in:
            self.peer.write_eof()
        if self.let_go_all():
            self._set_reading(True)

    def detach(self) -> None:
        """Leave the relay: the leg keeps its connection, and whatever happens to it later is its next owner's."""
        self.relay = None
        self.peer = None

    # --- shared bookkeeping
    def _deliver(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        if self.peer is not None:
            self.peer.write(data)
        elif self._early is None:
            self._early = [bytes(data)]  # a view of a receive buffer is not ours to keep (bytes of bytes: no copy)
        else:
            self._early.append(bytes(data))

    def _deliver_eof(self) -> None:
        closed = self.ended_in()
        if self.peer is not None:
            self.peer.write_eof()
        if closed:
            self._close_clean()

    def _close_clean(self) -> None:
        raise NotImplementedError

    def _finished(self, error: BaseException | None) -> None:
        if self.finish() and self.relay is not None:
            self.relay.leg_finished(self, error)


class TcpLeg(asyncio.Protocol, Leg):
    """A plain TCP socket (the app's side, or a passthrough upstream). `start_paused`: read nothing until the relay
    starts (what arrives meanwhile waits in the kernel)."""

    __slots__ = ("_lost", "_lost_with", "_start_paused", "transport")

    def __init__(self, start_paused: bool = False) -> None:
        Leg.__init__(self)
        self.transport: asyncio.Transport | None = None
        self._start_paused = start_paused  # a hold from connection_made until the relay begins
        self._lost: asyncio.Future[Exception | None] | None = None
        self._lost_with: Exception | object | None = _ALIVE

    @property
    def lost(self) -> asyncio.Future[Exception | None]:
        """Resolved with `connection_lost`'s error once the socket is gone; made when first asked for (few ask):
        an idle connection's legs hold no future."""
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
            if self._lost_with is not _ALIVE:
                self._lost.set_result(typing.cast(Exception | None, self._lost_with))
        return self._lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same interface. uvloop sets
        # TCP_NODELAY on every TCP transport (asking it for the socket to set it again would keep a socket object per
        # leg); asyncio's own loop only on sockets it made itself (tests/integration/test_tcp_leg.py).
        if isinstance(transport, asyncio.Transport):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                nodelay(sock)
        self.transport = typing.cast(asyncio.Transport, transport)
        if self._start_paused:
            self.pause_reading()

    def data_received(self, data: bytes) -> None:
        self._deliver(data)

    def eof_received(self) -> bool:
        self._deliver_eof()
        return True  # keep the transport open for our own direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost_with is _ALIVE:
            self._lost_with = exc
            if self._lost is not None:
                self._lost.set_result(exc)
        if exc is None and self.eof_in and self.eof_out:
            self._finished(None)
        else:
            self._finished(exc or Reset("connection closed before both directions ended"))

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def keeps_writes(self) -> bool:
        # uvloop sends at once what the socket takes and keeps the rest (a view of it, no copy) until it can.
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def write_eof(self) -> None:
        if not self.end_out():
            return
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write_eof()
            except OSError:
                pass
        if self.closed_both_ways:
            self._close_clean()

    @property
    def open(self) -> bool:
        """The transport is there and not closing."""
        return self.transport is not None and not self.transport.is_closing()

    def _set_reading(self, on: bool) -> None:
        if not self.open:
            return
        assert self.transport is not None
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _close_clean(self) -> None:
        if self.transport is not None:
            self.transport.close()  # connection_lost(None) follows and finishes the leg

    def abort(self) -> None:
        if self.transport is None:
            self._finished(Reset("aborted"))
            return
        rst_abort(self.transport)

    def release(self) -> None:
        """Let go of the socket without a trace on the wire: another process holds it now (a migration). No
        shutdown(), no SO_LINGER: closing our descriptor of a shared socket sends nothing, and the leg, already out of
        its relay, finishes silently."""
        self.detach()
        self.done = True
        if self.transport is not None:
            self.transport.close()


async def connect_leg(sock: socket.socket, address: tuple[str, int], within: float) -> TcpLeg:
    """Connect a prepared socket (marked, bound, in the right netns) and wrap it in a paused TcpLeg; the socket is
    closed if that fails (also when the caller is cancelled: a reset stream's app connect)."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, address), within)
        leg = TcpLeg(start_paused=True)
        await loop.create_connection(lambda: leg, sock=sock)
    except BaseException:
        sock.close()
        raise
    return leg


class Relay:
    """One proxied connection's data path: two legs, started once both exist; `on_done(relay, error)` once, at the
    end. It ends in one of three ways: both legs finished (cleanly or with the first error), `reset()` (drain deadline,
    policy change, a refused resume), or `detach()` (handed over: no end at all, as far as the connection is concerned).

    `info` belongs to the owner (the access-log record); the relay does not look at it.
    """

    __slots__ = ("__weakref__", "_closed", "_on_done", "down", "error", "finished", "info", "up")

    def __init__(self, down: Leg, up: Leg, on_done: Callable[[Relay, BaseException | None], None], info: Any) -> None:
        self.down = down
        self.up = up
        self.info = info
        self._on_done = on_done
        self.error: BaseException | None = None
        self.finished = False
        self._closed: asyncio.Future[None] | None = None

    @property
    def closed(self) -> asyncio.Future[None]:
        """Resolved at the end, whichever it is; made when first asked for (a stop waiting on it): an idle relay
        holds no future."""
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            if self.finished:
                self._closed.set_result(None)
        return self._closed

    def start(self) -> None:
        down, up = self.down, self.up
        down.join(self, up)
        up.join(self, down)
        for leg in (down, up):
            if leg.done:  # a leg that ended before the start (reset while connecting)
                self.leg_finished(leg, Reset("closed before the relay started"))
                return
        for leg in (down, up):
            leg.begin()

    def leg_finished(self, leg: Leg, error: BaseException | None) -> None:
        if error is not None and self.error is None:
            self.error = error
            other = self.up if leg is self.down else self.down
            if not other.done:
                other.abort()
        if self.down.done and self.up.done:
            self._end(report=True)

    def reset(self, error: BaseException | None = None) -> None:
        """Reset both sides now (drain deadline, policy change); `error` is what the record will say."""
        if self.error is None:
            self.error = error or Reset("connection reset by the proxy")
        for leg in (self.down, self.up):
            if not leg.done:
                leg.abort()

    def detach(self) -> None:
        """Hand the connection over: the relay ends here without resetting, closing or reporting anything; its legs
        leave it (each keeps its socket or stream for its next owner, or is released by the caller)."""
        self.down.detach()
        self.up.detach()
        self._end(report=False)

    def log_fields(self) -> dict[str, Any]:
        """What drain logs about this connection: its access-log fields."""
        return opened_fields(self.info) if isinstance(self.info, ConnectionRecord) else {}

    def _end(self, report: bool) -> None:
        if self.finished:
            return
        self.finished = True
        if report:
            self._on_done(self, self.error)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

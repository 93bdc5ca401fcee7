"""The hot path: byte relays between two legs, each a TCP socket or one HTTP/2 stream of an HBONE connection.

Everything is callback-driven asyncio Protocols (no coroutine per connection, no await per chunk): a chunk read on
one leg is written to the other in the same callback. Backpressure is explicit:

- a TCP leg whose write buffer fills pauses reading on its peer leg (`pause_writing` → `peer.pause_reading()`);
- an HTTP/2 stream leg with no send window left keeps the remainder and pauses its peer until WINDOW_UPDATE;
- an HTTP/2 stream leg whose peer is paused withholds its WINDOW_UPDATEs, so the remote sender stops (flow control).

Half-close travels across: EOF on TCP → END_STREAM; END_STREAM → `shutdown(SHUT_WR)`. A reset on one side resets the
other (RST_STREAM / TCP RST). All the state of one proxied connection lives in its `Relay` object and its two legs
(DESIGN §5.5): nothing is held in the locals of a long-running coroutine, so drain can reset it and, later, export it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import h2.errors
import h2.exceptions

if TYPE_CHECKING:
    from pyztunnel.proxy.h2conn import H2Conn

_LINGER_RST = struct.pack("ii", 1, 0)


class Reset(Exception):
    """A leg was reset (TCP RST, RST_STREAM, or its HBONE connection died)."""


class Refused(Reset):
    """The peer never processed the stream (above its GOAWAY's last stream id, or REFUSED_STREAM): nothing of it
    reached the other side, so it is safe to open again on another connection (RFC 9113 §8.7)."""


class Leg:
    """One side of a relay. Subclasses carry bytes; this base keeps the shared state and the relay bookkeeping."""

    def __init__(self) -> None:
        self.peer: Leg | None = None
        self.relay: Relay | None = None
        self.received = 0  # bytes read from this leg's network peer
        self.eof_in = False  # the network peer finished sending
        self.eof_out = False  # we finished sending to the network peer
        self.done = False  # nothing more will happen on this leg
        self._early: list[bytes] = []  # bytes received before the relay started (no peer yet)
        self._pauses = 0

    # --- what the other leg calls
    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def write_eof(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        self._pauses += 1
        if self._pauses == 1:
            self._set_reading(False)

    def resume_reading(self) -> None:
        if self._pauses == 0:
            return
        self._pauses -= 1
        if self._pauses == 0:
            self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        raise NotImplementedError

    def read_again(self) -> None:
        """Joining a new relay (a resumed HBONE stream): whatever paused us under the old one is over."""
        if self._pauses:
            self._pauses = 0
            self._set_reading(True)

    def abort(self) -> None:
        """Reset this leg now (TCP RST / RST_STREAM)."""
        raise NotImplementedError

    # --- shared bookkeeping
    def _deliver(self, data: bytes) -> None:
        self.received += len(data)
        if self.peer is not None:
            self.peer.write(data)
        else:
            self._early.append(data)

    def _deliver_eof(self) -> None:
        self.eof_in = True
        if self.peer is not None:
            self.peer.write_eof()
        self._maybe_done()

    def _flush_early(self) -> None:
        """Called once the relay started: hand over what arrived before."""
        assert self.peer is not None
        early, self._early = self._early, []
        for chunk in early:
            self.peer.write(chunk)
        if self.eof_in:
            self.peer.write_eof()

    def _maybe_done(self) -> None:
        if self.eof_in and self.eof_out and not self.done:
            self._close_clean()

    def _close_clean(self) -> None:
        raise NotImplementedError

    def _finished(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        if self.relay is not None:
            self.relay.leg_finished(self, error)


class TcpLeg(asyncio.Protocol, Leg):
    """A plain TCP socket (the app's side, or a passthrough upstream)."""

    def __init__(self, start_paused: bool = False) -> None:
        Leg.__init__(self)
        self.transport: asyncio.Transport | None = None
        self._start_paused = start_paused
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same interface.
        self.transport = typing.cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._start_paused:
            self.pause_reading()

    def data_received(self, data: bytes) -> None:
        self._deliver(data)

    def eof_received(self) -> bool:
        self._deliver_eof()
        return True  # keep the transport open for our own direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
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

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.eof_out:
            return
        self.eof_out = True
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write_eof()
            except OSError:
                pass
        self._maybe_done()

    def _set_reading(self, on: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
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
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self.transport.abort()


async def connect_leg(sock: socket.socket, address: tuple[str, int], within: float) -> TcpLeg:
    """Connect a prepared socket (marked, bound, in the right netns) and wrap it in a paused TcpLeg; the socket is
    closed if that fails."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, address), within)
        leg = TcpLeg(start_paused=True)
        await loop.create_connection(lambda: leg, sock=sock)
    except BaseException:
        sock.close()
        raise
    return leg


class StreamControl(Protocol):
    def on_frame(self, frame_type: int, flags: int, body: bytes) -> None:
        """An HTTP/2 extension frame arrived on this stream."""


class StreamLeg(Leg):
    """One HTTP/2 stream of an HBONE connection (its DATA frames are the tunnelled bytes)."""

    def __init__(self, conn: H2Conn, stream_id: int) -> None:
        super().__init__()
        self.conn = conn
        self.stream_id = stream_id
        # Chunks to send once the peer's window opens (no copying: the head chunk is sent from an offset).
        self._pending: collections.deque[bytes] = collections.deque()
        self._offset = 0
        self._pending_eof = False
        self._blocked = False  # we paused our peer because the send window is exhausted
        self._unacked = 0  # received flow-controlled bytes not yet handed back (peer paused / not started)
        self.response: asyncio.Future[list[tuple[bytes, bytes]]] | None = None
        self.token: str | None = None  # both ends agreed this stream is resumable under this name (proxy/resume.py)
        self.control: StreamControl | None = None  # what handles extension frames on the stream
        self._early_control: list[tuple[int, int, bytes]] | None = None  # made only if such a frame comes early

    # --- events from the HTTP/2 connection
    def on_data(self, data: bytes, flow_controlled: int) -> None:
        self._deliver(data)
        if self.peer is None or self._pauses:
            self._unacked += flow_controlled
        else:
            self.conn.acknowledge(flow_controlled, self.stream_id)

    def on_end(self) -> None:
        self._deliver_eof()

    @property
    def has_pending(self) -> bool:
        """Bytes (or an END_STREAM) waiting for the peer's window."""
        return bool(self._pending) or self._pending_eof

    def on_control(self, frame_type: int, flags: int, body: bytes) -> None:
        if self.control is not None:
            self.control.on_frame(frame_type, flags, body)
        elif self._early_control is None:
            self._early_control = [(frame_type, flags, body)]
        elif len(self._early_control) < 4:
            # A peer may stop the stream right after its 200: the frame can come in the same read as the response,
            # before the CONNECT's caller has resumed and installed the handler. Kept for it (a few at most).
            self._early_control.append((frame_type, flags, body))

    def set_control(self, control: StreamControl) -> None:
        """Install the handler of the stream's extension frames, and give it those that came first."""
        self.control = control
        early, self._early_control = self._early_control or [], None
        for frame in early:
            if self.control is control:
                control.on_frame(*frame)

    def detach(self) -> None:
        """Stopped for a resume elsewhere: leave the relay and the connection without a trace on the wire; whatever
        later happens to the stream (a reset, the connection's end) is no longer this relay's business."""
        self.done = True
        self.relay = None
        self.peer = None
        self.control = None
        self.conn.forget(self.stream_id)

    def on_reset(self, why: str, refused: bool = False) -> None:
        error = Refused(why) if refused else Reset(why)
        if self.response is not None and not self.response.done():
            self.response.set_exception(error)
        self.conn.forget(self.stream_id)
        self._finished(error)

    def window_opened(self) -> None:
        if not self._pending and not self._pending_eof:
            return
        self._send_pending()

    # --- what the other leg calls
    def write(self, data: bytes) -> None:
        if self.done or self.eof_out:
            return
        if self._pending:
            self._pending.append(data)
            return
        sent = self.conn.send(self.stream_id, data)
        if sent < len(data):
            self._pending.append(data)
            self._offset = sent
            if not self._blocked and self.peer is not None:
                self._blocked = True
                self.peer.pause_reading()

    def _send_pending(self) -> None:
        if self.done:
            return
        pending = self._pending
        while pending:
            head = pending[0]
            want = len(head) - self._offset
            sent = self.conn.send(self.stream_id, memoryview(head)[self._offset :] if self._offset else head)
            if sent < want:
                self._offset += sent
                return
            pending.popleft()
            self._offset = 0
        if self._blocked and self.peer is not None:
            self._blocked = False
            self.peer.resume_reading()
        if self._pending_eof:
            self._pending_eof = False
            self._end()

    def write_eof(self) -> None:
        if self.eof_out or self._pending_eof or self.done:
            return
        if self._pending:
            self._pending_eof = True
            return
        self._end()

    def _end(self) -> None:
        self.eof_out = True
        self.conn.end_stream(self.stream_id)
        self._maybe_done()

    def _set_reading(self, on: bool) -> None:
        if on and self._unacked and self.peer is not None:
            unacked, self._unacked = self._unacked, 0
            self.conn.acknowledge(unacked, self.stream_id)

    def start(self) -> None:
        """The relay started: hand back the window withheld while there was no peer."""
        if self._unacked and not self._pauses:
            unacked, self._unacked = self._unacked, 0
            self.conn.acknowledge(unacked, self.stream_id)

    def _close_clean(self) -> None:
        self.conn.forget(self.stream_id)
        self._finished(None)

    def abort(self) -> None:
        if not self.done:
            self.conn.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            self.conn.forget(self.stream_id)
            self._finished(Reset("aborted"))


class Relay:
    """One proxied connection's data path: two legs, started once both exist; `on_done(relay, error)` once, at the end.

    `info` belongs to the owner (the access-log record); the relay does not look at it.
    """

    def __init__(self, down: Leg, up: Leg, on_done: Callable[[Relay, BaseException | None], None], info: Any) -> None:
        self.down = down
        self.up = up
        self.info = info
        self._on_done = on_done
        self.error: BaseException | None = None
        self.finished = False
        self.closed = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self.down.peer, self.up.peer = self.up, self.down
        self.down.relay = self.up.relay = self
        for leg in (self.down, self.up):
            if leg.done:  # a leg that ended before the start (reset while connecting)
                self.leg_finished(leg, Reset("closed before the relay started"))
                return
        for leg in (self.down, self.up):
            leg._flush_early()
            if isinstance(leg, StreamLeg):
                leg.start()
        # A leg that was paused only because it had no peer yet reads again now.
        for leg in (self.down, self.up):
            if isinstance(leg, TcpLeg) and leg._start_paused:
                leg._start_paused = False
                leg.resume_reading()

    def leg_finished(self, leg: Leg, error: BaseException | None) -> None:
        if error is not None and self.error is None:
            self.error = error
            other = self.up if leg is self.down else self.down
            if not other.done:
                other.abort()
        if self.down.done and self.up.done:
            self._finish()

    def reset(self) -> None:
        """Reset both sides now (drain deadline, policy change)."""
        if self.error is None:
            self.error = Reset("connection reset by the proxy")
        for leg in (self.down, self.up):
            if not leg.done:
                leg.abort()

    def log_fields(self) -> dict[str, Any]:
        """What drain logs about this connection: its access-log fields."""
        from pyztunnel.observe.access import ConnectionRecord, opened_fields

        return opened_fields(self.info) if isinstance(self.info, ConnectionRecord) else {}

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._on_done(self, self.error)
        if not self.closed.done():
            self.closed.set_result(None)


def is_h2_stream_error(exc: BaseException) -> bool:
    return isinstance(exc, h2.exceptions.StreamClosedError | h2.exceptions.ProtocolError)

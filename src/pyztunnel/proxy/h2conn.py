"""HBONE connections, the asyncio shell: an asyncio BufferedProtocol over TLS that moves bytes and runs timers for
the connection's rules (`protocols.hbone_conn.HboneConn`, sans-IO), with one `StreamLeg` (proxy/stream.py) per stream.

The receive path is one buffer: the TLS transport (proxy/tlssock.py's, or uvloop's) decrypts into the rules'
`get_buffer` and DATA payloads reach the streams as views of it (a view an app transport keeps to send later is lent:
never written over). The send path is h2's queued chunks, joined into TLS-record-sized pieces (`protocols.records`)
and written once per event-loop iteration.

`H2ClientConn` opens CONNECT streams (outbound, pooled); `H2ServerConn` sets each CONNECT up in a task of its own
(owned by the connection: a reset of the stream, or the connection's end, cancels it). Every decision (keepalive
PINGs, GOAWAY refusals, limits) is the rules object's; this shell reads, writes, keeps one timer at the rules'
`deadline`, and hands each event to the stream it is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import h2.errors
import h2.events
import h2.exceptions
import hyperframe.frame

from pyztunnel.aio import TaskGroup
from pyztunnel.protocols import hbone, hbone_events
from pyztunnel.protocols.hbone_conn import HboneConn, Limits
from pyztunnel.protocols.records import coalesce
from pyztunnel.proxy.stream import StreamLeg
from pyztunnel.tcp import rst_abort

_log = logging.getLogger("pyztunnel.proxy.h2")


def _cheap_data_repr(frame: hyperframe.frame.DataFrame) -> str:
    return f"data=<{len(frame.data)} bytes>"


# h2 formats repr(frame) for a trace log on every received frame, and hyperframe's DATA frame repr re-serializes and
# hex-encodes the whole payload (1 MiB here) before truncating it: a copy and a hexlify per frame on the hot path.
hyperframe.frame.DataFrame._body_repr = _cheap_data_repr

_Handler = Callable[[Any, Any], None]


class H2Conn(asyncio.BufferedProtocol):
    _HANDLERS: ClassVar[dict[type, _Handler]] = {}  # event type → what the shell does with it (filled below)

    def __init__(self, client_side: bool, limits: Limits | None = None) -> None:
        self.rules = HboneConn(client_side, limits)
        self.h2 = self.rules.h2
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamLeg] = {}
        self._loop = asyncio.get_running_loop()
        self._flush_pending = False
        self.lost = self._loop.create_future()
        self.error: str | None = None
        self._paused_streams: list[StreamLeg] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.on_idle: Callable[[H2Conn], None] | None = None  # called when the last stream ends
        # Post-handshake check, run before any HTTP/2 byte is read or sent; raising closes the connection.
        self.verify: Callable[[asyncio.Transport], None] | None = None
        self.info: dict[str, Any] = {}
        self.tasks = TaskGroup("hbone-connection")  # the connection's per-stream tasks

    @property
    def closing(self) -> bool:
        """GOAWAY sent or received, or the connection is over: no new streams."""
        return self.rules.closing

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # ------------------------------------------------------------------ asyncio.BufferedProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same interface.
        self.transport = typing.cast(asyncio.Transport, transport)
        if self.verify is not None:
            try:
                self.verify(self.transport)
            except Exception as exc:
                self.error = str(exc)
                self.rules.lost()
                self.transport.abort()
                return
        self.rules.start(self._loop.time())
        self.flush()
        self._arm()

    def get_buffer(self, sizehint: int) -> memoryview:
        # The TLS transport decrypts straight into it (SSLSocket.recv_into / SSLObject.read(n, buffer)): no bytes
        # object per read.
        return self.rules.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._handle(self.rules.received(nbytes, self._loop.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.rules.lost()
        self._arm()
        self.tasks.cancel()
        why = self.error or (f"connection lost: {exc}" if exc else "connection closed")
        for leg in list(self.streams.values()):
            leg.on_reset(why)
        self.streams.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        # The TLS connection's write buffer is full: stop reading from every source feeding our streams.
        self._paused_streams = [leg for leg in self.streams.values() if leg.peer is not None]
        for leg in self._paused_streams:
            assert leg.peer is not None
            leg.peer.pause_reading()

    def resume_writing(self) -> None:
        paused, self._paused_streams = self._paused_streams or [], None
        for leg in paused:
            if leg.peer is not None:
                leg.peer.resume_reading()

    # ------------------------------------------------------------------ the rules' events
    def _handle(self, events: list[hbone_events.Received]) -> None:
        handlers = self._HANDLERS
        streams = self.streams
        for event in events:
            if type(event) is tuple:  # a Chunk, the hot path: no handler call
                stream_id, view = event
                leg = streams.get(stream_id)
                if leg is not None and leg.on_view(view):
                    self.rules.lend()  # the app's transport keeps the view to send later: never write over it
            else:
                handlers[type(event)](self, event)
        self.flush()
        if self.rules.deadline != self._timer_at:
            self._arm()

    def _on_data(self, event: h2.events.DataReceived) -> None:
        leg = self.streams.get(event.stream_id)
        if leg is not None:
            leg.on_data(event.data, event.flow_controlled_length)

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        leg = self.streams.get(event.stream_id)
        if leg is not None:
            leg.on_end()

    def _on_gone(self, event: hbone_events.StreamGone) -> None:
        leg = self.streams.get(event.stream_id)
        if leg is not None:
            leg.on_reset(event.why, event.refused)

    def _on_window(self, event: hbone_events.WindowOpened) -> None:
        if not event.stream_id:
            for each in list(self.streams.values()):
                each.window_opened()
        elif (leg := self.streams.get(event.stream_id)) is not None:
            leg.window_opened()

    def _on_frame(self, event: hbone_events.StreamFrame) -> None:
        leg = self.streams.get(event.stream_id)
        if leg is not None:
            leg.on_control(event.frame_type, event.flags, event.body)

    def _on_idle(self, _: hbone_events.Idle) -> None:
        if self.on_idle is not None:
            self.on_idle(self)

    def _on_close(self, event: hbone_events.Close) -> None:
        self.error = self.error or event.error
        if event.warn:
            _log.warning("closing the http/2 connection", extra={"fields": {"error": event.error}})
        elif event.error is not None:
            _log.debug("closing the http/2 connection", extra={"fields": {"error": event.error}})
        self.flush_now()
        if self.transport is not None:
            if event.abort:
                self.transport.abort()
            else:
                self.transport.close()

    # ------------------------------------------------------------------ timer
    def _arm(self) -> None:
        """One timer, at the rules' deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = self.rules.deadline
        if self._timer_at is not None:
            self._timer = self._loop.call_at(self._timer_at, self._fire, self._timer_at)

    def _fire(self, scheduled: float) -> None:
        self._timer = None
        self._timer_at = None
        # A timer may fire a hair early (the loop's clock resolution): it is due, so it is at least its time.
        self._handle(self.rules.timer(max(self._loop.time(), scheduled)))

    # ------------------------------------------------------------------ what stream legs call (proxy.stream.StreamConn)
    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Send as much of `data` as flow control allows now; returns how many bytes went."""
        total = len(data)
        sent = 0
        if isinstance(data, bytes) and self.h2.send_whole_data(stream_id, data):
            # The common case: the whole chunk as one frame, the bytes object itself on the wire (no copy).
            self.flush()
            return total
        view = memoryview(data)
        try:
            while sent < total:
                window = self.h2.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                n = min(window, total - sent, self.h2.max_outbound_frame_size)
                self.h2.send_data(stream_id, view[sent : sent + n])
                sent += n
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            leg = self.streams.get(stream_id)
            if leg is not None:
                leg.on_reset(f"cannot send: {exc}")
            return total
        finally:
            view.release()
        self.flush()
        return sent

    def send_raw_frame(self, frame: bytes) -> None:
        """An extension frame h2 does not know (resumable streams): queued after everything h2 queued so far."""
        self.h2.queue_raw(frame)
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.end_stream(stream_id)
            self.flush()

    def acknowledge(self, size: int, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            self.h2.acknowledge_received_data(size, stream_id)
            self.flush()

    def reset_stream(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream_id, code)
            self.flush()

    def forget(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._handle(self.rules.closed_stream(stream_id, self._loop.time()))

    # ------------------------------------------------------------------ connection-level
    def flush(self) -> None:
        """Send what h2 queued, at the end of this event-loop iteration: every frame produced meanwhile (other
        streams' data, WINDOW_UPDATEs, responses) goes out in one TLS write and one syscall."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_pending = False
        chunks = self.h2.chunks_to_send()
        if chunks and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(coalesce(chunks))  # uvloop makes a TLS record of every element

    def goaway(self) -> None:
        """Graceful shutdown: GOAWAY(NO_ERROR); existing streams go on, the connection closes when they are done."""
        self._handle(self.rules.goaway(self._loop.time()))

    def close(self) -> None:
        """Close now: GOAWAY then drop the transport (streams are reset)."""
        self.goaway()
        self.flush_now()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # The drain registry's interface (lifecycle.drainer.Resettable).
    def reset(self) -> None:
        if self.transport is not None:
            rst_abort(self.transport)

    def log_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.info.items() if "." in k or k == "direction"}  # not internal keys


H2Conn._HANDLERS.update(
    {
        h2.events.DataReceived: H2Conn._on_data,
        h2.events.StreamEnded: H2Conn._on_end,
        hbone_events.StreamGone: H2Conn._on_gone,
        hbone_events.WindowOpened: H2Conn._on_window,
        hbone_events.StreamFrame: H2Conn._on_frame,
        hbone_events.Idle: H2Conn._on_idle,
        hbone_events.Close: H2Conn._on_close,
    }
)


class H2ClientConn(H2Conn):
    """Outbound: a pooled HBONE connection to one (destination identity, destination IP)."""

    _HANDLERS: ClassVar[dict[type, _Handler]] = dict(H2Conn._HANDLERS)

    def __init__(
        self, max_streams: int = hbone.CLIENT_MAX_STREAMS_PER_CONNECTION, limits: Limits | None = None
    ) -> None:
        super().__init__(client_side=True, limits=limits)
        self.max_streams = max_streams
        self.opened_streams = 0
        self.peer_identity: str | None = None

    @property
    def usable(self) -> bool:
        """Can take one more stream: open, not going away, below the per-connection stream budget (§3.3)."""
        return not self.closing and self.open and self.opened_streams < self.max_streams

    def open_stream(self, headers: hbone.Headers) -> StreamLeg:
        stream_id = self.rules.open_stream(headers)
        leg = StreamLeg(self, stream_id)
        leg.response = self._loop.create_future()
        self.streams[stream_id] = leg
        self.opened_streams += 1
        self.flush()
        return leg

    def _on_answered(self, event: hbone_events.Answered) -> None:
        leg = self.streams.get(event.stream_id)
        if leg is not None and leg.response is not None and not leg.response.done():
            leg.response.set_result(event.headers)


H2ClientConn._HANDLERS[hbone_events.Answered] = H2ClientConn._on_answered

StreamSetup = Callable[["H2ServerConn", StreamLeg, hbone.Headers], Coroutine[Any, Any, None]]


class H2ServerConn(H2Conn):
    """Inbound: one accepted HBONE connection; each CONNECT is set up by `setup(conn, leg, headers)`, a task of the
    connection, until it is answered (`respond`)."""

    _HANDLERS: ClassVar[dict[type, _Handler]] = dict(H2Conn._HANDLERS)

    def __init__(self, setup: StreamSetup, limits: Limits | None = None) -> None:
        super().__init__(client_side=False, limits=limits)
        self.setup = setup
        self._setups: dict[int, asyncio.Task[None]] = {}

    def _on_requested(self, event: hbone_events.StreamRequested) -> None:
        stream_id = event.stream_id
        leg = StreamLeg(self, stream_id)
        self.streams[stream_id] = leg
        task = self.tasks.spawn(self.setup(self, leg, event.headers), f"hbone-stream-{stream_id}")
        self._setups[stream_id] = task
        task.add_done_callback(lambda _: self._settled(stream_id))

    def _on_gone(self, event: hbone_events.StreamGone) -> None:
        # A stream reset before it was answered: its setup (policy check, app connect) is cancelled, so a rapid
        # reset never opens an app socket.
        task = self._setups.pop(event.stream_id, None)
        if task is not None:
            task.cancel()
        super()._on_gone(event)

    def _settled(self, stream_id: int) -> None:
        self._setups.pop(stream_id, None)
        self.rules.settled(stream_id)

    def respond(self, leg: StreamLeg, headers: hbone.Headers, end: bool = False) -> None:
        try:
            self.h2.send_headers(leg.stream_id, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            leg.on_reset(f"cannot respond: {exc}")
            return
        self._settled(leg.stream_id)
        self.flush()
        leg.on_answered(end)


H2ServerConn._HANDLERS[hbone_events.StreamRequested] = H2ServerConn._on_requested
H2ServerConn._HANDLERS[hbone_events.StreamGone] = H2ServerConn._on_gone

__all__ = ["H2ClientConn", "H2Conn", "H2ServerConn"]

"""HBONE connections: h2's sans-IO H2Connection driven by an asyncio Protocol over TLS, one StreamLeg per stream.

`H2ClientConn` opens CONNECT streams (outbound, pooled); `H2ServerConn` hands each CONNECT to a handler (inbound).
Both send PING every 10 s and drop the connection if no ACK comes within 20 s (§3.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import typing
from collections.abc import Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import hyperframe.frame

from pyztunnel.protocols import hbone
from pyztunnel.proxy.relay import Reset, StreamLeg

_log = logging.getLogger("pyztunnel.proxy.h2")


def _cheap_data_repr(frame: hyperframe.frame.DataFrame) -> str:
    return f"data=<{len(frame.data)} bytes>"


# h2 formats repr(frame) for a trace log on every received frame, and hyperframe's DATA frame repr re-serializes and
# hex-encodes the whole payload (1 MiB here) before truncating it: a copy and a hexlify per frame on the hot path.
hyperframe.frame.DataFrame._body_repr = _cheap_data_repr


_CLOSING_PING = b"pzt-bye!"  # the PING whose ACK lets a connection that is going away close


class H2Conn(asyncio.Protocol):
    def __init__(self, client_side: bool, ping_interval: float = hbone.PING_INTERVAL) -> None:
        self.h2 = hbone.new_connection(client_side)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamLeg] = {}
        self.closing = False  # GOAWAY sent or received: no new streams
        self._loop = asyncio.get_running_loop()
        self._flush_pending = False
        self.goaway_last_stream = 0  # the last peer stream our GOAWAY lets through
        self.lost = self._loop.create_future()
        self.error: str | None = None
        self._paused_streams: list[StreamLeg] | None = None
        self._ping_interval = ping_interval
        self._ping_handle: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self.on_idle: Callable[[H2Conn], None] | None = None  # called when the last stream ends
        # Post-handshake check, run before any HTTP/2 byte is read or sent; raising closes the connection.
        self.verify: Callable[[asyncio.Transport], None] | None = None
        self.info: dict[str, Any] = {}
        self._closing_ping = False
        self._close_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same interface.
        self.transport = typing.cast(asyncio.Transport, transport)
        if self.verify is not None:
            try:
                self.verify(self.transport)
            except Exception as exc:
                self.error = str(exc)
                self.closing = True
                self.transport.abort()
                return
        self.flush()
        self._schedule_ping()

    def data_received(self, data: bytes) -> None:
        if self.closing and self.error is not None:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued a GOAWAY with the right error code: send it, then drop the connection.
            self.error = f"http/2 protocol error: {exc}"
            _log.debug("http/2 protocol error", extra={"fields": {"error": str(exc)}})
            self.flush()
            self._fail(self.error)
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_ping()
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.closing = True
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

    # ------------------------------------------------------------------ events
    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            leg = self.streams.get(event.stream_id or 0)
            if leg is not None:
                leg.on_data(event.data or b"", event.flow_controlled_length or 0)
            else:
                # Data for a stream we no longer track: hand the window back so the connection does not starve.
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
        elif isinstance(event, h2.events.StreamEnded):
            leg = self.streams.get(event.stream_id or 0)
            if leg is not None:
                leg.on_end()
        elif isinstance(event, h2.events.StreamReset):
            leg = self.streams.get(event.stream_id or 0)
            if leg is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                leg.on_reset(f"stream reset by peer (error code {event.error_code})", refused)
        elif isinstance(event, h2.events.WindowUpdated):
            if not event.stream_id:
                for leg in list(self.streams.values()):
                    leg.window_opened()
            elif (leg := self.streams.get(event.stream_id)) is not None:
                leg.window_opened()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for leg in list(self.streams.values()):
                leg.window_opened()
        elif isinstance(event, h2.events.UnknownFrameReceived):
            frame = event.frame
            leg = self.streams.get(frame.stream_id) if frame is not None else None
            if leg is not None:
                leg.on_control(frame.type, frame.flag_byte, frame.body)
        elif isinstance(event, h2.events.PingAckReceived) and event.ping_data == _CLOSING_PING:
            if not self.streams:
                self._close_now()
        elif isinstance(event, h2.events.PingAckReceived):
            if self._ping_deadline is not None:
                self._ping_deadline.cancel()
                self._ping_deadline = None
            self._schedule_ping()
        elif isinstance(event, h2.events.ConnectionTerminated) and event.error_code:
            self._fail(f"GOAWAY from peer with error code {event.error_code}")
        elif isinstance(event, h2.events.ConnectionTerminated):
            # GOAWAY: no new streams. Streams *we* opened above last_stream_id were not processed by the peer;
            # streams the peer opened are not covered by its own GOAWAY and go on.
            self.closing = True
            last = event.last_stream_id or 0
            ours = 1 if self.h2.config.client_side else 0
            for stream_id, leg in list(self.streams.items()):
                if stream_id % 2 == ours and stream_id > last:
                    leg.on_reset("refused by GOAWAY", refused=True)
            self._check_idle()
        else:
            self.handle_event(event)

    def handle_event(self, event: h2.events.Event) -> None:
        """Client/server specific events."""

    # ------------------------------------------------------------------ what stream legs call
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
            self._check_idle()

    def _check_idle(self) -> None:
        if self.streams:
            return
        if self.closing and self.transport is not None:
            self._close_after_round_trip()
        elif self.on_idle is not None:
            self.on_idle(self)

    def _close_after_round_trip(self) -> None:
        """Going away with nothing left: close once a PING sent now comes back, not at once. A CONNECT the peer sent
        before it read our GOAWAY then still arrives on an open connection, is refused (REFUSED_STREAM) and opened
        again elsewhere; closing at once would reset the connection under it, a failed request (RFC 9113 §6.8)."""
        if self._closing_ping or self.transport is None or self.transport.is_closing():
            return
        self._closing_ping = True
        try:
            self.h2.ping(_CLOSING_PING)
        except h2.exceptions.ProtocolError:
            self._close_now()
            return
        self.flush_now()
        self._close_timer = self._loop.call_later(hbone.CLOSE_ROUND_TRIP_TIMEOUT, self._close_now)

    def _close_now(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.flush_now()
            self.transport.close()

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
            self.transport.writelines(chunks)

    def goaway(self) -> None:
        """Graceful shutdown: GOAWAY(NO_ERROR); existing streams go on, the connection closes when they are done."""
        if self.closing:
            return
        self.closing = True
        self.goaway_last_stream = self.h2.highest_inbound_stream_id
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
            self.flush()
        self._check_idle()

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
        from pyztunnel.lifecycle.drainer import rst_transport

        if self.transport is not None:
            rst_transport(self.transport)

    def log_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.info.items() if "." in k or k == "direction"}  # not internal keys

    def _fail(self, why: str) -> None:
        self.error = self.error or why
        self.flush_now()
        if self.transport is not None:
            self.transport.close()

    def _schedule_ping(self) -> None:
        if self._ping_interval <= 0 or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        self._ping_handle = loop.call_later(self._ping_interval, self._ping)

    def _ping(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.ping(os.urandom(8))
            self.flush()
        self._ping_deadline = asyncio.get_running_loop().call_later(hbone.PING_TIMEOUT, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        _log.warning("http/2 ping timed out, closing the connection")
        self.error = "ping timeout"
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
            self.flush_now()
        self.abort()

    def _cancel_ping(self) -> None:
        for handle in (self._ping_handle, self._ping_deadline):
            if handle is not None:
                handle.cancel()


class H2ClientConn(H2Conn):
    """Outbound: a pooled HBONE connection to one (destination identity, destination IP)."""

    def __init__(self, max_streams: int = hbone.CLIENT_MAX_STREAMS_PER_CONNECTION, **kwargs: Any) -> None:
        super().__init__(client_side=True, **kwargs)
        self.max_streams = max_streams
        self.opened_streams = 0
        self.peer_identity: str | None = None

    @property
    def usable(self) -> bool:
        """Can take one more stream: open, not going away, below the per-connection stream budget (§3.3)."""
        return (
            not self.closing
            and self.transport is not None
            and not self.transport.is_closing()
            and self.opened_streams < self.max_streams
        )

    def open_stream(self, headers: hbone.Headers) -> StreamLeg:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers)
        leg = StreamLeg(self, stream_id)
        leg.response = asyncio.get_running_loop().create_future()
        self.streams[stream_id] = leg
        self.opened_streams += 1
        self.flush()
        return leg

    def handle_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            leg = self.streams.get(event.stream_id or 0)
            if leg is not None and leg.response is not None and not leg.response.done():
                leg.response.set_result(list(event.headers or []))


class H2ServerConn(H2Conn):
    """Inbound: one accepted HBONE connection; each CONNECT goes to `on_request(conn, leg, headers)`."""

    def __init__(
        self,
        on_request: Callable[[H2ServerConn, StreamLeg, list[tuple[bytes, bytes]]], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(client_side=False, **kwargs)
        self.on_request = on_request

    def handle_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream_id = event.stream_id or 0
            if self.closing and stream_id > self.goaway_last_stream:
                self.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            leg = StreamLeg(self, stream_id)
            self.streams[stream_id] = leg
            headers: list[tuple[bytes, bytes]] = list(event.headers or [])
            self.on_request(self, leg, headers)

    def respond(self, leg: StreamLeg, headers: hbone.Headers, end: bool = False) -> None:
        try:
            self.h2.send_headers(leg.stream_id, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            leg.on_reset(f"cannot respond: {exc}")
            return
        self.flush()
        if end:
            leg.eof_out = True
            if leg.eof_in:
                leg._close_clean()
            else:
                # No body will follow; reset the stream so the client's data is not buffered forever.
                self.reset_stream(leg.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                leg.on_reset("rejected")


__all__ = ["H2ClientConn", "H2Conn", "H2ServerConn", "Reset"]

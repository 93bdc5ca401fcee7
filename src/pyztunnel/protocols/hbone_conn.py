"""The rules of one HBONE connection, sans-IO: bytes and time in, stream-level decisions out.

`HboneConn` owns the connection's HTTP/2 state (`h2wire.LeanH2Connection`) and decides what the shell
(proxy/h2conn.py) only carries out: it takes received bytes (`receive`, or `get_buffer`/`received`: the buffer the
TLS layer decrypts into, read by `protocols.h2read.FrameReader`, DATA handed out as views of it), the clock (`timer`, at `deadline`) and the
shell's facts about streams (`open_stream`, `settled`, `closed`), and returns events: a stream to set up, a response,
data, an end, a stream gone (reset, or refused by a GOAWAY), an opened window, an extension frame for a stream, an
idle connection, or `Close`. Time is always an explicit `now` (the loop's clock in the shell, numbers in tests); what
to send is in `h2.chunks_to_send()`.

The rules (ztunnel reference §3.3, issue 11):
- keepalive: PING every `ping_interval` (10 s); no ACK within `ping_timeout` (20 s) closes the connection;
- preface: the peer's first SETTINGS must come within `preface_timeout` of the handshake, not only when the ping
  timeout would notice (30 s);
- GOAWAY: ours lets the peer's streams up to its last stream id run and refuses newer ones (REFUSED_STREAM); the
  peer's refuses our streams above its last stream id (nothing of them reached it: safe to open again elsewhere);
  a GOAWAY with an error ends the connection; a connection going away with no stream left closes after a PING round
  trip, so a CONNECT already on the wire meets a refusal instead of a reset;
- rapid reset (CVE-2023-44487): a stream set up and reset in the same read is never set up; the streams being set up
  (not answered yet) are bounded (`max_pending_streams`; more are refused); resets and refusals draw from a token
  bucket (`reset_burst` tokens, `reset_rate` per second, nghttp2's defaults), and a peer that empties it gets
  GOAWAY(ENHANCE_YOUR_CALM) and is closed;
- control-frame floods (CVE-2019-9512 ping, -9515 settings, -9513 priority): PING, SETTINGS and PRIORITY frames draw
  from a second bucket (`control_burst`, `control_rate`; a healthy peer sends a few a minute), with the same end;
- too many streams: only the streams beyond our SETTINGS_MAX_CONCURRENT_STREAMS are refused (h2wire);
- a header block past the header-list limit ends the connection before it is buffered (h2wire).
"""

from __future__ import annotations

import struct
from typing import Any

import h2.events
from h2.errors import ErrorCodes
from h2.events import DataReceived, StreamEnded
from h2.exceptions import ProtocolError

from pyztunnel.protocols import h2wire
from pyztunnel.protocols.h2read import FrameReader
from pyztunnel.protocols.hbone import Headers
from pyztunnel.protocols.hbone_events import (
    Answered,
    Close,
    Event,
    Idle,
    Received,
    StreamFrame,
    StreamGone,
    StreamRequested,
    WindowOpened,
)
from pyztunnel.protocols.hbone_limits import Bucket, Limits

CLOSING_PING = b"pzt-bye!"  # the PING whose ACK lets a connection that is going away close
_KEEPALIVE = struct.Struct("!Q")


class HboneConn:
    """One HBONE connection's rules (see the module doc). `start(now)` once the TLS handshake is done."""

    def __init__(self, client_side: bool, limits: Limits | None = None) -> None:
        self.client_side = client_side
        self.limits = limits or Limits()
        self.h2 = h2wire.new_connection(client_side)
        self._reader = FrameReader(self.h2)
        self.closing = False  # GOAWAY sent or received: no new streams
        self.closed = False  # Close was decided (or the transport is gone): nothing more happens
        self.goaway_last_stream = 0  # the last peer stream our GOAWAY lets through
        self.resets = 0  # resets and refusals counted against the bucket
        self._live: set[int] = set()
        self._pending: set[int] = set()
        self._bucket = Bucket(self.limits.reset_burst, self.limits.reset_rate, 0.0)
        self._control = Bucket(self.limits.control_burst, self.limits.control_rate, 0.0)
        self.control_frames = 0  # PING, SETTINGS and PRIORITY frames counted against their bucket
        self._preface_deadline: float | None = None
        self._next_ping: float | None = None
        self._ping_deadline: float | None = None
        self._ping_sent = b""
        self._pings = 0
        self._close_deadline: float | None = None
        self.deadline: float | None = None  # when `timer` must be called next (None: nothing to wait for)

    # ------------------------------------------------------------------ inputs
    def start(self, now: float) -> None:
        self._bucket.last = self._control.last = now
        self._preface_deadline = now + self.limits.preface_timeout
        if self.limits.ping_interval > 0:
            self._next_ping = now + self.limits.ping_interval
        self._timers_changed()

    def _timers_changed(self) -> None:
        timers = (self._preface_deadline, self._next_ping, self._ping_deadline, self._close_deadline)
        times = [t for t in timers if t is not None]
        self.deadline = min(times) if times else None

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next decrypted bytes go (asyncio.BufferedProtocol's call)."""
        return self._reader.get_buffer(sizehint)

    def lend(self) -> None:
        """A Chunk of the last `received` is still referenced (an app transport keeps it to send later): the
        receive buffer under it is never written over again."""
        self._reader.lend()

    def received(self, nbytes: int, now: float) -> list[Received]:
        """`nbytes` more were written into `get_buffer`'s view."""
        if self.closed:
            return []
        try:
            events: list[Any] = self._reader.buffer_updated(nbytes)
        except ProtocolError as exc:
            return self._close(f"http/2 protocol error: {exc}")  # see `receive`
        return self._route(events, now)

    def receive(self, data: bytes, now: float) -> list[Event]:
        if self.closed:
            return []
        try:
            events: list[Any] = self.h2.receive_data(data)  # h2's events (untyped)
        except ProtocolError as exc:
            # h2 queued a GOAWAY with the right error code (PROTOCOL_ERROR, ENHANCE_YOUR_CALM for an oversized
            # header block, FRAME_SIZE_ERROR): send it, then close.
            return self._close(f"http/2 protocol error: {exc}")
        routed: list[Event] = self._route(events, now)  # no Chunks: h2 read all of it
        return routed

    def _route(self, events: list[Any], now: float) -> list[Any]:
        live = self._live
        for event in events:
            kind = type(event)
            if kind is tuple:  # a Chunk
                if event[0] not in live:
                    return self._decide(events, now)
            elif (kind is not DataReceived and kind is not StreamEnded) or event.stream_id not in live:
                return self._decide(events, now)
        return events  # only data and ends for live streams (the hot path): passed on as they are

    def _decide(self, events: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        born: dict[int, StreamRequested] | None = None  # streams requested in this read
        unborn: set[int] | None = None  # streams requested and reset in this read
        for event in events:
            kind = type(event)
            if kind is tuple:  # a Chunk
                if event[0] in self._live:
                    out.append(event)
                else:  # as for DataReceived below
                    self._acknowledge(len(event[1]), event[0])
            elif kind is DataReceived:
                if event.stream_id in self._live:
                    out.append(event)
                elif event.flow_controlled_length:
                    # Data for a stream we no longer track: hand the window back so the connection does not starve.
                    self._acknowledge(event.flow_controlled_length, event.stream_id)
            elif kind is StreamEnded:
                if event.stream_id in self._live:
                    out.append(event)
            elif kind is h2.events.RequestReceived:
                stream_id = event.stream_id
                if self.closing and stream_id > self.goaway_last_stream:
                    # Opened after our GOAWAY (the peer had not read it yet): refused, to be opened again elsewhere.
                    self._refuse(stream_id)
                elif len(self._pending) >= self.limits.max_pending_streams:
                    self._refuse(stream_id)
                    if not self._count_reset(now):
                        return self._abuse("stream resets")
                else:
                    requested = StreamRequested(stream_id, list(event.headers or []))
                    self._live.add(stream_id)
                    self._pending.add(stream_id)
                    out.append(requested)
                    born = born or {}
                    born[stream_id] = requested
            elif kind is h2.events.StreamReset:
                if born is not None and event.stream_id in born:
                    # Set up and reset in one read: it is never set up (no app connect for a rapid reset).
                    out.remove(born.pop(event.stream_id))
                    unborn = unborn or set()
                    unborn.add(event.stream_id)
                    self._live.discard(event.stream_id)
                    self._pending.discard(event.stream_id)
                elif event.stream_id in self._live:
                    refused = event.error_code == ErrorCodes.REFUSED_STREAM
                    out.append(
                        StreamGone(event.stream_id, f"stream reset by peer (error code {event.error_code})", refused)
                    )
                if not self.client_side and not self._count_reset(now):
                    return self._abuse("stream resets")
            elif kind is h2wire.StreamRefused:
                if not self._count_reset(now):
                    return self._abuse("stream resets")
            elif kind is h2.events.ResponseReceived:
                if event.stream_id in self._live:
                    out.append(Answered(event.stream_id, list(event.headers or [])))
            elif kind is h2.events.WindowUpdated:
                if not event.stream_id or event.stream_id in self._live:
                    out.append(WindowOpened(event.stream_id or 0))
            elif kind is h2.events.RemoteSettingsChanged:
                if not self._count_control(now):
                    return self._abuse("control frames")
                if self._preface_deadline is not None:  # the peer's preface and first SETTINGS are in
                    self._preface_deadline = None
                    self._timers_changed()
                out.append(WindowOpened(0))  # its initial window may have changed
            elif kind is h2.events.UnknownFrameReceived:
                frame = event.frame
                if frame is not None and frame.stream_id in self._live:
                    out.append(StreamFrame(frame.stream_id, frame.type, frame.flag_byte, frame.body))
            elif kind is h2.events.PingAckReceived:
                out += self._ping_acked(event.ping_data or b"", now)
            elif kind is h2.events.PingReceived or kind is h2.events.PriorityUpdated:
                if not self._count_control(now):
                    return self._abuse("control frames")
            elif kind is h2.events.ConnectionTerminated:
                if event.error_code:
                    return out + self._close(f"GOAWAY from peer with error code {event.error_code}")
                out += self._peer_going_away(event.last_stream_id or 0, now)
        return self._unroute(out, unborn) if unborn else out

    def _unroute(self, out: list[Any], unborn: set[int]) -> list[Any]:
        """Drop what was routed to streams that were never set up; their data's window goes back to the peer (else
        every rapid reset carrying DATA would shrink the connection's window for good)."""
        kept: list[Any] = []
        for event in out:
            kind = type(event)
            stream_id = event[0] if kind is tuple else getattr(event, "stream_id", None)
            if stream_id not in unborn:
                kept.append(event)
            elif kind is tuple:
                self._acknowledge(len(event[1]), stream_id)
            elif kind is DataReceived and event.flow_controlled_length:
                self._acknowledge(event.flow_controlled_length, stream_id)
        return kept

    def timer(self, now: float) -> list[Event]:
        """The clock reached (or passed) `deadline`."""
        if self.closed:
            return []
        if self._preface_deadline is not None and now >= self._preface_deadline:
            return self._close(f"http/2 preface not received within {self.limits.preface_timeout:g}s", abort=True)
        if self._ping_deadline is not None and now >= self._ping_deadline:
            self._close_connection(ErrorCodes.NO_ERROR)  # ztunnel: an abrupt GOAWAY(NO_ERROR) on a ping failure
            return self._close("ping timeout", abort=True, warn=True)
        if self._close_deadline is not None and now >= self._close_deadline:
            return self._close(None)
        if self._next_ping is not None and now >= self._next_ping and self._ping_deadline is None:
            self._pings += 1
            self._ping_sent = _KEEPALIVE.pack(self._pings)
            self._reader.trim()  # a receive buffer grown for a busy moment goes back (at most once per interval)
            self._next_ping = None
            try:
                self.h2.ping(self._ping_sent)
            except ProtocolError:
                self._timers_changed()
                return []
            self._ping_deadline = now + self.limits.ping_timeout
            self._timers_changed()
        return []

    def open_stream(self, headers: Headers) -> int:
        """Client: send a CONNECT; returns its stream id."""
        stream_id: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers)
        self._live.add(stream_id)
        return stream_id

    def settled(self, stream_id: int) -> None:
        """Server: the stream's setup is over (answered, or given up); it no longer counts as pending."""
        self._pending.discard(stream_id)

    def closed_stream(self, stream_id: int, now: float) -> list[Event]:
        """The shell is done with the stream: its frames are no longer routed."""
        if stream_id not in self._live:
            return []
        self._live.discard(stream_id)
        self._pending.discard(stream_id)
        return self._check_idle(now)

    def goaway(self, now: float) -> list[Event]:
        """Graceful shutdown: GOAWAY(NO_ERROR) letting the peer's open streams run; closes once none is left."""
        if self.closing or self.closed:
            return []
        self.closing = True
        self.goaway_last_stream = self.h2.highest_inbound_stream_id
        self._close_connection(ErrorCodes.NO_ERROR)
        return self._check_idle(now)

    def lost(self) -> None:
        """The transport is gone."""
        self._close(None)

    @property
    def streams(self) -> int:
        return len(self._live)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ rules
    def _refuse(self, stream_id: int) -> None:
        try:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        except ProtocolError:
            pass

    def _count_reset(self, now: float) -> bool:
        self.resets += 1
        return self._bucket.take(now)

    def _count_control(self, now: float) -> bool:
        self.control_frames += 1
        return self._control.take(now)

    def _abuse(self, what: str) -> list[Event]:
        count = self.resets if what == "stream resets" else self.control_frames
        self._close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        return self._close(f"too many {what} ({count}): GOAWAY(ENHANCE_YOUR_CALM)", abort=True, warn=True)

    def _ping_acked(self, data: bytes, now: float) -> list[Event]:
        if data == CLOSING_PING:
            return self._close(None) if self.closing and not self._live else []
        if self._ping_deadline is not None and data == self._ping_sent:
            self._ping_deadline = None
            self._next_ping = now + self.limits.ping_interval
            self._timers_changed()
        return []

    def _peer_going_away(self, last_stream_id: int, now: float) -> list[Event]:
        # No new streams. Streams *we* opened above last_stream_id were not processed by the peer; streams the peer
        # opened are not covered by its own GOAWAY and go on.
        self.closing = True
        out: list[Event] = []
        if self.client_side:
            out += [StreamGone(s, "refused by GOAWAY", refused=True) for s in sorted(self._live) if s > last_stream_id]
        return out + self._check_idle(now)

    def _check_idle(self, now: float) -> list[Event]:
        if self._live or self.closed:
            return []
        if not self.closing:
            self._reader.trim()
            return [Idle()]
        # Going away with nothing left: close once a PING sent now comes back, not at once. A CONNECT the peer sent
        # before it read our GOAWAY then still arrives on an open connection, is refused (REFUSED_STREAM) and opened
        # again elsewhere; closing at once would reset the connection under it, a failed request (RFC 9113 §6.8).
        if self._close_deadline is not None:
            return []
        try:
            self.h2.ping(CLOSING_PING)
        except ProtocolError:
            return self._close(None)
        self._close_deadline = now + self.limits.close_round_trip
        self._timers_changed()
        return []

    def _acknowledge(self, size: int, stream_id: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (ProtocolError, KeyError):
            pass

    def _close_connection(self, code: ErrorCodes) -> None:
        try:
            self.h2.close_connection(error_code=code)
        except ProtocolError:
            pass

    def _close(self, error: str | None, abort: bool = False, warn: bool = False) -> list[Event]:
        self.closed = True
        self.closing = True
        self._preface_deadline = self._next_ping = self._ping_deadline = self._close_deadline = None
        self.deadline = None
        return [Close(error, abort, warn)]


__all__ = [  # the events are hbone_events'; named here too, as what this module's HboneConn returns
    "CLOSING_PING",
    "Answered",
    "Close",
    "Event",
    "HboneConn",
    "Idle",
    "Limits",
    "Received",
    "StreamFrame",
    "StreamGone",
    "StreamRequested",
    "WindowOpened",
]

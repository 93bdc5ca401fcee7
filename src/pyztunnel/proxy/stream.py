"""One HTTP/2 stream of an HBONE connection as a relay leg: its DATA frames are the tunnelled bytes.

The leg talks to its connection (proxy/h2conn.py) through `StreamConn`, the few calls a stream makes; the connection
calls the leg's `on_*` methods with what arrived for the stream. Sending is bounded by HTTP/2 flow control: what the
peer's window does not take waits here (no copy: the head chunk is sent from an offset) and holds the other leg until
the window opens; what we received is acknowledged (WINDOW_UPDATE) only while the other leg takes it, so a slow
reader there stops the remote sender.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

import h2.errors

from pyztunnel.proxy.relay import Leg, Refused, Reset


class StreamConn(Protocol):
    """What a stream leg needs of its HTTP/2 connection."""

    @property
    def open(self) -> bool:
        """The connection still carries frames (its transport is there and not closing)."""

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Send as much of `data` as flow control allows now; returns how many bytes went."""

    def send_raw_frame(self, frame: bytes) -> None:
        """An extension frame, in order with everything queued so far."""

    def end_stream(self, stream_id: int) -> None: ...

    def acknowledge(self, size: int, stream_id: int) -> None:
        """Hand `size` received bytes of window back to the peer."""

    def reset_stream(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None: ...

    def forget(self, stream_id: int) -> None:
        """The leg is done with the stream: the connection no longer routes its frames here."""


class StreamControl(Protocol):
    def on_frame(self, frame_type: int, flags: int, body: bytes) -> None:
        """An HTTP/2 extension frame arrived on this stream."""


class StreamLeg(Leg):
    """One HTTP/2 stream of an HBONE connection."""

    # Slots, and no queue until the send window first runs out: every idle HBONE connection holds one on each proxy.
    __slots__ = (
        "_blocked",
        "_early_control",
        "_offset",
        "_pending",
        "_pending_eof",
        "_unacked",
        "conn",
        "control",
        "response",
        "stream_id",
        "token",
    )

    def __init__(self, conn: StreamConn, stream_id: int) -> None:
        super().__init__()
        self.conn = conn
        self.stream_id = stream_id
        # Chunks to send once the peer's window opens (no copying: the head chunk is sent from an offset); made
        # the first time the window runs out.
        self._pending: collections.deque[bytes] | None = None
        self._offset = 0
        self._pending_eof = False
        self._blocked = False  # we hold our peer because the send window is exhausted
        self._unacked = 0  # received flow-controlled bytes not yet handed back (peer held / not started)
        self.response: asyncio.Future[list[tuple[bytes, bytes]]] | None = None
        self.token: str | None = None  # both ends agreed this stream is resumable under this name (proxy/resume.py)
        self.control: StreamControl | None = None  # what handles extension frames on the stream
        self._early_control: list[tuple[int, int, bytes]] | None = None  # made only if such a frame comes early

    # --- events from the HTTP/2 connection
    def on_data(self, data: bytes | memoryview, flow_controlled: int) -> None:
        self._deliver(data)
        if self.peer is None or self._holds:  # (LegState.held, without a property call on the hot path)
            self._unacked += flow_controlled
        else:
            self.conn.acknowledge(flow_controlled, self.stream_id)

    def on_view(self, view: memoryview) -> bool:
        """DATA payload as a view of the connection's receive buffer (no padding: all of it flow-controlled).
        True if the view is still referenced after the call (the other leg's transport keeps it to send later)."""
        self.on_data(view, len(view))
        peer = self.peer
        return peer is not None and peer.keeps_writes()

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

    def on_reset(self, why: str, refused: bool = False) -> None:
        error = Refused(why) if refused else Reset(why)
        if self.response is not None and not self.response.done():
            self.response.set_exception(error)
        self.conn.forget(self.stream_id)
        self._finished(error)

    def on_answered(self, ended: bool) -> None:
        """We answered the CONNECT; with END_STREAM (a refusal) our direction is over: the stream ends once the
        peer's is too, or is reset now so that the client's data is not buffered forever."""
        if not ended:
            return
        self.eof_out = True
        if self.eof_in:
            self._close_clean()
        else:
            self.conn.reset_stream(self.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            self.on_reset("rejected")

    def window_opened(self) -> None:
        if not self._pending and not self._pending_eof:
            return
        self._send_pending()

    # --- a hand-over (resumable streams)
    def detach(self) -> None:
        """Stopped for a resume elsewhere: leave the relay and the connection without a trace on the wire; whatever
        later happens to the stream (a reset, the connection's end) is no longer this relay's business."""
        super().detach()
        self.done = True
        self.control = None
        self.conn.forget(self.stream_id)

    # --- what the other leg calls
    def write(self, data: bytes | memoryview) -> None:
        if self.done or self.eof_out:
            return
        if type(data) is memoryview:  # a view of another connection's receive buffer: h2 would queue it as it is
            data = bytes(data)
        if self._pending:
            self._pending.append(data)
            return
        sent = self.conn.send(self.stream_id, data)
        if sent < len(data):
            if self._pending is None:
                self._pending = collections.deque()
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
        self.end_out()
        self.conn.end_stream(self.stream_id)
        if self.closed_both_ways:
            self._close_clean()

    def _set_reading(self, on: bool) -> None:
        if on and self._unacked and self.peer is not None:
            unacked, self._unacked = self._unacked, 0
            self.conn.acknowledge(unacked, self.stream_id)

    def begin(self) -> None:
        super().begin()
        self._set_reading(True)  # hand back the window withheld while there was no peer

    def _close_clean(self) -> None:
        self.conn.forget(self.stream_id)
        self._finished(None)

    def abort(self) -> None:
        if not self.done:
            self.conn.reset_stream(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            self.conn.forget(self.stream_id)
            self._finished(Reset("aborted"))

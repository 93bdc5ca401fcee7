"""HBONE's receive path, sans-IO: HTTP/2 frames read out of one buffer that the TLS layer decrypts into, DATA payloads
handed out as views of that buffer as they arrive, every other frame given to h2 whole (issue 14, docs/bench.md).

Why: h2's own path costs, per read, a `bytes` object from `SSLObject.read` (uvloop allocates 256 KiB and shrinks it),
a copy into h2's frame buffer, a hyperframe `DataFrame` with a copy of its payload, a state-machine pass and a
`DataReceived` event; for a relayed request that is most of the proxy's Python time. Here uvloop's buffered read path
(`get_buffer`/`buffer_updated`: `SSLObject.read(n, buffer)`) decrypts straight into our buffer, and a DATA frame
without flags on an open stream is accounted the way h2 accounts it (both flow-control windows consumed, the body
length tracked; for RECV_DATA in these states h2's state machines only stay where they are) and its payload is
returned as `(stream_id, memoryview)` pieces, even before the whole frame has arrived. Anything else (HEADERS,
SETTINGS, WINDOW_UPDATE, RST_STREAM, GOAWAY, PING, extension frames, DATA with END_STREAM or PADDED, DATA on a stream
h2 would refuse, a frame past a window) goes to `h2.receive_data` as its bytes arrive, so h2 buffers it with its own
limits, decides what it does and which error it raises. A frame longer than our SETTINGS_MAX_FRAME_SIZE is refused at
its header (FRAME_SIZE_ERROR), before any of it is buffered.

Views point into the buffer: a consumer that keeps one past the call (a transport that could not send it all at once)
must say so with `lend()`; the reader then never writes over that part again (it takes a new buffer instead).

Memory: the buffer is as large as the reads ask for (uvloop's size hint is what TLS has pending), from 16 KiB up to
512 KiB, and `trim()` gives a large one back (the connection's rules call it at each keepalive PING and when the
last stream ends): an idle HBONE connection holds 16 KiB here, not what its busiest moment needed.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import FrameTooLargeError
from h2.stream import StreamState

KIB = 1024
RECEIVE_BUFFER = 512 * KIB  # the most: room for a whole uvloop read (256 KiB) behind a partial frame
SMALL_BUFFER = 16 * KIB  # the least: one TLS record
PREAMBLE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADER = struct.Struct("!HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id (with the reserved bit)
_FRAME_HEADER = 9
_DATA = 0x0
_STREAM_ID = 0x7FFFFFFF
_RECEIVING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
_OPEN = frozenset({ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN})

Chunk = tuple[int, memoryview]  # DATA payload bytes of one stream, a view of the receive buffer


class FrameReader:
    """One HTTP/2 connection's receive buffer. `get_buffer` / `buffer_updated` are asyncio.BufferedProtocol's calls;
    `buffer_updated` returns, in wire order, h2 events and `Chunk`s (`type(item) is tuple`)."""

    def __init__(self, conn: H2Connection, size: int = RECEIVE_BUFFER, small: int = SMALL_BUFFER) -> None:
        self.conn = conn
        self._size = size
        self._small = min(small, size)
        self._buf = bytearray()  # made at the first read, as large as it asks for
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are _buf[_start:_end]
        self._end = 0
        self._lent = False  # a view of _buf is still held by someone: never write over what was read
        self._left = 0  # payload bytes of the DATA frame being read that are still to come
        self._stream_id = 0
        self._preamble = 0 if conn.config.client_side else len(PREAMBLE)  # h2 checks the client's preamble
        self._h2_left = 0  # bytes of the frame being handed to h2 that are still to come

    def get_buffer(self, sizehint: int) -> memoryview:
        held = self._end - self._start
        if not held and not self._lent:  # everything read was consumed and nobody kept a view: start over
            self._start = self._end = 0
        want = max(min(sizehint, self._size // 2), _FRAME_HEADER - held, 1)
        if len(self._buf) - self._end < want:
            self._make_room(held, want)
        return self._view[self._end :]

    def lend(self) -> None:
        """A view returned by the last `buffer_updated` is kept by its consumer after the call."""
        self._lent = True

    def trim(self) -> None:
        """Give a buffer larger than the least back, unless it holds a view someone kept (then the next read that
        needs room takes a new one anyway)."""
        if len(self._buf) > self._small and not self._lent:
            self._renew(self._end - self._start, self._small)

    def _make_room(self, held: int, want: int) -> None:
        # Moving the unread tail to the front is a copy of a partial frame at most; it must not overlap the tail
        # (bytearray slice assignment is a memcpy) nor write over lent views.
        if not self._lent and self._start >= held and held + want <= len(self._buf):
            self._buf[:held] = self._view[self._start : self._end]
            self._start, self._end = 0, held
        else:  # a power of two between the least and the most that fits the read
            self._renew(held, max(self._small, min(self._size, 1 << (held + want - 1).bit_length()), held + want))

    def _renew(self, held: int, size: int) -> None:
        buf = bytearray(size)
        buf[:held] = self._view[self._start : self._end]
        self._buf, self._view, self._lent = buf, memoryview(buf), False
        self._start, self._end = 0, held

    def buffer_updated(self, nbytes: int) -> list[Any]:
        self._end += nbytes
        out: list[Any] = []
        conn, buf, view = self.conn, self._buf, self._view
        pos, end = self._start, self._end
        try:
            if self._preamble:
                take = min(self._preamble, end - pos)
                out += conn.receive_data(view[pos : pos + take])
                pos += take
                self._preamble -= take
            while pos < end:
                if self._h2_left:
                    take = min(self._h2_left, end - pos)
                    out += conn.receive_data(view[pos : pos + take])
                    pos += take
                    self._h2_left -= take
                    continue
                if self._left:
                    take = min(self._left, end - pos)
                    out.append((self._stream_id, view[pos : pos + take]))
                    pos += take
                    self._left -= take
                    continue
                if end - pos < _FRAME_HEADER:
                    break
                high, low, kind, flags, stream_id = _HEADER.unpack_from(buf, pos)
                length = high << 8 | low
                if length > conn.max_inbound_frame_size:  # refused at its header, before buffering any of it
                    conn._terminate_connection(ErrorCodes.FRAME_SIZE_ERROR)
                    raise FrameTooLargeError(f"frame of {length} bytes, max {conn.max_inbound_frame_size}")
                if kind == _DATA and not flags and length and self._take_data(stream_id & _STREAM_ID, length):
                    pos += _FRAME_HEADER
                    self._left, self._stream_id = length, stream_id & _STREAM_ID
                    continue
                # h2's frame: its bytes go to h2 as they come (h2 buffers a partial frame itself, with its own limits).
                self._h2_left = _FRAME_HEADER + length
                take = min(self._h2_left, end - pos)
                out += conn.receive_data(view[pos : pos + take])
                pos += take
                self._h2_left -= take
        finally:  # h2 queued a GOAWAY for a protocol error it raised; the connection is over then anyway
            self._start = pos
        return out

    def _take_data(self, stream_id: int, length: int) -> bool:
        """Account a whole DATA frame (no flags) as h2 would, if h2 would take it without a word; else False."""
        conn = self.conn
        stream = conn.streams.get(stream_id)
        window = conn._inbound_flow_control_window_manager
        if (
            stream is None
            or stream.state_machine.state not in _RECEIVING
            or conn.state_machine.state not in _OPEN
            or stream._expected_content_length is not None
            or conn.incoming_buffer._headers_buffer  # a header block is open: h2 raises for the DATA
            or length > window.current_window_size
            or length > stream._inbound_window_manager.current_window_size
        ):
            return False
        window.window_consumed(length)
        stream._inbound_window_manager.window_consumed(length)
        stream._actual_content_length += length
        return True

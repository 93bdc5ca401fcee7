"""h2's sans-IO H2Connection, made lean on the hot path and bounded against hostile peers (ztunnel reference §3.3).

Lean: DATA frames go out as their 9-byte header plus the payload object itself (h2 would serialize, join into a
bytearray and copy that), flagless DATA on an open stream is accounted without h2's per-frame objects, and a frame
body is parsed from a view of the receive buffer. Header blocks are encoded by `hpack_plain` (no dynamic table, no
Huffman: HBONE's header values do not repeat). Everything else is h2's own behaviour, byte for byte.

Bounded, where h2 is not:
- a header block (HEADERS or PUSH_PROMISE and its CONTINUATION frames until END_HEADERS) may not grow past our
  header-list limit; h2 buffers up to 64 CONTINUATION frames of the maximum frame size (64 MiB with ztunnel's 1 MiB
  frames) before it even decodes. Checked on each frame's 9-byte header, so the body is never buffered. (The encoded
  block of a header list that fits the limit is smaller than the limit: HPACK's per-field overhead is a few bytes,
  the list's is 32.) CONTINUATION floods made this the 2024 CVE round (Go CVE-2023-45288, hyper's h2 caps the block
  the same way);
- a frame's length is checked against our maximum frame size on its header too, not once its body is in;
- a HEADERS frame that opens a stream beyond our SETTINGS_MAX_CONCURRENT_STREAMS refuses only that stream
  (RST_STREAM(REFUSED_STREAM), as ztunnel's h2 does; RFC 9113 §5.1.2 allows it); h2 would end the whole connection
  with GOAWAY(PROTOCOL_ERROR), taking the good streams with it;
- a GOAWAY leaves open streams running (RFC 9113 §6.8), which h2 does not (`_GracefulGoawayStateMachine`).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, ClassVar

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import DataReceived, Event
from h2.exceptions import DenialOfServiceError, FrameDataMissingError, FrameTooLargeError, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import StreamState
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame, PushPromiseFrame

from pyztunnel.protocols import hbone
from pyztunnel.protocols.hpack_plain import PlainEncoder

_DATA_HEADER = struct.Struct("!HBBBL")
_END_STREAM = 0x1
_HEADER_BLOCK_FRAMES = frozenset({HeadersFrame, ContinuationFrame, PushPromiseFrame})  # a set: one lookup per frame


@dataclasses.dataclass
class StreamRefused(Event):  # type: ignore[misc]  # h2 is untyped for mypy here
    """We refused a stream the peer opened beyond our concurrency limit (RST_STREAM(REFUSED_STREAM) is queued)."""

    stream_id: int = 0


class _LeanFrameBuffer(FrameBuffer):  # type: ignore[misc]
    """h2's FrameBuffer without one of its copies (a frame body is parsed from a view of the buffer instead of a
    slice copy; hyperframe copies DATA payloads out of the view itself), and with the header block bounded."""

    def __init__(self, server: bool, max_header_block: int) -> None:
        super().__init__(server=server)
        self.max_header_block = max_header_block
        self._block_bytes = 0  # payload bytes of the header block being received

    def __next__(self) -> Frame:
        data = self._data
        if len(data) < 9:
            raise StopIteration
        try:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        except (InvalidDataError, InvalidFrameError) as err:
            raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        # Checked before the body arrives: the peer cannot make us buffer a frame or a header block we refuse.
        if length > self.max_frame_size:
            raise FrameTooLargeError(f"Received overlong frame: length {length}, max {self.max_frame_size}")
        kind = type(frame)
        if kind in _HEADER_BLOCK_FRAMES:
            block = length + (self._block_bytes if self._headers_buffer else 0)
            if block > self.max_header_block:
                raise DenialOfServiceError(f"header block of more than {self.max_header_block} bytes")
        if len(data) < length + 9:
            raise StopIteration
        view = memoryview(data)
        body = view[9 : 9 + length]
        try:
            frame.parse_body(body)
        except InvalidDataError as err:
            raise ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise FrameDataMissingError("Frame data missing or invalid") from err
        finally:
            body.release()
            view.release()
        del data[: 9 + length]
        if kind in _HEADER_BLOCK_FRAMES:
            self._block_bytes = block
        new_frame = self._update_header_buffer(frame)
        return new_frame if new_frame is not None else self.__next__()


class _GracefulGoawayStateMachine(H2ConnectionStateMachine):  # type: ignore[misc]
    """h2 moves a connection to CLOSED on any GOAWAY, sent or received, after which even existing streams may not
    send or receive DATA. HTTP/2 (RFC 9113 §6.8) lets streams below the GOAWAY's last stream id run to completion,
    and drain depends on it (ztunnel sends GOAWAY when the drain starts, then serves open streams until the deadline).
    Here a GOAWAY leaves an open (or not yet used) connection open; the proxy itself stops opening or accepting new
    streams, and closes after a PING round trip once no stream is left (proxy rules, protocols/hbone_conn.py). A
    GOAWAY with an error still ends the connection (h2 raises, the proxy closes the transport)."""

    _transitions: ClassVar[dict[Any, Any]] = {
        **H2ConnectionStateMachine._transitions,
        **{
            (state, event): (None, state)
            for state in (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
            for event in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY)
        },
    }


class _AdvertisedSettings(Settings):  # type: ignore[misc]
    """Our settings as we send them. h2 would enforce SETTINGS_MAX_CONCURRENT_STREAMS itself, as a connection error;
    LeanH2Connection enforces it per stream, so h2's own check sees no limit."""

    @property
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


_SENDING_STREAM_STATES = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})
_RECEIVING_STREAM_STATES = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
_OPEN_CONNECTION_STATES = frozenset({ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN})


class LeanH2Connection(H2Connection):  # type: ignore[misc]
    """H2Connection whose output is a list of chunks (see the module doc), with the bounds above."""

    def __init__(self, config: H2Configuration, max_header_list: int) -> None:
        super().__init__(config)
        self._chunks: list[bytes] = []
        self.incoming_buffer = _LeanFrameBuffer(server=not config.client_side, max_header_block=max_header_list)
        self.state_machine = _GracefulGoawayStateMachine()

    @property
    def stream_limit(self) -> int:
        """The concurrent streams our SETTINGS let the peer open."""
        limit: int = self.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS]
        return limit

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        chunks = self._chunks
        for frame in frames:
            if type(frame) is DataFrame and "PADDED" not in frame.flags:
                payload = frame.data
                size = len(payload)
                flags = _END_STREAM if "END_STREAM" in frame.flags else 0
                chunks.append(_DATA_HEADER.pack(size >> 8, size & 0xFF, 0, flags, frame.stream_id))
                if size:
                    chunks.append(payload)
            else:
                chunks.append(frame.serialize())

    def send_whole_data(self, stream_id: int, data: bytes) -> bool:
        """The relay's common case, without h2's per-frame objects: `data` as one DATA frame (no END_STREAM) if the
        stream is open for sending and the windows and frame size allow it; False leaves everything untouched (use
        send_data). The same accounting as h2's send_data: for SEND_DATA in these states h2's connection and stream
        state machines only stay where they are."""
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or stream.state_machine.state not in _SENDING_STREAM_STATES
            or self.state_machine.state not in _OPEN_CONNECTION_STATES
            or size > self.max_outbound_frame_size
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
        ):
            return False
        self.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        self._chunks.append(_DATA_HEADER.pack(size >> 8, size & 0xFF, 0, 0, stream_id))
        if size:
            self._chunks.append(data)
        return True

    def _receive_frame(self, frame: Frame) -> list[Any]:
        """DATA without flags on an open stream (the relay's common case) is accounted and turned into its
        DataReceived event here; every other frame takes h2's path. The same checks and effects as h2's: both flow
        control windows consumed (raising FlowControlError past them), the body length tracked, and RECV_DATA is a
        state machine no-op for these states apart from creating the event."""
        if type(frame) is DataFrame and not len(frame.flags):
            stream = self.streams.get(frame.stream_id)
            if (
                stream is not None
                and stream.state_machine.state in _RECEIVING_STREAM_STATES
                and self.state_machine.state in _OPEN_CONNECTION_STATES
                and stream._expected_content_length is None
            ):
                data = frame.data
                size = len(data)
                self._inbound_flow_control_window_manager.window_consumed(size)
                stream._inbound_window_manager.window_consumed(size)
                stream._actual_content_length += size
                return [DataReceived(stream_id=frame.stream_id, data=data, flow_controlled_length=size)]
        events: list[Any] = super()._receive_frame(frame)
        return events

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Any]]:
        """A new stream beyond the limit is opened as h2 opens any (its id checked, its headers decoded so that
        HPACK stays in step with the peer) and reset at once with REFUSED_STREAM; the peer may open it again later."""
        over = (
            not self.config.client_side
            and frame.stream_id not in self.streams
            and self.open_inbound_streams >= self.stream_limit
        )
        result: tuple[list[Frame], list[Any]] = super()._receive_headers_frame(frame)
        if not over:
            return result
        frames = result[0] + self.streams[frame.stream_id].reset_stream(ErrorCodes.REFUSED_STREAM)
        return frames, [StreamRefused(stream_id=frame.stream_id)]

    def _receive_goaway_frame(self, frame: Frame) -> tuple[list[Frame], list[Any]]:
        """h2 empties the outbound buffer on a GOAWAY because it would move to CLOSED. Here the connection stays open
        (`_GracefulGoawayStateMachine`), so what was queued before the GOAWAY arrived (relayed DATA not flushed yet,
        WINDOW_UPDATEs, END_STREAMs of streams that go on) must still be sent: dropping it lost bytes mid-stream and
        the stream stalled until the drain deadline (docs/e2e.md finding 9)."""
        chunks, first = self._chunks, self.__dict__["_data_to_send"]
        result: tuple[list[Frame], list[Any]] = super()._receive_goaway_frame(frame)
        self._chunks, self.__dict__["_data_to_send"] = chunks + self._chunks, first + self.__dict__["_data_to_send"]
        return result

    def queue_raw(self, frame: bytes) -> None:
        """A serialized frame h2 has no API for (an extension frame), in order with what h2 queued."""
        self._chunks.append(frame)

    def chunks_to_send(self) -> list[bytes]:
        """Everything queued for the wire, in order, without joining (for `transport.writelines`)."""
        out = self._chunks
        self._chunks = []
        first: bytearray = self.__dict__["_data_to_send"]  # preamble + first SETTINGS (initiate_connection)
        if first:
            out.insert(0, bytes(first))
            self.__dict__["_data_to_send"] = bytearray()
        return out

    def data_to_send(self, amount: int | None = None) -> bytes:
        if amount is not None:
            raise ValueError("LeanH2Connection.data_to_send: use chunks_to_send() or no amount")
        return b"".join(self.chunks_to_send())

    def clear_outbound_data_buffer(self) -> None:
        super().clear_outbound_data_buffer()
        self._chunks = []


def new_connection(client_side: bool) -> LeanH2Connection:
    """An HTTP/2 connection with ztunnel's settings (§3.3), preamble and SETTINGS already queued for sending."""
    max_header_list = hbone.CLIENT_MAX_HEADER_LIST if client_side else hbone.SERVER_MAX_HEADER_LIST
    # What we send is built by hbone.connect_headers / response_headers alone, lower-case bytes with the pseudo-headers
    # first, so h2's outbound normalization and validation (a chain of generators per header, ~4 % of a new
    # connection) has nothing to do; tests/unit/test_hbone.py holds those builders to h2's checks. What arrives is
    # still validated.
    config = H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = LeanH2Connection(config, max_header_list)
    settings: dict[SettingCodes | int, int] = {
        SettingCodes.INITIAL_WINDOW_SIZE: hbone.STREAM_WINDOW,
        SettingCodes.MAX_FRAME_SIZE: hbone.FRAME_SIZE,
        SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
    }
    if client_side:
        settings[SettingCodes.ENABLE_PUSH] = 0
    else:
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = hbone.SERVER_MAX_CONCURRENT_STREAMS
    # Initial values (not update()): they are in force from our first SETTINGS frame, before the peer's ACK.
    conn.local_settings = _AdvertisedSettings(client=client_side, initial_values=settings)
    conn.max_inbound_frame_size = hbone.FRAME_SIZE
    conn.encoder = PlainEncoder()
    conn.initiate_connection()
    conn.increment_flow_control_window(hbone.CONNECTION_WINDOW - hbone.DEFAULT_H2_WINDOW)
    # h2 applies our header-list limit only once the peer ACKs; enforce it from the first HEADERS frame.
    conn.decoder.max_header_list_size = max_header_list
    return conn

"""A frame factory for HTTP/2 tests (as h2's own tests have): exact frames, including the ones a well-behaved client
library refuses to send (streams past the peer's limit, header blocks that never end, resets in bulk)."""

from __future__ import annotations

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class FrameFactory:
    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def preface(self, settings: dict[int, int] | None = None) -> bytes:
        """A client's connection preface: the magic and its first SETTINGS."""
        return PREFACE + self.settings(settings or {})

    def settings(self, values: dict[int, int] | None = None, ack: bool = False) -> bytes:
        frame = SettingsFrame(0)
        if ack:
            frame.flags.add("ACK")
        else:
            frame.settings = dict(values or {})
        return bytes(frame.serialize())

    def headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False, end_headers: bool = True
    ) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(headers)
        if end_stream:
            frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return bytes(frame.serialize())

    @staticmethod
    def raw_headers(stream_id: int, block: bytes, end_headers: bool) -> bytes:
        """A HEADERS frame carrying `block` as is (a header block fragment)."""
        return _fragment(HeadersFrame(stream_id), block, end_headers)

    @staticmethod
    def continuation(stream_id: int, block: bytes, end_headers: bool = False) -> bytes:
        return _fragment(ContinuationFrame(stream_id), block, end_headers)

    @staticmethod
    def frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
        """Only the 9-byte header of a frame (its body never follows)."""
        return length.to_bytes(3, "big") + bytes([frame_type, flags]) + stream_id.to_bytes(4, "big")

    @staticmethod
    def data(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
        frame = DataFrame(stream_id)
        frame.data = payload
        if end_stream:
            frame.flags.add("END_STREAM")
        return bytes(frame.serialize())

    @staticmethod
    def rst_stream(stream_id: int, error_code: int = 8) -> bytes:  # 8: CANCEL
        frame = RstStreamFrame(stream_id)
        frame.error_code = error_code
        return bytes(frame.serialize())

    @staticmethod
    def ping(data: bytes, ack: bool = False) -> bytes:
        frame = PingFrame(0)
        frame.opaque_data = data
        if ack:
            frame.flags.add("ACK")
        return bytes(frame.serialize())

    @staticmethod
    def goaway(last_stream_id: int, error_code: int = 0) -> bytes:
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = error_code
        return bytes(frame.serialize())

    @staticmethod
    def window_update(stream_id: int, increment: int) -> bytes:
        frame = WindowUpdateFrame(stream_id)
        frame.window_increment = increment
        return bytes(frame.serialize())

    @classmethod
    def extension(cls, stream_id: int, frame_type: int, flags: int, body: bytes) -> bytes:
        return cls.frame_header(len(body), frame_type, flags, stream_id) + body


def _fragment(frame: HeadersFrame | ContinuationFrame, block: bytes, end_headers: bool) -> bytes:
    frame.data = block
    if end_headers:
        frame.flags.add("END_HEADERS")
    return bytes(frame.serialize())


def parse(data: bytes) -> list[Frame]:
    """Every complete frame in `data` (what one side sent)."""
    frames: list[Frame] = []
    view = memoryview(data)
    if bytes(view[: len(PREFACE)]) == PREFACE:
        view = view[len(PREFACE) :]
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


CONNECT = [
    (b":method", b"CONNECT"),
    (b":authority", b"10.0.0.2:8080"),
    (b"forwarded", b'for="10.0.0.1:5000"'),
    (b"traceparent", b"00-00000000000000000000000000000000-0000000000000000-00"),
]


class FrameReader:
    """Frames out of a byte stream, as they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self._buffer[:9])))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(self._buffer[9 : 9 + length])))
            del self._buffer[: 9 + length]
            frames.append(frame)
        return frames

"""HBONE decisions, sans-IO, on top of h2's own sans-IO H2Connection (reference/ztunnel.md §3).

Client side: the CONNECT request (`:authority ip:port`, `forwarded`, `baggage`, `traceparent`). Server side: the
validation of a CONNECT and the status ztunnel answers (200/400/401/503). Both sides: HTTP/2 settings of §3.3. No
sockets, no clock, no randomness here: callers pass random bytes in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.events import DataReceived
from h2.exceptions import FrameDataMissingError, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import StreamState
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import DataFrame, Frame

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
ILLEGAL_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})

KIB = 1024
MIB = 1024 * KIB
STREAM_WINDOW = 4 * MIB
CONNECTION_WINDOW = 16 * MIB
FRAME_SIZE = 1 * MIB
CLIENT_MAX_HEADER_LIST = 16 * KIB
SERVER_MAX_HEADER_LIST = 64 * KIB
SERVER_MAX_CONCURRENT_STREAMS = 200
CLIENT_MAX_STREAMS_PER_CONNECTION = 100
PING_INTERVAL = 10.0
PING_TIMEOUT = 20.0
CLOSE_ROUND_TRIP_TIMEOUT = 1.0  # a connection going away waits this long at most for its last PING's ACK
DEFAULT_H2_WINDOW = 65535

Headers = list[tuple[bytes, bytes]]


_DATA_HEADER = struct.Struct("!HBBBL")
_END_STREAM = 0x1


class _LeanFrameBuffer(FrameBuffer):  # type: ignore[misc]  # h2 is untyped for mypy here
    """h2's FrameBuffer without one of its copies: a frame body is parsed from a view of the buffer instead of a
    slice copy (hyperframe copies DATA payloads out of the view itself). Same checks, same frames."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) < 9:
            raise StopIteration
        try:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        except (InvalidDataError, InvalidFrameError) as err:
            raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        if len(data) < length + 9:
            raise StopIteration
        self._validate_frame_length(length)
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
        new_frame = self._update_header_buffer(frame)
        return new_frame if new_frame is not None else self.__next__()


class _GracefulGoawayStateMachine(H2ConnectionStateMachine):  # type: ignore[misc]
    """h2 moves a connection to CLOSED on any GOAWAY, sent or received, after which even existing streams may not
    send or receive DATA. HTTP/2 (RFC 9113 §6.8) lets streams below the GOAWAY's last stream id run to completion,
    and drain depends on it (ztunnel sends GOAWAY when the drain starts, then serves open streams until the deadline).
    Here a GOAWAY leaves an open connection open; the proxy itself stops opening or accepting new streams. A GOAWAY
    with an error still ends the connection (h2 raises, the proxy closes the transport)."""

    _transitions: ClassVar[dict[Any, Any]] = {
        **H2ConnectionStateMachine._transitions,
        **{
            (state, event): (None, state)
            for state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
            for event in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY)
        },
    }


_SENDING_STREAM_STATES = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})
_RECEIVING_STREAM_STATES = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
_OPEN_CONNECTION_STATES = frozenset({ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN})


class HboneConnection(H2Connection):  # type: ignore[misc]
    """H2Connection whose output is a list of chunks: a DATA frame goes out as its 9-byte header plus the payload
    object itself, so a relayed chunk is not copied three times before encryption (h2 would serialize, join into a
    bytearray and copy that into bytes). Everything else is h2's own behaviour."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self._chunks: list[bytes] = []
        self.incoming_buffer = _LeanFrameBuffer(server=not config.client_side)
        self.state_machine = _GracefulGoawayStateMachine()

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
            raise ValueError("HboneConnection.data_to_send: use chunks_to_send() or no amount")
        return b"".join(self.chunks_to_send())

    def clear_outbound_data_buffer(self) -> None:
        super().clear_outbound_data_buffer()
        self._chunks = []


def new_connection(client_side: bool) -> HboneConnection:
    """An H2Connection with ztunnel's settings (§3.3), preamble and SETTINGS already queued in data_to_send()."""
    conn = HboneConnection(
        H2Configuration(client_side=client_side, header_encoding=None, validate_inbound_headers=True)
    )
    settings: dict[SettingCodes | int, int] = {
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_FRAME_SIZE: FRAME_SIZE,
        SettingCodes.MAX_HEADER_LIST_SIZE: CLIENT_MAX_HEADER_LIST if client_side else SERVER_MAX_HEADER_LIST,
    }
    if client_side:
        settings[SettingCodes.ENABLE_PUSH] = 0
    else:
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = SERVER_MAX_CONCURRENT_STREAMS
    # Initial values (not update()): they are in force from our first SETTINGS frame, before the peer's ACK.
    conn.local_settings = Settings(client=client_side, initial_values=settings)
    conn.max_inbound_frame_size = FRAME_SIZE
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_H2_WINDOW)
    # h2 applies our header-list limit only once the peer ACKs; enforce it from the first HEADERS frame.
    conn.decoder.max_header_list_size = settings[SettingCodes.MAX_HEADER_LIST_SIZE]
    return conn


def format_authority(ip: str, port: int) -> str:
    """`ip:port`, IPv6 as `[addr]:port` (compressed form)."""
    if ":" in ip:
        return f"[{ipaddress.IPv6Address(ip)}]:{port}"
    return f"{ip}:{port}"


def parse_authority(text: str) -> tuple[str, int] | None:
    """(ip, port) of an `ip:port` / `[v6]:port` authority, or None if malformed (hostnames are malformed here)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            return None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if text.startswith("[") != (addr.version == 6):
        return None
    return str(addr), port


def traceparent(random16: bytes, random8: bytes) -> str:
    """`00-<32 hex trace id>-<16 hex parent id>-00`, from caller-supplied random bytes."""
    return f"00-{random16.hex()}-{random8.hex()}-00"


@dataclasses.dataclass(frozen=True)
class BaggageInfo:
    cluster: str = ""
    namespace: str = ""
    workload_type: str = ""  # deployment, pod, …
    workload_name: str = ""
    service_name: str = ""
    service_version: str = ""
    region: str = ""
    zone: str = ""


def baggage(info: BaggageInfo) -> str:
    """ztunnel's baggage value; empty parts omitted (§3.2)."""
    parts = [
        ("k8s.cluster.name", info.cluster),
        ("k8s.namespace.name", info.namespace),
        (f"k8s.{info.workload_type or 'pod'}.name", info.workload_name),
        ("service.name", info.service_name),
        ("service.version", info.service_version),
        ("cloud.region", info.region),
        ("cloud.availability_zone", info.zone),
    ]
    return ",".join(f"{k}={v}" for k, v in parts if v)


def forwarded(src_ip: str, src_port: int, service_host: str | None = None) -> str:
    value = f'for="{format_authority(src_ip, src_port)}"'
    if service_host:
        value += f";host={service_host}"
    return value


def connect_headers(
    authority: str,
    *,
    forwarded_for: str,
    baggage_value: str,
    traceparent_value: str,
) -> Headers:
    """Headers of an HBONE CONNECT (HTTP/2 CONNECT carries only :method and :authority pseudo-headers)."""
    headers: Headers = [
        (b":method", b"CONNECT"),
        (b":authority", authority.encode()),
        (b"forwarded", forwarded_for.encode()),
        (b"traceparent", traceparent_value.encode()),
    ]
    if baggage_value:
        headers.append((b"baggage", baggage_value.encode()))
    return headers


def status_of(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else None
    return None


def response_headers(status: int, baggage_value: str = "") -> Headers:
    headers: Headers = [(b":status", str(status).encode())]
    if baggage_value and status == 200:
        headers.append((b"baggage", baggage_value.encode()))
    return headers


@dataclasses.dataclass(frozen=True)
class ConnectRequest:
    """A valid CONNECT, as the server sees it."""

    ip: str
    port: int
    authority: str
    forwarded: str = ""
    baggage: str = ""
    traceparent: str = ""


@dataclasses.dataclass(frozen=True)
class Reject:
    """Answer `status` and do not connect; `reason` goes into the access log's error."""

    status: int
    reason: str
    response_flags: str = "-"


def parse_connect(headers: Sequence[tuple[bytes, bytes]], arrived_ip: str | None) -> ConnectRequest | Reject:
    """Validate a CONNECT received on a connection that arrived at `arrived_ip` (None: do not check, direct mode)."""
    fields: dict[bytes, bytes] = {}
    for name, value in headers:
        fields.setdefault(name, value)
    method = fields.get(b":method", b"")
    if method != b"CONNECT":
        return Reject(400, f"expected CONNECT, got {method.decode(errors='replace')!r}")
    authority_raw = fields.get(b":authority", b"").decode(errors="replace")
    parsed = parse_authority(authority_raw)
    if parsed is None:
        return Reject(400, f"bad authority {authority_raw!r}")
    ip, port = parsed
    if port in ILLEGAL_PORTS:
        return Reject(400, f"illegal port {port}")
    if arrived_ip is not None and arrived_ip != ip and ipaddress.ip_address(arrived_ip) != ipaddress.ip_address(ip):
        return Reject(400, f"authority ip {ip} does not match the connection's destination {arrived_ip}")
    return ConnectRequest(
        ip=ip,
        port=port,
        authority=authority_raw,
        forwarded=fields.get(b"forwarded", b"").decode(errors="replace"),
        baggage=fields.get(b"baggage", b"").decode(errors="replace"),
        traceparent=fields.get(b"traceparent", b"").decode(errors="replace"),
    )


def forwarded_for(value: str) -> tuple[str, int] | None:
    """The original client `ip:port` from a `forwarded: for="…"` value, if well formed."""
    for part in value.split(";"):
        key, _, raw = part.strip().partition("=")
        if key.lower() == "for":
            return parse_authority(raw.strip().strip('"'))
    return None


# Statuses of the later inbound checks, with the reasons the access log shows.
UNKNOWN_WORKLOAD = Reject(503, "unknown destination workload")
UPSTREAM_CONNECT_FAILED_STATUS = 503
DENIED_STATUS = 401

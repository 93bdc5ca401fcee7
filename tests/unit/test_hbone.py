"""HBONE request building and validation, with bytes through real h2 connections (no sockets)."""

from __future__ import annotations

import h2.events
import h2.exceptions
import pytest
from h2.connection import H2Connection

from pyztunnel.protocols import h2wire, hbone, resume


def pair() -> tuple[H2Connection, H2Connection]:
    client, server = h2wire.new_connection(True), h2wire.new_connection(False)
    exchange(client, server)
    return client, server


def exchange(client: H2Connection, server: H2Connection) -> tuple[list[h2.events.Event], list[h2.events.Event]]:
    """Move bytes both ways until quiet; return (client events, server events)."""
    c_events: list[h2.events.Event] = []
    s_events: list[h2.events.Event] = []
    for _ in range(10):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            break
        if to_server:
            s_events += server.receive_data(to_server)
        if to_client:
            c_events += client.receive_data(to_client)
    return c_events, s_events


def test_settings_as_ztunnel() -> None:
    client, server = pair()
    assert server.remote_settings.initial_window_size == hbone.STREAM_WINDOW
    assert server.remote_settings.max_frame_size == hbone.FRAME_SIZE
    assert server.remote_settings.max_header_list_size == hbone.CLIENT_MAX_HEADER_LIST
    assert server.remote_settings.enable_push == 0
    assert client.remote_settings.max_concurrent_streams == hbone.SERVER_MAX_CONCURRENT_STREAMS
    assert client.remote_settings.max_header_list_size == hbone.SERVER_MAX_HEADER_LIST
    assert client.remote_settings.initial_window_size == hbone.STREAM_WINDOW
    # connection-level windows of 16 MiB in both directions
    assert client.outbound_flow_control_window == hbone.CONNECTION_WINDOW
    assert server.outbound_flow_control_window == hbone.CONNECTION_WINDOW
    assert client.max_outbound_frame_size == hbone.FRAME_SIZE


def test_connect_round_trip_over_h2() -> None:
    client, server = pair()
    headers = hbone.connect_headers(
        hbone.format_authority("10.1.0.7", 8080),
        forwarded_for=hbone.forwarded("10.1.0.5", 40000, "cart.shop.svc.cluster.local"),
        baggage_value=hbone.baggage(hbone.BaggageInfo(cluster="c1", namespace="shop", workload_name="web-1")),
        traceparent_value=hbone.traceparent(bytes(range(16)), bytes(range(8))),
    )
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, headers)
    _, events = exchange(client, server)
    (received,) = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    request = hbone.parse_connect(received.headers, "10.1.0.7")
    assert isinstance(request, hbone.ConnectRequest)
    assert (request.ip, request.port, request.authority) == ("10.1.0.7", 8080, "10.1.0.7:8080")
    assert request.forwarded == 'for="10.1.0.5:40000";host=cart.shop.svc.cluster.local'
    assert hbone.forwarded_for(request.forwarded) == ("10.1.0.5", 40000)
    assert request.baggage == "k8s.cluster.name=c1,k8s.namespace.name=shop,k8s.pod.name=web-1"
    assert request.traceparent == "00-000102030405060708090a0b0c0d0e0f-0001020304050607-00"
    server.send_headers(received.stream_id, hbone.response_headers(200, "k8s.namespace.name=shop"))
    events, _ = exchange(client, server)
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert hbone.status_of(response.headers) == 200


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("10.0.0.1:80", ("10.0.0.1", 80)),
        ("[fd00::1]:8080", ("fd00::1", 8080)),
        ("fd00::1:8080", None),
        ("[10.0.0.1]:80", None),
        ("host.example:80", None),
        ("10.0.0.1", None),
        ("10.0.0.1:0", None),
        ("10.0.0.1:65536", None),
        ("10.0.0.1:-1", None),
        ("10.0.0.1:", None),
        ("", None),
        ("[fd00::1]8080", None),
    ],
)
def test_parse_authority(authority: str, expected: tuple[str, int] | None) -> None:
    assert hbone.parse_authority(authority) == expected


def test_format_authority() -> None:
    assert hbone.format_authority("fd00::0001", 80) == "[fd00::1]:80"
    assert hbone.format_authority("10.0.0.1", 80) == "10.0.0.1:80"


@pytest.mark.parametrize(
    ("headers", "arrived", "status", "reason"),
    [
        ([(b":method", b"GET"), (b":authority", b"10.0.0.1:80")], "10.0.0.1", 400, "expected CONNECT"),
        ([(b":method", b"CONNECT"), (b":authority", b"nope")], "10.0.0.1", 400, "bad authority"),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:15008")], "10.0.0.1", 400, "illegal port 15008"),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:15001")], "10.0.0.1", 400, "illegal port 15001"),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:15006")], "10.0.0.1", 400, "illegal port 15006"),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")], "10.0.0.1", 400, "does not match"),
    ],
)
def test_server_rejects(headers: list[tuple[bytes, bytes]], arrived: str, status: int, reason: str) -> None:
    result = hbone.parse_connect(headers, arrived)
    assert isinstance(result, hbone.Reject)
    assert result.status == status
    assert reason in result.reason


def test_direct_mode_skips_ip_check() -> None:
    result = hbone.parse_connect([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")], None)
    assert isinstance(result, hbone.ConnectRequest)


def test_oversized_headers_rejected_by_server() -> None:
    client, server = pair()
    stream_id = client.get_next_available_stream_id()
    # h2 lets a client send what it likes; the server's 64 KiB header-list limit must stop it.
    big = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"x-big", b"a" * (70 * 1024))]
    client.send_headers(stream_id, big)
    with pytest.raises(h2.exceptions.DenialOfServiceError):
        server.receive_data(client.data_to_send())


def test_baggage_omits_empty() -> None:
    assert hbone.baggage(hbone.BaggageInfo()) == ""
    value = hbone.baggage(hbone.BaggageInfo(namespace="a", workload_type="deployment", workload_name="w", zone="z"))
    assert value == "k8s.namespace.name=a,k8s.deployment.name=w,cloud.availability_zone=z"


def test_lean_output_is_byte_identical_to_h2() -> None:
    """LeanH2Connection writes DATA frames as header + payload chunks: the bytes on the wire are h2's own (with the
    same header encoder on both: hpack_plain's blocks are not hpack's)."""
    from h2.config import H2Configuration

    from pyztunnel.protocols.hpack_plain import PlainEncoder

    lean = h2wire.new_connection(True)
    plain = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    plain.encoder = PlainEncoder()
    plain.local_settings = lean.local_settings
    plain.initiate_connection()
    plain.increment_flow_control_window(hbone.CONNECTION_WINDOW - hbone.DEFAULT_H2_WINDOW)
    headers = hbone.connect_headers("10.0.0.1:80", forwarded_for="", baggage_value="", traceparent_value="t")
    out_lean, out_plain = [lean.data_to_send()], [plain.data_to_send()]
    for conn, out in ((lean, out_lean), (plain, out_plain)):
        conn.send_headers(1, headers)
        conn.send_data(1, b"payload" * 1000)
        conn.send_data(1, b"")
        conn.send_data(1, b"last", end_stream=True)
        out.append(conn.data_to_send())
    assert b"".join(out_lean) == b"".join(out_plain)
    chunks = h2wire.new_connection(True).chunks_to_send()
    assert chunks[0].startswith(b"PRI * HTTP/2.0")  # preamble + SETTINGS first, then the WINDOW_UPDATE


def test_whole_data_fast_path_equals_send_data() -> None:
    """send_whole_data writes the same bytes and does the same flow-control accounting as h2's send_data, and
    refuses (changing nothing) whatever it cannot do: over the window, over the frame size, a closed stream."""
    fast, slow = pair(), pair()
    headers = hbone.connect_headers("10.0.0.1:80", forwarded_for="", baggage_value="", traceparent_value="t")
    for client, server in (fast, slow):
        client.send_headers(1, headers)
        exchange(client, server)
        server.send_headers(1, hbone.response_headers(200))
        exchange(client, server)
    payload = b"p" * 70000
    assert fast[0].send_whole_data(1, payload)
    slow[0].send_data(1, payload)
    wire = fast[0].data_to_send()
    assert wire == slow[0].data_to_send()
    assert fast[0].local_flow_control_window(1) == slow[0].local_flow_control_window(1)
    assert fast[0].outbound_flow_control_window == slow[0].outbound_flow_control_window
    window = fast[0].local_flow_control_window(1)
    assert not fast[0].send_whole_data(1, b"x" * (window + 1))
    assert not fast[0].send_whole_data(1, b"x" * (hbone.FRAME_SIZE + 1))
    assert not fast[0].send_whole_data(3, b"x")  # no such stream
    assert fast[0].local_flow_control_window(1) == window
    events = fast[1].receive_data(wire)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == payload
    fast[0].end_stream(1)
    assert not fast[0].send_whole_data(1, b"x")  # half-closed (local): h2 would refuse too


def test_data_receive_fast_path_matches_h2() -> None:
    """Flagless DATA frames handled by LeanH2Connection give the events and windows plain h2 gives."""
    from h2.config import H2Configuration

    lean_client, lean_server = pair()
    plain_server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    plain_server.local_settings = lean_server.local_settings
    plain_server.initiate_connection()
    plain_server.increment_flow_control_window(hbone.CONNECTION_WINDOW - hbone.DEFAULT_H2_WINDOW)
    plain_server.data_to_send()
    headers = hbone.connect_headers("10.0.0.1:80", forwarded_for="", baggage_value="", traceparent_value="t")
    lean_client.send_headers(1, headers)
    for i in range(5):
        lean_client.send_data(1, bytes([i]) * (1000 * (i + 1)))
    lean_client.send_data(1, b"end", end_stream=True)
    wire = h2wire.new_connection(True).data_to_send() + lean_client.data_to_send()
    lean_events = lean_server.receive_data(wire[len(h2wire.new_connection(True).data_to_send()) :])
    plain_events = plain_server.receive_data(wire)

    def shape(events: list[h2.events.Event]) -> list[tuple[str, object, object]]:
        return [
            (type(e).__name__, getattr(e, "data", None), getattr(e, "flow_controlled_length", None)) for e in events
        ]

    def data_only(events: list[h2.events.Event]) -> list[tuple[str, object, object]]:
        return [x for x in shape(events) if x[0] in ("DataReceived", "StreamEnded")]

    assert data_only(lean_events) == data_only(plain_events)
    assert lean_server.inbound_flow_control_window == plain_server.inbound_flow_control_window
    assert (
        lean_server._get_stream_by_id(1).inbound_flow_control_window
        == plain_server._get_stream_by_id(1).inbound_flow_control_window
    )
    # More than the 4 MiB stream window in one DATA frame: a connection error, as in h2.
    client, server = pair()
    client.send_headers(1, headers)
    exchange(client, server)
    size = hbone.STREAM_WINDOW + 1
    server.max_inbound_frame_size = size
    too_big = size.to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + b"z" * size
    with pytest.raises(h2.exceptions.FlowControlError):
        server.receive_data(too_big)


def test_lean_frame_buffer_parses_split_frames() -> None:
    client, server = pair()
    stream_id = client.get_next_available_stream_id()
    client.send_headers(
        stream_id, hbone.connect_headers("10.0.0.1:80", forwarded_for="", baggage_value="", traceparent_value="t")
    )
    client.send_data(stream_id, bytes(range(256)) * 4096, end_stream=True)
    wire = client.data_to_send()
    events = []
    for i in range(0, len(wire), 7777):  # arbitrary splits across frame boundaries
        events += server.receive_data(wire[i : i + 7777])
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == bytes(range(256)) * 4096
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_streams_continue_after_goaway() -> None:
    """A GOAWAY (either way) lets open streams finish, as RFC 9113 §6.8 and ztunnel's drain need."""
    client, server = pair()
    client.send_headers(
        1, hbone.connect_headers("10.0.0.1:80", forwarded_for="", baggage_value="", traceparent_value="t")
    )
    exchange(client, server)
    server.send_headers(1, hbone.response_headers(200))
    server.close_connection(last_stream_id=1)  # the server starts draining
    events, _ = exchange(client, server)
    assert any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == 0 for e in events)
    client.send_data(1, b"still flowing")
    server.send_data(1, b"both ways")
    c_events, s_events = exchange(client, server)
    assert [e.data for e in s_events if isinstance(e, h2.events.DataReceived)] == [b"still flowing"]
    assert [e.data for e in c_events if isinstance(e, h2.events.DataReceived)] == [b"both ways"]
    client.close_connection()  # and the client's own GOAWAY does not stop it either
    server.send_data(1, b"more", end_stream=True)
    c_events, _ = exchange(client, server)
    assert any(isinstance(e, h2.events.StreamEnded) for e in c_events)


@pytest.mark.parametrize("receiver", ["client", "server"])
def test_a_goaway_received_keeps_frames_queued_before_it(receiver: str) -> None:
    """docs/e2e.md finding 9: h2 empties the outbound buffer when a GOAWAY arrives; with the connection kept open,
    DATA queued for a stream that goes on (relayed bytes not flushed yet) must still be sent, not silently dropped."""
    client, server = pair()
    client.send_headers(
        1, hbone.connect_headers("10.0.0.1:80", forwarded_for="", baggage_value="", traceparent_value="t")
    )
    exchange(client, server)
    server.send_headers(1, hbone.response_headers(200))
    exchange(client, server)
    conn, peer = (client, server) if receiver == "client" else (server, client)
    assert conn.send_whole_data(1, b"fast path")  # queued by the relay, flushed at the end of the loop iteration
    conn.send_data(1, b"h2 path")
    peer.close_connection(last_stream_id=1)
    conn.receive_data(peer.data_to_send())  # the GOAWAY arrives before that flush
    events = peer.receive_data(conn.data_to_send())
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [b"fast path", b"h2 path"]


def test_what_we_send_passes_h2s_outbound_checks_we_switched_off() -> None:
    """new_connection turns off h2's outbound normalization and validation: the builders must already give what
    those would have passed unchanged (lower-case bytes names, pseudo-headers first, a CONNECT's two)."""
    from h2.utilities import HeaderValidationFlags, normalize_outbound_headers, validate_outbound_headers

    connect = hbone.connect_headers(
        hbone.format_authority("fd00::1", 8080),
        forwarded_for=hbone.forwarded("10.0.0.1", 43210, "svc.ns.svc.cluster.local"),
        baggage_value=hbone.baggage(hbone.BaggageInfo(namespace="a", workload_type="deployment", workload_name="w")),
        traceparent_value=hbone.traceparent(b"\x01" * 16, b"\x02" * 8),
    )
    connect.append((resume.STREAM_HEADER, b"0123456789abcdef"))
    for headers, flags in (
        (connect, HeaderValidationFlags(True, False, False, False)),
        (hbone.response_headers(200, "k8s.namespace.name=a"), HeaderValidationFlags(False, False, True, False)),
        (hbone.response_headers(503), HeaderValidationFlags(False, False, True, False)),
    ):
        checked = list(validate_outbound_headers(normalize_outbound_headers(headers, flags), flags))
        assert [(bytes(n), bytes(v)) for n, v in checked] == headers

"""protocols/h2read.FrameReader against h2's own receive path: the same bytes in, the same payloads, events, windows and
errors out, however the bytes are split into reads (sans-IO, real h2 connections, no sockets)."""

from __future__ import annotations

import random
from typing import Any

import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from pyztunnel.protocols import h2wire, hbone
from pyztunnel.protocols.h2read import RECEIVE_BUFFER, SMALL_BUFFER, FrameReader


def feed(reader: FrameReader, data: bytes, piece: int) -> list[Any]:
    """Push `data` through get_buffer/buffer_updated in reads of at most `piece` bytes; payload views are copied out
    at once, as a consumer that writes them to a socket does."""
    out: list[Any] = []
    i = 0
    while i < len(data):
        buf = reader.get_buffer(piece)
        n = min(len(buf), piece, len(data) - i)
        buf[:n] = data[i : i + n]
        for item in reader.buffer_updated(n):
            out.append((item[0], bytes(item[1])) if type(item) is tuple else item)
        i += n
    return out


def payloads(items: list[Any]) -> dict[int, bytes]:
    """Stream id → all DATA payload bytes, from chunks (reader) or DataReceived events (h2)."""
    out: dict[int, bytes] = {}
    for item in items:
        if type(item) is tuple:
            out[item[0]] = out.get(item[0], b"") + item[1]
        elif isinstance(item, h2.events.DataReceived):
            out[item.stream_id] = out.get(item.stream_id, b"") + bytes(item.data or b"")
    return out


def kinds(items: list[Any]) -> list[str]:
    """The events other than data, in order (a reader's chunks stand for h2's DataReceived)."""
    return [type(i).__name__ for i in items if type(i) is not tuple and not isinstance(i, h2.events.DataReceived)]


def client_bytes(sizes: tuple[int, ...] = (1, 80, 250, 16384, 70000, 5, 262144, 3)) -> tuple[bytes, bytes]:
    """(the client's preamble + SETTINGS + two CONNECTs, the streams' traffic): DATA of every size across both streams,
    interleaved with PING, WINDOW_UPDATE and an unknown extension frame, ending one stream."""
    client = h2wire.new_connection(True)
    client.receive_data(h2wire.new_connection(False).data_to_send())  # a server's SETTINGS and window: 4/16 MiB
    start = client.data_to_send()
    connect = hbone.connect_headers("10.0.0.2:80", forwarded_for="", baggage_value="", traceparent_value="x")
    for stream_id in (1, 3):
        client.send_headers(stream_id, connect)
    start += client.data_to_send()
    rng = random.Random(7)
    for size in sizes:
        for stream_id in (1, 3):
            client.send_data(stream_id, rng.randbytes(size))
        client.ping(b"12345678")
        client.increment_flow_control_window(1000)
    client.queue_raw(b"\x00\x00\x02\xb7\x00\x00\x00\x00\x01ab")  # an extension frame on stream 1
    client.send_data(1, b"padded", pad_length=10)  # PADDED: h2's path
    client.send_data(3, b"last", end_stream=True)
    return start, client.data_to_send()


def server_pair() -> tuple[Any, FrameReader, Any]:
    plain, ours = h2wire.new_connection(False), h2wire.new_connection(False)
    return plain, FrameReader(ours), ours


@pytest.mark.parametrize(
    ("piece", "sizes"),
    [(1, (1, 80, 250, 3)), (7, (1, 80, 250, 3)), (9, (80, 16384, 5)), (10, (80, 16384, 5))]
    + [(n, (1, 80, 250, 16384, 70000, 5, 262144, 3)) for n in (100, 16384 + 9, 65536, 300000, 1 << 20)],
)
def test_same_payloads_events_and_windows_as_h2_however_reads_are_split(piece: int, sizes: tuple[int, ...]) -> None:
    start, traffic = client_bytes(sizes)
    plain, reader, ours = server_pair()
    expected = plain.receive_data(start) + plain.receive_data(traffic)
    got = feed(reader, start, piece) + feed(reader, traffic, piece)
    assert payloads(got) == payloads(expected)
    assert kinds(got) == kinds(expected)
    assert "StreamEnded" in kinds(got) and "UnknownFrameReceived" in kinds(got)
    assert any(type(i) is tuple for i in got), "DATA took the fast path"
    window = ours._inbound_flow_control_window_manager.current_window_size
    assert window == plain._inbound_flow_control_window_manager.current_window_size
    for stream_id in (1, 3):
        mine, theirs = ours.streams[stream_id], plain.streams[stream_id]
        assert mine._inbound_window_manager.current_window_size == theirs._inbound_window_manager.current_window_size
        assert mine.state_machine.state == theirs.state_machine.state
    assert ours.data_to_send() == plain.data_to_send()  # the same PING ACKs and SETTINGS ACK


def test_reads_of_random_sizes() -> None:
    start, traffic = client_bytes()
    plain, reader, _ = server_pair()
    expected = payloads(plain.receive_data(start + traffic))
    rng = random.Random(3)
    data, got, i = start + traffic, [], 0
    while i < len(data):
        piece = rng.choice((1, 3, 9, 50, 4000, 16393, 100000))
        got += feed(reader, data[i : i + piece], piece)
        i += piece
    assert payloads(got) == expected


def test_a_lent_view_is_never_written_over() -> None:
    start, traffic = client_bytes()
    _, reader, _ = server_pair()
    feed(reader, start, 1 << 20)
    kept: list[tuple[memoryview, bytes]] = []
    i = 0
    while i < len(traffic):
        buf = reader.get_buffer(20000)
        n = min(len(buf), 20000, len(traffic) - i)
        buf[:n] = traffic[i : i + n]
        chunks = [item for item in reader.buffer_updated(n) if type(item) is tuple]
        if chunks and len(kept) < 40:
            kept += [(view, bytes(view)) for _, view in chunks]
            reader.lend()  # as a transport that keeps the view to send it later
        i += n
    assert kept and all(view == copy for view, copy in kept)


def test_flow_control_violation_is_h2s_error() -> None:
    start, _ = client_bytes()
    _, reader, ours = server_pair()
    feed(reader, start, 1 << 20)
    ours.data_to_send()
    too_much = DataFrame(1, data=b"x" * 1000)
    stream = ours.streams[1]
    stream._inbound_window_manager.current_window_size = 999
    with pytest.raises(h2.exceptions.FlowControlError):
        feed(reader, too_much.serialize(), 1 << 20)
    assert ours.data_to_send()[3] == 0x7  # GOAWAY(FLOW_CONTROL_ERROR) queued by h2


def test_an_oversized_frame_is_refused_at_its_header() -> None:
    start, _ = client_bytes()
    _, reader, ours = server_pair()
    feed(reader, start, 1 << 20)
    ours.data_to_send()
    header = (hbone.FRAME_SIZE + 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        feed(reader, header, 9)  # nothing of the body needed
    goaway = ours.data_to_send()
    assert goaway[3] == 0x7 and goaway[-4:] == (0x6).to_bytes(4, "big")  # GOAWAY(FRAME_SIZE_ERROR)


def test_data_inside_a_header_block_is_h2s_protocol_error() -> None:
    start, _ = client_bytes()
    plain, reader, _ = server_pair()
    feed(reader, start, 1 << 20)
    plain.receive_data(start)
    open_block = HeadersFrame(5, data=b"\x82", flags=()).serialize()  # no END_HEADERS: CONTINUATION must follow
    data = DataFrame(1, data=b"abc").serialize()
    with pytest.raises(h2.exceptions.ProtocolError):
        plain.receive_data(open_block + data)
    with pytest.raises(h2.exceptions.ProtocolError):
        feed(reader, open_block + data, 1 << 20)


def test_data_on_a_stream_h2_does_not_know_goes_to_h2() -> None:
    start, _ = client_bytes()
    plain, reader, ours = server_pair()
    plain.receive_data(start)
    feed(reader, start, 1 << 20)
    plain.data_to_send(), ours.data_to_send()
    unknown = DataFrame(9, data=b"abc").serialize()
    with pytest.raises(h2.exceptions.ProtocolError) as theirs:
        plain.receive_data(unknown)
    with pytest.raises(h2.exceptions.ProtocolError) as mine:
        feed(reader, unknown, 1 << 20)
    assert type(mine.value) is type(theirs.value)
    assert ours.data_to_send() == plain.data_to_send()


def test_the_buffer_is_as_large_as_the_reads_ask_and_trim_gives_a_large_one_back() -> None:
    start, traffic = client_bytes()
    plain, reader, _ = server_pair()
    expected = payloads(plain.receive_data(start + traffic))
    assert len(reader.get_buffer(300)) == SMALL_BUFFER  # small reads: the least (an idle connection's)
    got = feed(reader, start, 300)
    assert len(reader.get_buffer(200_000)) >= 200_000  # a big read (bulk): room for all of it
    got += feed(reader, traffic[:250_000], 200_000)
    assert len(reader.get_buffer(1 << 30)) <= RECEIVE_BUFFER  # never more than the most
    reader.trim()
    assert len(reader.get_buffer(300)) <= SMALL_BUFFER
    got += feed(reader, traffic[250_000:], 5000)  # a partial frame held across the trim is kept
    assert payloads(got) == expected


def test_trim_leaves_a_lent_buffer_alone() -> None:
    start, traffic = client_bytes()
    _, reader, _ = server_pair()
    feed(reader, start, 1 << 20)
    buf = reader.get_buffer(200_000)
    buf[:100_000] = traffic[:100_000]
    views = [item[1] for item in reader.buffer_updated(100_000) if type(item) is tuple]
    copies = [bytes(v) for v in views]
    reader.lend()
    reader.trim()
    feed(reader, traffic[100_000:], 5000)
    assert views and [bytes(v) for v in views] == copies

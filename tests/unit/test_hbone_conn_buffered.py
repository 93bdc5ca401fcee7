"""The HBONE connection's rules on the buffered receive path (`get_buffer`/`received`, what the proxy's shell uses):
the same decisions as `receive`, DATA of live streams as views of the receive buffer (`Chunk`s), reads split
anywhere."""

from __future__ import annotations

import h2.events
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, RstStreamFrame, WindowUpdateFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from pyztunnel.protocols import hbone
from pyztunnel.protocols.hbone_conn import Close, HboneConn, Limits, StreamFrame, StreamGone, StreamRequested
from tests.h2frames import CONNECT, FrameFactory, parse


def feed(conn: HboneConn, data: bytes, now: float, piece: int = 0) -> list[object]:
    """`data` written into the connection's receive buffer in reads of `piece` bytes (0: as much as fits, one read
    up to 256 KiB); a Chunk's view is copied out at once (valid until the next `get_buffer`), as (stream id, bytes)."""
    out: list[object] = []
    pos = 0
    while pos < len(data):
        buf = conn.get_buffer(piece or len(data) - pos)
        n = min(len(buf), len(data) - pos, piece or len(data))
        buf[:n] = data[pos : pos + n]
        pos += n
        for event in conn.received(n, now):
            out.append((event[0], bytes(event[1])) if type(event) is tuple else event)
    return out


def server(limits: Limits | None = None) -> tuple[HboneConn, FrameFactory]:
    conn = HboneConn(client_side=False, limits=limits)
    conn.start(0.0)
    factory = FrameFactory()
    feed(conn, factory.preface(), 0.0)
    conn.h2.data_to_send()
    return conn, factory


def of(kind: type, events: list[object]) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def chunks(events: list[object], stream_id: int) -> bytes:
    return b"".join(e[1] for e in events if type(e) is tuple and e[0] == stream_id)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 64), st.lists(st.integers(0, 20000), min_size=1, max_size=6))
def test_data_of_a_live_stream_comes_out_as_views_however_reads_are_split(piece: int, sizes: list[int]) -> None:
    conn, f = server()
    feed(conn, f.headers(1, CONNECT), 1.0)
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    wire = b"".join(f.data(1, p) for p in payloads) + f.data(1, b"last", end_stream=True)
    events = feed(conn, wire, 2.0, piece)
    # flagless DATA as Chunks, the END_STREAM frame through h2 (DataReceived + StreamEnded): bytes in order
    ended = of(h2.events.DataReceived, events)
    assert chunks(events, 1) + b"".join(e.data for e in ended) == b"".join(payloads) + b"last"  # type: ignore[attr-defined]
    assert len(of(h2.events.StreamEnded, events)) == 1
    # both windows consumed as h2 would: everything received counts until it is acknowledged
    consumed = sum(sizes) + 4
    assert conn.h2.inbound_flow_control_window == hbone.CONNECTION_WINDOW - consumed
    assert not of(Close, events)


def test_data_for_a_stream_no_longer_routed_hands_its_window_back() -> None:
    conn, f = server()
    feed(conn, f.headers(1, CONNECT), 1.0)
    conn.closed_stream(1, 2.0)
    conn.h2.data_to_send()
    assert feed(conn, b"".join(f.data(1, b"x" * hbone.MIB) for _ in range(3)), 3.0) == []
    updates = [fr for fr in parse(conn.h2.data_to_send()) if isinstance(fr, WindowUpdateFrame) and fr.stream_id == 1]
    assert updates and sum(u.window_increment for u in updates) >= 2 * hbone.MIB


def test_other_frames_reach_the_rules_between_chunks_in_wire_order() -> None:
    conn, f = server()
    feed(conn, f.headers(1, CONNECT), 1.0)
    events = feed(conn, f.data(1, b"a") + f.extension(1, 0xB7, 1, b"12345678") + f.data(1, b"b"), 2.0)
    assert events == [(1, b"a"), StreamFrame(1, 0xB7, 1, b"12345678"), (1, b"b")]


def test_a_stream_reset_in_the_same_read_is_never_set_up() -> None:
    conn, f = server()
    events = feed(conn, f.headers(1, CONNECT) + f.data(1, b"early") + f.rst_stream(1) + f.headers(3, CONNECT), 1.0)
    assert [e.stream_id for e in of(StreamRequested, events)] == [3]  # type: ignore[attr-defined]
    assert chunks(events, 1) == b""  # nor are its bytes routed
    assert conn.pending == 1 and conn.streams == 1 and conn.resets == 1
    # reset in a later read: gone, for its setup to be cancelled
    assert feed(conn, f.rst_stream(3), 2.0) == [StreamGone(3, "stream reset by peer (error code 8)")]


@pytest.mark.parametrize("buffered", [True, False])
def test_data_of_a_stream_reset_in_its_own_read_gives_the_window_back(buffered: bool) -> None:
    """Each rapid reset carrying DATA would otherwise shrink the connection's window for good, until it stalls."""
    conn, f = server()
    for i in range(1, 2 * 90, 2):  # 9 MiB: past half the connection's 16 MiB window, when h2 hands it back
        wire = f.headers(i, CONNECT) + f.data(i, b"x" * 100 * 1024) + f.rst_stream(i)
        assert (feed(conn, wire, 1.0) if buffered else conn.receive(wire, 1.0)) == []
    assert conn.streams == 0
    updates = [fr for fr in parse(conn.h2.data_to_send()) if isinstance(fr, WindowUpdateFrame) and not fr.stream_id]
    assert sum(u.window_increment for u in updates) >= 8 * hbone.MIB


def test_a_reset_flood_gets_enhance_your_calm_and_is_closed() -> None:
    conn, f = server(Limits(reset_burst=10, reset_rate=1.0))
    flood = b"".join(f.headers(i, CONNECT) + f.rst_stream(i) for i in range(1, 23, 2))  # 11 resets: one too many
    (close,) = of(Close, feed(conn, flood, 1.0))
    assert isinstance(close, Close) and close.abort and "ENHANCE_YOUR_CALM" in (close.error or "")
    (goaway,) = [fr for fr in parse(conn.h2.data_to_send()) if isinstance(fr, GoAwayFrame)]
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert feed(conn, f.headers(23, CONNECT) + f.data(1, b"x"), 1.0) == []  # closed: nothing more happens


def test_streams_beyond_the_concurrency_limit_are_refused_alone() -> None:
    conn, f = server(Limits(max_pending_streams=1000))
    limit = hbone.SERVER_MAX_CONCURRENT_STREAMS
    ids = list(range(1, 2 * limit + 4, 2))
    events = feed(conn, b"".join(f.headers(i, CONNECT) for i in ids), 1.0, piece=4096)
    assert [e.stream_id for e in of(StreamRequested, events)] == ids[:limit]  # type: ignore[attr-defined]
    refused = [fr for fr in parse(conn.h2.data_to_send()) if isinstance(fr, RstStreamFrame)]
    assert [(r.stream_id, r.error_code) for r in refused] == [(i, ErrorCodes.REFUSED_STREAM) for i in ids[limit:]]
    assert chunks(feed(conn, f.data(1, b"ok"), 2.0), 1) == b"ok"


def test_header_blocks_stay_bounded() -> None:
    conn, f = server()
    chunk = b"\x00" * 16384
    events = feed(conn, f.raw_headers(1, chunk, end_headers=False) + f.continuation(1, chunk) * 3, 1.0, piece=1000)
    assert not of(Close, events)  # 64 KiB: the limit, not past it
    (close,) = feed(conn, f.continuation(1, b"\x00"), 1.0)
    assert isinstance(close, Close) and "header block" in (close.error or "")
    (goaway,) = parse(conn.h2.data_to_send())
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # a frame longer than our SETTINGS_MAX_FRAME_SIZE: refused at its 9-byte header
    other, _ = server()
    (close,) = feed(other, FrameFactory.frame_header(hbone.FRAME_SIZE + 1, 0x0, 0, 1), 1.0)
    assert isinstance(close, Close) and "protocol error" in (close.error or "")
    (goaway,) = parse(other.h2.data_to_send())
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.FRAME_SIZE_ERROR


def test_a_lent_chunk_is_never_written_over() -> None:
    conn, f = server()
    feed(conn, f.headers(1, CONNECT), 1.0)
    wire = f.data(1, b"A" * 1000)
    buf = conn.get_buffer(-1)
    buf[: len(wire)] = wire
    ((_, kept),) = conn.received(len(wire), 2.0)  # type: ignore[misc]
    conn.lend()  # as the shell does when the app's transport keeps the view to send later
    assert chunks(feed(conn, f.data(1, b"B" * 300_000) * 4, 2.0, piece=70_000), 1) == b"B" * 1_200_000
    assert bytes(kept) == b"A" * 1000


def test_a_receive_buffer_grown_for_bulk_goes_back_at_the_keepalive_ping() -> None:
    conn, f = server()
    feed(conn, f.headers(1, CONNECT), 1.0)
    assert len(conn.get_buffer(300)) <= 16 * 1024  # an idle connection's
    wire = f.data(1, b"x" * 200_000)
    buf = conn.get_buffer(len(wire))
    assert len(buf) >= len(wire)  # a bulk read: room for all of it
    buf[: len(wire)] = wire
    conn.received(len(wire), 2.0)
    assert len(conn.get_buffer(300)) > 16 * 1024
    conn.timer(hbone.PING_INTERVAL)  # the keepalive PING
    assert len(conn.get_buffer(300)) <= 16 * 1024

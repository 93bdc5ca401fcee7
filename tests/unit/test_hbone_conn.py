"""The HBONE connection's rules, sans-IO: frames in (a frame factory), events and frames out, time as numbers."""

from __future__ import annotations

import typing

import h2.events
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from pyztunnel.protocols import hbone, hbone_conn
from pyztunnel.protocols.hbone_conn import (
    CLOSING_PING,
    Answered,
    Close,
    HboneConn,
    Idle,
    Limits,
    StreamFrame,
    StreamGone,
    StreamRequested,
    WindowOpened,
)
from tests.h2frames import CONNECT, FrameFactory, parse


def server(limits: Limits | None = None, now: float = 0.0) -> tuple[HboneConn, FrameFactory]:
    """A server connection whose client sent its preface; what it queued so far is discarded."""
    conn = HboneConn(client_side=False, limits=limits)
    conn.start(now)
    factory = FrameFactory()
    conn.receive(factory.preface(), now)
    conn.h2.data_to_send()
    return conn, factory


def sent(conn: HboneConn) -> list[object]:
    return list(parse(conn.h2.data_to_send()))


def of(kind: type, events: list[object]) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def test_a_connect_becomes_a_stream_to_set_up_and_pending_until_settled() -> None:
    conn, f = server()
    events = conn.receive(f.headers(1, CONNECT), 1.0)
    (requested,) = of(StreamRequested, events)
    assert isinstance(requested, StreamRequested) and requested.stream_id == 1
    assert (b":authority", b"10.0.0.2:8080") in requested.headers
    assert conn.pending == 1 and conn.streams == 1
    conn.settled(1)
    assert conn.pending == 0 and conn.streams == 1
    assert conn.closed_stream(1, 2.0) == [Idle()]


def test_keepalive_ping_every_10s_and_a_missing_ack_closes_after_20s() -> None:
    conn, f = server()
    assert conn.deadline == 10.0  # the preface is in; the first PING is due
    assert conn.timer(10.0) == []
    (ping,) = sent(conn)
    assert isinstance(ping, PingFrame) and "ACK" not in ping.flags
    assert conn.deadline == 30.0
    conn.receive(f.ping(ping.opaque_data, ack=True), 12.0)  # answered: the next one 10 s after the ACK
    assert conn.deadline == 22.0
    conn.timer(22.0)
    (second,) = sent(conn)
    assert isinstance(second, PingFrame) and second.opaque_data != ping.opaque_data
    conn.receive(f.ping(b"other!!!", ack=True), 23.0)  # an ACK of something else is not the answer
    assert conn.deadline == 42.0
    (close,) = conn.timer(42.0)
    assert close == Close("ping timeout", abort=True, warn=True)
    (goaway,) = sent(conn)
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.NO_ERROR  # ztunnel's abrupt GOAWAY
    assert conn.timer(99.0) == [] and conn.deadline is None


def test_a_peer_that_never_sends_its_preface_is_closed_at_the_preface_deadline() -> None:
    conn = HboneConn(client_side=False, limits=Limits(preface_timeout=3.0))
    conn.start(100.0)
    assert conn.deadline == 103.0  # before the keepalive PING (110) and its timeout (130)
    assert conn.timer(102.9) == []
    (close,) = conn.timer(103.0)
    assert isinstance(close, Close) and close.abort and "preface" in (close.error or "")
    # A peer that sent it is not closed then.
    spoke = HboneConn(client_side=False, limits=Limits(preface_timeout=3.0))
    spoke.start(100.0)
    spoke.receive(FrameFactory().preface(), 101.0)
    assert spoke.deadline == 110.0 and spoke.timer(103.0) == []


def test_goaway_refuses_newer_streams_and_lets_older_ones_run() -> None:
    conn, f = server()
    conn.receive(f.headers(1, CONNECT), 1.0)
    conn.goaway(2.0)
    (goaway,) = sent(conn)
    assert isinstance(goaway, GoAwayFrame) and goaway.last_stream_id == 1
    events = conn.receive(f.headers(3, CONNECT) + f.data(1, b"still flowing"), 3.0)
    assert of(StreamRequested, events) == []
    assert [e.data for e in of(h2.events.DataReceived, events)] == [b"still flowing"]  # type: ignore[attr-defined]
    (refused,) = sent(conn)
    assert isinstance(refused, RstStreamFrame) and refused.stream_id == 3
    assert refused.error_code == ErrorCodes.REFUSED_STREAM


def test_going_away_with_nothing_left_closes_after_a_ping_round_trip() -> None:
    conn, f = server()
    conn.receive(f.headers(1, CONNECT), 1.0)
    conn.goaway(2.0)
    conn.h2.data_to_send()
    assert conn.closed_stream(1, 3.0) == []  # not at once: a CONNECT may be on the wire
    (ping,) = sent(conn)
    assert isinstance(ping, PingFrame) and ping.opaque_data == CLOSING_PING
    assert conn.receive(f.ping(CLOSING_PING, ack=True), 3.5) == [Close(None)]
    # without an answer it closes at the round trip's bound
    late, _ = server()
    late.goaway(1.0)
    assert late.deadline == 1.0 + hbone.CLOSE_ROUND_TRIP_TIMEOUT
    assert late.timer(2.0) == [Close(None)]


def test_a_peer_goaway_refuses_our_streams_above_its_last_stream_id() -> None:
    conn = HboneConn(client_side=True)
    conn.start(0.0)
    f = FrameFactory()
    conn.receive(f.settings(), 0.1)
    ids = [conn.open_stream(CONNECT) for _ in range(3)]
    assert ids == [1, 3, 5]
    events = conn.receive(f.goaway(last_stream_id=3), 1.0)
    assert events == [StreamGone(5, "refused by GOAWAY", refused=True)]
    assert conn.closing
    events = conn.receive(f.headers(1, [(b":status", b"200")]), 1.5)
    assert events == [Answered(1, [(b":status", b"200")])]
    error = conn.receive(f.goaway(last_stream_id=3, error_code=ErrorCodes.PROTOCOL_ERROR), 2.0)
    assert error == [Close("GOAWAY from peer with error code 1")]


def test_frames_are_routed_to_live_streams_only() -> None:
    conn, f = server()
    conn.receive(f.headers(1, CONNECT), 1.0)
    events = conn.receive(f.extension(1, 0xB7, 1, b"12345678") + f.window_update(1, 100) + f.window_update(0, 100), 2.0)
    assert events == [StreamFrame(1, 0xB7, 1, b"12345678"), WindowOpened(1), WindowOpened(0)]
    conn.closed_stream(1, 3.0)
    conn.h2.data_to_send()
    # DATA for a stream we no longer route: no event, but the window is handed back (h2 sends the WINDOW_UPDATE
    # once half of the 4 MiB stream window is consumed)
    assert conn.receive(b"".join(f.data(1, b"x" * hbone.MIB) for _ in range(3)), 4.0) == []
    updates = [fr for fr in sent(conn) if isinstance(fr, WindowUpdateFrame) and fr.stream_id == 1]
    assert updates and sum(u.window_increment for u in updates) >= 2 * hbone.MIB


# ---------------------------------------------------------------------------------------------- rapid reset (#11.1)


def test_a_stream_reset_in_the_same_read_is_never_set_up() -> None:
    conn, f = server()
    events = conn.receive(f.headers(1, CONNECT) + f.rst_stream(1) + f.headers(3, CONNECT), 1.0)
    assert [e.stream_id for e in of(StreamRequested, events)] == [3]  # type: ignore[attr-defined]
    assert conn.pending == 1 and conn.streams == 1 and conn.resets == 1


def test_a_stream_reset_later_is_gone_for_its_setup_to_be_cancelled() -> None:
    conn, f = server()
    conn.receive(f.headers(1, CONNECT), 1.0)
    events = conn.receive(f.rst_stream(1), 2.0)
    assert events == [StreamGone(1, "stream reset by peer (error code 8)", refused=False)]


def test_streams_in_setup_are_bounded_and_the_extra_ones_refused() -> None:
    conn, f = server(Limits(max_pending_streams=2))
    events = conn.receive(b"".join(f.headers(i, CONNECT) for i in (1, 3, 5)), 1.0)
    assert [e.stream_id for e in of(StreamRequested, events)] == [1, 3]  # type: ignore[attr-defined]
    (refused,) = sent(conn)
    assert isinstance(refused, RstStreamFrame) and refused.stream_id == 5
    assert refused.error_code == ErrorCodes.REFUSED_STREAM
    conn.settled(1)  # answered: room for one more
    assert [e.stream_id for e in of(StreamRequested, conn.receive(f.headers(7, CONNECT), 2.0))] == [7]  # type: ignore[attr-defined]


def test_a_reset_flood_gets_enhance_your_calm_and_is_closed() -> None:
    conn, f = server(Limits(reset_burst=10, reset_rate=1.0))
    flood = b"".join(f.headers(i, CONNECT) + f.rst_stream(i) for i in range(1, 21, 2))  # 10 resets: the whole burst
    assert of(Close, conn.receive(flood, 1.0)) == []
    conn.h2.data_to_send()
    (close,) = conn.receive(f.headers(21, CONNECT) + f.rst_stream(21), 1.0)
    assert isinstance(close, Close) and close.abort and "ENHANCE_YOUR_CALM" in (close.error or "")
    (goaway,) = sent(conn)
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert conn.receive(f.headers(23, CONNECT), 1.0) == []  # closed: nothing more happens


def test_resets_at_the_refill_rate_are_a_busy_client_not_an_attack() -> None:
    conn, f = server(Limits(reset_burst=10, reset_rate=10.0))
    now = 0.0
    for i in range(1, 400, 2):  # 200 resets over 20 s: the rate refills what they take
        now += 0.1
        assert of(Close, conn.receive(f.headers(i, CONNECT) + f.rst_stream(i), now)) == []


@pytest.mark.parametrize("flood", ["ping", "settings", "priority"])
def test_a_control_frame_flood_gets_enhance_your_calm_and_is_closed(flood: str) -> None:
    conn, f = server(Limits(control_burst=10, control_rate=1.0))

    def frame(i: int) -> bytes:
        if flood == "ping":
            return f.ping(i.to_bytes(8, "big"))
        if flood == "settings":
            return f.settings()
        return f.frame_header(5, 0x2, 0, 2 * i + 1) + bytes([0, 0, 0, 0, 15])  # PRIORITY of an idle stream

    # The preface's SETTINGS took one token of the burst; nine more are still a peer's right.
    assert of(Close, conn.receive(b"".join(frame(i) for i in range(9)), 0.0)) == []
    conn.h2.data_to_send()
    (close,) = conn.receive(frame(9), 0.0)
    assert isinstance(close, Close) and close.abort and "too many control frames (11)" in (close.error or "")
    goaway = sent(conn)[-1]  # after h2's own ACK of that last frame, if it has one
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_pings_at_the_refill_rate_are_a_live_peer_not_an_attack() -> None:
    conn, f = server(Limits(control_burst=10, control_rate=10.0))
    now = 0.0
    for i in range(200):  # 200 pings over 20 s, each answered
        now += 0.1
        assert of(Close, conn.receive(f.ping(i.to_bytes(8, "big")), now)) == []
        (ack,) = sent(conn)
        assert isinstance(ack, PingFrame) and "ACK" in ack.flags


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 4)), min_size=1, max_size=40), st.integers(1, 8))
def test_whatever_is_read_setups_stay_bounded_and_a_reset_stream_is_never_set_up(
    reads: list[tuple[bool, int]], max_pending: int
) -> None:
    """Hypothesis: reads of CONNECTs, each reset in the same read or not; the pending setups never exceed the bound,
    no stream reset in its own read is ever set up, and only resets past the burst close the connection. A refusal
    draws a token, and so does the peer's reset of a stream we refused (it costs us the same work)."""
    conn, f = server(Limits(max_pending_streams=max_pending, reset_burst=25, reset_rate=0.0))
    stream_id, resets = 1, 0
    for reset, count in reads:
        data = b""
        ids = []
        for _ in range(count):
            data += f.headers(stream_id, CONNECT) + (f.rst_stream(stream_id) if reset else b"")
            ids.append(stream_id)
            stream_id += 2
        pending_before = conn.pending
        events = conn.receive(data, 1.0)
        requested = [e.stream_id for e in of(StreamRequested, events)]  # type: ignore[attr-defined]
        refused = 0 if reset else max(0, pending_before + count - max_pending)
        if reset:
            resets += count * (2 if pending_before >= max_pending else 1)
        else:
            resets += refused
        if resets > 25:
            assert of(Close, events)
            return
        assert not of(Close, events)
        assert conn.pending <= max_pending
        if reset:
            assert requested == []
        else:
            assert requested == ids[: count - refused]


# ---------------------------------------------------------------------------------------- too many streams (#11.3)


def test_streams_beyond_the_concurrency_limit_are_refused_alone() -> None:
    conn, f = server(Limits(max_pending_streams=1000))
    limit = hbone.SERVER_MAX_CONCURRENT_STREAMS
    ids = list(range(1, 2 * limit + 4, 2))  # limit + 2 streams, in one read
    events = conn.receive(b"".join(f.headers(i, CONNECT) for i in ids), 1.0)
    assert [e.stream_id for e in of(StreamRequested, events)] == ids[:limit]  # type: ignore[attr-defined]
    assert not of(Close, events)
    refused = [fr for fr in sent(conn) if isinstance(fr, RstStreamFrame)]
    assert [(r.stream_id, r.error_code) for r in refused] == [(i, ErrorCodes.REFUSED_STREAM) for i in ids[limit:]]
    # the good streams go on, and once one ends a new stream fits again
    assert of(h2.events.DataReceived, conn.receive(f.data(1, b"ok"), 2.0))
    conn.closed_stream(1, 2.0)
    conn.h2.reset_stream(1)  # the shell ends a stream with its reset or END_STREAM; either frees its slot
    assert of(StreamRequested, conn.receive(f.headers(ids[-1] + 2, CONNECT), 3.0))


# ------------------------------------------------------------------------------------ header block bounds (#11.2)


def test_a_header_block_that_never_ends_is_cut_at_the_header_list_limit() -> None:
    conn, f = server()
    chunk = b"\x00" * 16384
    events = conn.receive(f.raw_headers(1, chunk, end_headers=False), 1.0)
    for _ in range(3):
        events += conn.receive(f.continuation(1, chunk), 1.0)
    assert not of(Close, events)  # 64 KiB so far: the limit, not past it
    (close,) = conn.receive(f.continuation(1, b"\x00"), 1.0)  # one byte more
    events = conn.receive(f.continuation(1, b"\x00"), 1.0)
    assert isinstance(close, Close) and "header block" in (close.error or "") and events == []
    (goaway,) = sent(conn)
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_an_oversized_header_frame_is_refused_on_its_frame_header() -> None:
    """A 1 MiB CONTINUATION (our frame size allows it) is refused as soon as its 9-byte header is in: the proxy never
    buffers its body (h2 would keep 64 such frames, 64 MiB, before even decoding)."""
    conn, f = server()
    conn.receive(f.raw_headers(1, b"\x00" * 100, end_headers=False), 1.0)
    (close,) = conn.receive(f.frame_header(hbone.FRAME_SIZE, 0x9, 0, 1), 1.0)  # 0x9: CONTINUATION
    assert isinstance(close, Close) and "header block" in (close.error or "")
    big_headers = FrameFactory.frame_header(hbone.SERVER_MAX_HEADER_LIST + 1, 0x1, 0x4, 3)  # HEADERS, END_HEADERS
    other, _ = server()
    (close,) = other.receive(big_headers, 1.0)
    assert isinstance(close, Close)


@pytest.mark.parametrize("client_side", [True, False])
def test_a_client_bounds_header_blocks_by_its_own_smaller_limit(client_side: bool) -> None:
    conn = HboneConn(client_side=client_side)
    conn.start(0.0)
    limit = hbone.CLIENT_MAX_HEADER_LIST if client_side else hbone.SERVER_MAX_HEADER_LIST
    first = FrameFactory().settings() if client_side else FrameFactory().preface()
    conn.receive(first, 0.1)
    events = conn.receive(FrameFactory.frame_header(limit + 1, 0x1, 0x4, 2 if client_side else 1), 1.0)
    assert of(Close, events)


def test_settings_arriving_count_as_the_preface_and_open_every_window() -> None:
    conn = HboneConn(client_side=True)
    conn.start(0.0)
    events = conn.receive(FrameFactory().settings({0x4: 1 << 20}), 0.5)
    assert events == [WindowOpened(0)]
    assert any(isinstance(fr, SettingsFrame) and "ACK" in fr.flags for fr in sent(conn))
    assert conn.deadline == hbone.PING_INTERVAL


def test_the_events_are_the_connection_events() -> None:
    """Every event the rules emit is one the shell has a handler for (proxy/h2conn.py dispatches by type)."""
    from pyztunnel.proxy.h2conn import H2ClientConn, H2ServerConn

    kinds = set(typing.get_args(hbone_conn.Event))
    assert kinds - set(H2ServerConn._HANDLERS) == {Answered}
    assert kinds - set(H2ClientConn._HANDLERS) == {StreamRequested}

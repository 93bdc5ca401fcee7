"""Resumable HBONE streams, sans-IO: the headers, the QUIESCE frame, the stop's state, and who may claim a parked
stream."""

from __future__ import annotations

import asyncio
import typing

import pytest
from hyperframe.frame import ExtensionFrame, Frame

from pyztunnel.lifecycle.drainer import ConnectionSet
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.protocols import resume
from pyztunnel.proxy.parking import Parked, ResumeRegistry
from pyztunnel.proxy.telemetry import Telemetry

TOKEN = "0123456789abcdef0123456789abcdef"


pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def test_a_token_is_32_hex_digits_and_a_malformed_one_is_ignored() -> None:
    assert resume.new_token(bytes(range(16))) == "000102030405060708090a0b0c0d0e0f"
    with pytest.raises(ValueError):
        resume.new_token(b"short")
    assert resume.token_in([(b"pyztunnel-stream", TOKEN.encode())], resume.STREAM_HEADER) == TOKEN
    for bad in (b"", b"xyz", TOKEN.upper().encode(), TOKEN.encode() + b"0", b"../" + TOKEN.encode()[3:]):
        assert resume.token_in([(resume.STREAM_HEADER, bad)], resume.STREAM_HEADER) is None
    assert resume.token_in([(resume.RESUME_HEADER, TOKEN.encode())], resume.STREAM_HEADER) is None


def test_the_quiesce_frame_is_an_http2_extension_frame_with_the_count() -> None:
    raw = resume.quiesce_frame(7, 123456789012, ack=True)
    frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
    assert isinstance(frame, ExtensionFrame) and length == 8 == len(raw) - 9
    frame.parse_body(memoryview(raw[9:]))
    assert (frame.type, frame.stream_id, frame.flag_byte) == (resume.QUIESCE_FRAME, 7, resume.FLAG_ACK)
    assert resume.parse_quiesce(frame.flag_byte, frame.body) == (123456789012, True)
    assert resume.parse_quiesce(0, resume.quiesce_frame(1, 0, ack=False)[9:]) == (0, False)
    with pytest.raises(resume.ResumeError):
        resume.parse_quiesce(0, b"\x00" * 7)
    for stream_id, sent in ((0, 1), (2**31, 1), (1, -1)):
        with pytest.raises(ValueError):
            resume.quiesce_frame(stream_id, sent, ack=False)


def _state(q: resume.Quiesce) -> tuple[bool, bool]:
    return q.stopped, q.must_answer


def test_a_stop_is_complete_once_both_marks_are_through() -> None:
    mover = resume.Quiesce()
    mover.begin(sent=100)
    assert _state(mover) == (False, False)
    mover.receive(sent_by_peer=40, received=40)
    assert _state(mover) == (True, False)

    stayer = resume.Quiesce()
    stayer.receive(sent_by_peer=100, received=100)
    assert _state(stayer) == (False, True)
    stayer.begin(sent=40)
    assert _state(stayer) == (True, False)


def test_both_ends_stopping_at_once_is_a_stop() -> None:
    a, b = resume.Quiesce(), resume.Quiesce()
    a.begin(10)
    b.begin(20)
    a.receive(20, 20)
    b.receive(10, 10)
    assert _state(a) == _state(b) == (True, False)


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        ([("receive", 10, 9)], "peer says it sent 10 bytes, 9 arrived"),  # a byte lost (or invented) on the way
        ([("receive", 1, 1), ("receive", 1, 1)], "a second quiesce mark"),
        ([("begin", 1), ("begin", 1)], "already announced"),
    ],
)
def test_a_stop_that_does_not_add_up_is_refused(steps: list[tuple[typing.Any, ...]], error: str) -> None:
    state = resume.Quiesce()
    with pytest.raises(resume.ResumeError, match=error):
        for name, *args in steps:
            getattr(state, name)(*args)


class _Telemetry:
    """What the registry reports to: the completed records."""

    def __init__(self) -> None:
        self.completed: list[ConnectionRecord] = []
        self.logged = asyncio.Event()

    def complete(self, record: ConnectionRecord) -> None:
        self.completed.append(record)
        self.logged.set()


class _App:
    """The parked app socket: only what giving up touches."""

    def __init__(self) -> None:
        self.done = False
        self.aborted = False
        self.received = 5

    def abort(self) -> None:
        self.aborted = self.done = True


def _registry(park_timeout: float) -> tuple[ResumeRegistry, _Telemetry, ConnectionSet]:
    telemetry, connections = _Telemetry(), ConnectionSet()
    return ResumeRegistry(typing.cast(Telemetry, telemetry), connections, park_timeout), telemetry, connections


def _parked(pod_key: str = "pod-b") -> tuple[Parked, _App]:
    record = ConnectionRecord(src_addr="10.0.0.1:5000", dst_addr="10.0.0.2:15008", direction="inbound")
    record.src_identity = "spiffe://cluster.local/ns/a/sa/client"
    record.dst_hbone_addr = "10.0.0.2:8080"
    app = _App()
    return Parked(pod_key, typing.cast(typing.Any, app), record, TOKEN, 7, client_side=False), app


async def test_only_the_holder_of_a_stream_can_claim_it() -> None:
    registry, _, connections = _registry(park_timeout=30)
    parked, _ = _parked()
    registry.park(parked)
    assert parked in list(connections)  # the drain sees it as a live connection
    identity, authority = "spiffe://cluster.local/ns/a/sa/client", "10.0.0.2:8080"
    wrong = [
        ("pod-x", identity, authority),  # another pod's listener
        ("pod-b", "spiffe://cluster.local/ns/a/sa/other", authority),  # another workload
        ("pod-b", identity, "10.0.0.2:9090"),  # another destination
    ]
    for key, who, where in wrong:
        assert await registry.claim(TOKEN, key, who, where, wait=0) is None
    assert len(registry) == 1  # a wrong claim leaves it parked
    assert await registry.claim(TOKEN, "pod-b", identity, authority, wait=0) is parked
    assert len(registry) == 0 and registry.resumed == 1
    assert await registry.claim(TOKEN, "pod-b", identity, authority, wait=0) is None  # once
    assert parked.timer is not None
    parked.timer.cancel()


async def test_a_claim_waits_for_a_stream_still_on_its_way() -> None:
    registry, _, _ = _registry(park_timeout=30)
    parked, _ = _parked()
    claim = asyncio.ensure_future(
        registry.claim(TOKEN, "pod-b", "spiffe://cluster.local/ns/a/sa/client", "10.0.0.2:8080", wait=5)
    )
    await asyncio.sleep(0)  # [noqa: sleep-ok: the claim starts waiting before the stream is parked]
    registry.park(parked)
    assert await asyncio.wait_for(claim, 5) is parked
    assert parked.timer is not None
    parked.timer.cancel()


async def test_a_parked_stream_offered_to_a_taker_is_out_of_reach_of_claims_until_restored() -> None:
    registry, _, connections = _registry(park_timeout=30)
    parked, _ = _parked()
    registry.park(parked)
    assert registry.waiting("pod-b") == [parked] and registry.waiting("pod-x") == []
    assert registry.withdraw(parked) and not registry.withdraw(parked)  # once
    assert parked in list(connections)  # still a live connection for the drain while it is offered
    who = ("pod-b", "spiffe://cluster.local/ns/a/sa/client", "10.0.0.2:8080")
    assert await registry.claim(TOKEN, *who, wait=0) is None  # offered elsewhere: not claimable here
    claim = asyncio.ensure_future(registry.claim(TOKEN, *who, wait=5))
    await asyncio.sleep(0)  # [noqa: sleep-ok: the claim starts waiting before the stream is restored]
    registry.restore(parked)  # the taker did not take it
    assert await asyncio.wait_for(claim, 5) is parked
    registry.release(parked)
    assert parked not in list(connections) and registry.waiting("pod-b") == []


async def test_a_park_that_expires_resets_the_app_and_logs_the_connection() -> None:
    registry, telemetry, connections = _registry(park_timeout=0.01)
    parked, app = _parked()
    registry.park(parked)
    await asyncio.wait_for(telemetry.logged.wait(), 5)
    assert app.aborted and registry.expired == 1 and len(registry) == 0 and parked not in list(connections)
    record = telemetry.completed[0]
    assert record.error is not None and "not resumed within" in record.error
    assert (record.bytes_recv, record.bytes_sent) == (7, 5)  # the stream's bytes in, the app's bytes out


def test_a_moved_inbound_connection_keeps_what_its_policy_check_saw() -> None:
    from pyztunnel import authz
    from pyztunnel.proxy.migrated import policy_view

    hbone_in = ConnectionRecord(src_addr="10.0.0.1:5000", dst_addr="10.0.0.2:15008", direction="inbound")
    hbone_in.dst_hbone_addr, hbone_in.src_identity = "10.0.0.2:8080", "spiffe://cluster.local/ns/a/sa/client"
    assert policy_view(hbone_in) == authz.ConnectionInfo("10.0.0.1", "10.0.0.2", 8080, hbone_in.src_identity)
    plain_in = ConnectionRecord(src_addr="10.0.0.9:4000", dst_addr="10.0.0.2:8080", direction="inbound")
    assert policy_view(plain_in) == authz.ConnectionInfo("10.0.0.9", "10.0.0.2", 8080, None)
    assert policy_view(ConnectionRecord(src_addr="10.0.0.9:4000", dst_addr="x", direction="outbound")) is None
    assert policy_view(ConnectionRecord(src_addr="garbage", dst_addr="10.0.0.2:80", direction="inbound")) is None


async def test_a_stop_that_arrives_before_the_relay_is_watched_is_kept_for_it() -> None:
    """A peer may stop a stream right after its 200: the frame can be read together with the response, before the
    CONNECT's caller installs the stream's handler."""
    from pyztunnel.proxy.stream import StreamLeg

    leg = StreamLeg(typing.cast(typing.Any, object()), 1)
    frame = resume.quiesce_frame(1, 0, ack=False)
    leg.on_control(resume.QUIESCE_FRAME, 0, frame[9:])

    class Handler:
        def __init__(self) -> None:
            self.frames: list[tuple[int, int, bytes]] = []

        def on_frame(self, frame_type: int, flags: int, body: bytes) -> None:
            self.frames.append((frame_type, flags, body))

    handler = Handler()
    leg.set_control(handler)
    assert handler.frames == [(resume.QUIESCE_FRAME, 0, frame[9:])]
    leg.on_control(resume.QUIESCE_FRAME, 1, b"later")
    assert handler.frames[-1] == (resume.QUIESCE_FRAME, 1, b"later")


async def test_a_parked_connection_whose_app_left_is_still_logged_once() -> None:
    registry, telemetry, _ = _registry(park_timeout=30)
    parked, app = _parked()
    registry.park(parked)
    app.done = True  # the app closed (or reset) its socket while the stream was parked
    registry.give_up(parked, "hbone resume failed: http status: 410")
    registry.give_up(parked, "again")
    assert not app.aborted and len(telemetry.completed) == 1 and len(registry) == 0
    assert telemetry.completed[0].error == "hbone resume failed: http status: 410"

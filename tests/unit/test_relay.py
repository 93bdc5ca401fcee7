"""The relay's state, driven with events: a leg's half-close and holds (pure), and a relay of two recording legs
(no sockets): half-close travels, the first error resets the other side, a hand-over ends it without a trace."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyztunnel.protocols.legstate import LegState
from pyztunnel.proxy.relay import Leg, Relay, Reset

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def test_holds_nest_and_only_the_first_and_last_change_reading() -> None:
    leg = LegState()
    assert leg.hold() is True  # stop reading now
    assert leg.hold() is False  # already stopped
    assert leg.let_go() is False  # still held by the other reason
    assert leg.let_go() is True  # read again
    assert leg.let_go() is False  # unmatched: ignored
    assert not leg.held
    leg.hold()
    leg.hold()
    assert leg.let_go_all() is True and not leg.held
    assert leg.let_go_all() is False


def test_a_leg_closes_once_both_directions_ended_whichever_first() -> None:
    a = LegState()
    assert a.end_out() is True and a.end_out() is False  # EOF is sent once
    assert not a.closed_both_ways
    assert a.ended_in() is True  # both over: close it
    b = LegState()
    assert b.ended_in() is False  # only the peer's direction
    assert b.open_both_ways is False
    b.end_out()
    assert b.closed_both_ways
    assert b.finish() is True and b.finish() is False  # the relay hears of it once
    assert not b.closed_both_ways


@given(st.lists(st.sampled_from(["hold", "let_go"]), max_size=30))
def test_reading_is_off_exactly_while_a_hold_is_unmatched(steps: list[str]) -> None:
    leg, reading, holds = LegState(), True, 0
    for step in steps:
        if step == "hold":
            holds += 1
            if leg.hold():
                reading = False
        else:
            holds = max(0, holds - 1)
            if leg.let_go():
                reading = True
        assert reading == (holds == 0) == (not leg.held)


class RecordingLeg(Leg):
    """A leg whose IO is a list of what it did."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.did: list[str] = []
        self.written = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.written += data

    def write_eof(self) -> None:
        if self.end_out():
            self.did.append("eof-out")
            if self.closed_both_ways:
                self._close_clean()

    def _set_reading(self, on: bool) -> None:
        self.did.append("read" if on else "pause")

    def abort(self) -> None:
        self.did.append("abort")
        self._finished(Reset("aborted"))

    def _close_clean(self) -> None:
        self.did.append("close")
        self._finished(None)

    # what the network does to the leg
    def arrive(self, data: bytes) -> None:
        self._deliver(data)

    def peer_eof(self) -> None:
        self._deliver_eof()

    def peer_reset(self) -> None:
        self._finished(Reset("reset by peer"))


def relay_of(down: RecordingLeg, up: RecordingLeg) -> tuple[Relay, list[BaseException | None]]:
    ended: list[BaseException | None] = []
    return Relay(down, up, lambda _relay, error: ended.append(error), info=None), ended


async def test_bytes_before_the_start_are_handed_over_and_the_holds_dropped() -> None:
    down, up = RecordingLeg("down"), RecordingLeg("up")
    down.pause_reading()  # a leg paused until it has a peer
    down.arrive(b"early ")
    down.peer_eof()
    relay, _ = relay_of(down, up)
    relay.start()
    assert bytes(up.written) == b"early " and up.did == ["eof-out"]
    assert down.did == ["pause", "read"] and not down.held
    down.arrive(b"late")
    assert bytes(up.written) == b"early late" and down.received == 10


async def test_half_close_travels_and_a_clean_end_is_reported_once() -> None:
    down, up = RecordingLeg("down"), RecordingLeg("up")
    relay, ended = relay_of(down, up)
    relay.start()
    down.peer_eof()
    assert up.did == ["eof-out"] and not relay.closed.done()
    up.peer_eof()
    assert down.did == ["eof-out", "close"] and up.did == ["eof-out", "close"]
    assert relay.finished and relay.closed.done() and ended == [None]


@pytest.mark.parametrize("first", ["down", "up"])
async def test_the_first_error_resets_the_other_side_and_is_the_relays(first: str) -> None:
    down, up = RecordingLeg("down"), RecordingLeg("up")
    relay, ended = relay_of(down, up)
    relay.start()
    failing, other = (down, up) if first == "down" else (up, down)
    failing.peer_reset()
    assert other.did[-1] == "abort"
    assert len(ended) == 1 and isinstance(ended[0], Reset) and str(ended[0]) == "reset by peer"


async def test_reset_by_the_proxy_says_why() -> None:
    down, up = RecordingLeg("down"), RecordingLeg("up")
    relay, ended = relay_of(down, up)
    relay.start()
    relay.reset(ConnectionResetError("connection closed due to policy change"))
    assert down.did == up.did == ["abort"]
    assert isinstance(ended[0], ConnectionResetError)


async def test_a_detached_relay_ends_without_a_trace_and_its_legs_go_on() -> None:
    down, up = RecordingLeg("down"), RecordingLeg("up")
    relay, ended = relay_of(down, up)
    relay.start()
    relay.detach()
    assert relay.finished and relay.closed.done() and ended == []
    assert (down.relay, down.peer, up.relay, up.peer) == (None, None, None, None)
    assert down.did == up.did == []
    down.peer_reset()  # whatever happens to a leg later is its next owner's business
    assert ended == []
    again, ended_again = relay_of(RecordingLeg("new"), up)
    again.start()
    up.arrive(b"on")
    assert bytes(again.down.written) == b"on"  # type: ignore[attr-defined]
    assert ended_again == []

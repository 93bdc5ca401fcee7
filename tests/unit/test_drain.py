from __future__ import annotations

import pytest

from pyztunnel.lifecycle import drain
from pyztunnel.lifecycle.drain import (
    ConnectionsDone,
    DeadlineReached,
    DrainMachine,
    Exit,
    Outcome,
    QuitQuitQuit,
    ResetConnections,
    SendGoaway,
    Signal,
    StartTimer,
    StopAccepting,
    WatchConnections,
)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 5.0),
        ({"CONNECTION_TERMINATION_DEADLINE": "25s"}, 25.0),
        ({"CONNECTION_TERMINATION_DEADLINE": "250ms", "TERMINATION_GRACE_PERIOD_SECONDS": "30"}, 0.25),
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "30"}, 25.0),  # Helm default → 25 s
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "120"}, 115.0),
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "11"}, 6.0),
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "10"}, 9.0),  # N ≤ 10 → N − 1
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "2"}, 1.0),
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "1"}, 1.0),  # never below 1 s
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "0"}, 1.0),
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "", "CONNECTION_TERMINATION_DEADLINE": ""}, 5.0),
    ],
)
def test_deadline_table(environ: dict[str, str], expected: float) -> None:
    assert drain.drain_deadline_from_env(environ) == expected


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({"CONNECTION_TERMINATION_DEADLINE": "soon"}, "CONNECTION_TERMINATION_DEADLINE"),
        ({"TERMINATION_GRACE_PERIOD_SECONDS": "3.5"}, "TERMINATION_GRACE_PERIOD_SECONDS"),
    ],
)
def test_deadline_bad_values_name_the_variable(environ: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        drain.drain_deadline_from_env(environ)


START = [StopAccepting(), SendGoaway(), StartTimer(3.0), WatchConnections()]


@pytest.mark.parametrize("first", [Signal(), QuitQuitQuit()])
def test_first_signal_or_quitquitquit_starts_drain(first: drain.Event) -> None:
    m = DrainMachine(3.0)
    assert m.handle(first) == START
    assert m.state is drain.State.DRAINING


def test_connections_done_exits_clean() -> None:
    m = DrainMachine(3.0)
    m.handle(Signal())
    assert m.handle(ConnectionsDone()) == [Exit(Outcome.CLEAN)]
    assert m.state is drain.State.DONE


def test_deadline_resets_then_exits() -> None:
    m = DrainMachine(3.0)
    m.handle(Signal())
    assert m.handle(DeadlineReached()) == [ResetConnections(), Exit(Outcome.DEADLINE)]


def test_second_signal_forces_but_second_quitquitquit_does_not() -> None:
    m = DrainMachine(3.0)
    m.handle(QuitQuitQuit())
    assert m.handle(QuitQuitQuit()) == []
    assert m.handle(Signal()) == [Exit(Outcome.FORCED)]


@pytest.mark.parametrize("event", [ConnectionsDone(), DeadlineReached()])
def test_events_before_drain_are_ignored(event: drain.Event) -> None:
    m = DrainMachine(3.0)
    assert m.handle(event) == []
    assert m.state is drain.State.SERVING


@pytest.mark.parametrize("event", [Signal(), QuitQuitQuit(), ConnectionsDone(), DeadlineReached()])
def test_nothing_after_done(event: drain.Event) -> None:
    m = DrainMachine(3.0)
    m.handle(Signal())
    m.handle(ConnectionsDone())
    assert m.handle(event) == []

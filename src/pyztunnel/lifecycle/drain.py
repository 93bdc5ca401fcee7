"""Drain on shutdown, sans-IO: the deadline formula and the state machine (reference/ztunnel.md §1.2–1.4).

The machine takes events (a signal or `/quitquitquit`, a second signal, "all connections done", "deadline reached")
and answers with actions for the shell to carry out (stop accepting, GOAWAY, arm the timer, reset what is left, exit).
It never touches a socket or a clock; `drainer.py` is the asyncio shell around it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from pyztunnel.settings import Duration

DEFAULT_CONNECTION_TERMINATION_DEADLINE = 5.0


def drain_deadline(
    connection_termination_deadline: float | None, termination_grace_period_seconds: int | None
) -> float:
    """Seconds the drain may last, as ztunnel computes `self_termination_deadline` (reference §1.3).

    The drain must end before the kubelet's SIGKILL, hence the margin subtracted from the grace period.
    """
    if connection_termination_deadline is not None:
        return float(connection_termination_deadline)
    if termination_grace_period_seconds is not None:
        n = termination_grace_period_seconds
        return float(n - 5) if n > 10 else float(max(n - 1, 1))
    return DEFAULT_CONNECTION_TERMINATION_DEADLINE


def drain_deadline_from_env(environ: Mapping[str, str]) -> float:
    """The deadline from ztunnel's environment variables; a malformed value raises ValueError naming the variable."""
    ctd_text = environ.get("CONNECTION_TERMINATION_DEADLINE") or None
    grace_text = environ.get("TERMINATION_GRACE_PERIOD_SECONDS") or None
    ctd = None
    grace = None
    if ctd_text is not None:
        try:
            ctd = float(Duration.parse(ctd_text))
        except ValueError as exc:
            raise ValueError(f"CONNECTION_TERMINATION_DEADLINE: {exc}") from None
    if grace_text is not None:
        try:
            grace = int(grace_text)
        except ValueError:
            raise ValueError(f"TERMINATION_GRACE_PERIOD_SECONDS: not an integer: {grace_text!r}") from None
    return drain_deadline(ctd, grace)


# Events -------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Signal:
    """SIGTERM or SIGINT. The first starts the drain; one more while draining forces exit."""


@dataclasses.dataclass(frozen=True)
class QuitQuitQuit:
    """`POST /quitquitquit` on the admin port: starts the drain like a first signal, never forces."""


@dataclasses.dataclass(frozen=True)
class ConnectionsDone:
    """No accepted connection is left."""


@dataclasses.dataclass(frozen=True)
class DeadlineReached:
    """The drain timer fired."""


Event = Signal | QuitQuitQuit | ConnectionsDone | DeadlineReached

# Actions ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StopAccepting:
    """Stop accepting on every listener at once (never close a listener another instance holds: see handoff.py)."""


@dataclasses.dataclass(frozen=True)
class SendGoaway:
    """HTTP/2 GOAWAY on every inbound HBONE connection; streams in flight continue."""


@dataclasses.dataclass(frozen=True)
class StartTimer:
    seconds: float


@dataclasses.dataclass(frozen=True)
class WatchConnections:
    """Tell the machine (ConnectionsDone) as soon as no connection is left, which may be at once."""


@dataclasses.dataclass(frozen=True)
class ResetConnections:
    """RST every connection still open (SO_LINGER 0, so the peer sees a reset, not a FIN) and log each."""


class Outcome(enum.Enum):
    CLEAN = "clean"  # every connection ended within the deadline
    DEADLINE = "deadline"  # the deadline passed; the rest were reset
    FORCED = "forced"  # a second signal


@dataclasses.dataclass(frozen=True)
class Exit:
    outcome: Outcome


Action = StopAccepting | SendGoaway | StartTimer | WatchConnections | ResetConnections | Exit


class State(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    DONE = "done"


class DrainMachine:
    """Serving → draining → done. Events that make no sense in the current state produce no action."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.state = State.SERVING

    def handle(self, event: Event) -> list[Action]:
        if self.state is State.SERVING:
            if isinstance(event, Signal | QuitQuitQuit):
                self.state = State.DRAINING
                return [StopAccepting(), SendGoaway(), StartTimer(self.deadline), WatchConnections()]
            return []
        if self.state is State.DRAINING:
            if isinstance(event, Signal):
                return self._done(Outcome.FORCED)
            if isinstance(event, ConnectionsDone):
                return self._done(Outcome.CLEAN)
            if isinstance(event, DeadlineReached):
                return [ResetConnections(), *self._done(Outcome.DEADLINE)]
        return []

    def _done(self, outcome: Outcome) -> list[Action]:
        self.state = State.DONE
        return [Exit(outcome)]

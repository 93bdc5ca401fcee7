"""When to fetch which certificate: the decisions of ztunnel's SecretManager (reference §4), sans-IO.

Times are seconds since the epoch, given by the caller. Per identity: fetched first at once (priority RealTime >
Warmup > Background), refreshed at `not_before + (not_after − not_before)/2`, retried after a failure with
exponential backoff (500 ms initial, ×2, jitter ±20 %, at most 150 s), the old certificate served while still valid.
At most `max_in_flight` fetches run at once; due fetches start in priority order.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.identity.spiffe import Identity

MAX_IN_FLIGHT = 8


class Priority(enum.IntEnum):
    """Lower value first, as ztunnel's `Priority`."""

    REAL_TIME = 0
    WARMUP = 1
    BACKGROUND = 2


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    multiplier: float = 2.0
    jitter: float = 0.2
    maximum: float = 150.0

    def delay(self, failures: int, rand: float) -> float:
        """Delay after the `failures`-th failure in a row (1-based); `rand` in [0, 1) spreads it by ±jitter."""
        base = min(self.initial * self.multiplier ** (failures - 1), self.maximum)
        return min(base * (1 + self.jitter * (2 * rand - 1)), self.maximum)


@dataclasses.dataclass
class Entry:
    identity: Identity
    priority: Priority
    due_at: float | None  # when the next fetch may start; None while one runs
    cert: WorkloadCert | None = None
    error: str | None = None  # reason of the last failure, until a fetch succeeds
    failures: int = 0
    in_flight: bool = False

    def valid_cert(self, now: float) -> WorkloadCert | None:
        cert = self.cert
        if cert is not None and cert.not_before.timestamp() <= now < cert.not_after.timestamp():
            return cert
        return None

    def state(self, now: float) -> str:
        """`Initializing`, `Available` or `Unavailable: <why>`, as ztunnel's config dump."""
        if self.valid_cert(now) is not None:
            return "Available"
        if self.error is not None:
            return f"Unavailable: {self.error}"
        if self.cert is not None:
            return "Unavailable: certificate expired"
        return "Initializing"


class Schedule:
    """The per-identity state machine. Every method is a decision; the caller runs fetches and keeps time."""

    def __init__(
        self,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        backoff: Backoff = Backoff(),
        rand: Callable[[], float],
    ) -> None:
        self.max_in_flight = max_in_flight
        self.backoff = backoff
        self.rand = rand
        self.entries: dict[Identity, Entry] = {}

    def want(self, identity: Identity, priority: Priority, now: float) -> Entry:
        """Make sure `identity` is tracked; a pending fetch is moved up to `priority` if that is higher."""
        entry = self.entries.get(identity)
        if entry is None:
            entry = Entry(identity, priority, due_at=now)
            self.entries[identity] = entry
        elif entry.due_at is not None and priority < entry.priority:
            entry.priority = priority
            if entry.cert is None and entry.error is None:
                entry.due_at = min(entry.due_at, now)
        return entry

    def forget(self, identity: Identity) -> None:
        self.entries.pop(identity, None)

    def in_flight(self) -> int:
        return sum(1 for e in self.entries.values() if e.in_flight)

    def start_due(self, now: float) -> list[Identity]:
        """The fetches to start now (marked in flight), highest priority and earliest first."""
        room = self.max_in_flight - self.in_flight()
        if room <= 0:
            return []
        due = [e for e in self.entries.values() if not e.in_flight and e.due_at is not None and e.due_at <= now]
        due.sort(key=lambda e: (e.priority, e.due_at))
        started = due[:room]
        for entry in started:
            entry.in_flight, entry.due_at = True, None
        return [e.identity for e in started]

    def succeeded(self, identity: Identity, cert: WorkloadCert, now: float) -> None:
        entry = self.entries.get(identity)
        if entry is None:
            return  # forgotten while its fetch ran
        entry.cert, entry.error, entry.failures, entry.in_flight = cert, None, 0, False
        entry.priority = Priority.BACKGROUND
        entry.due_at = max(cert.refresh_at.timestamp(), now)

    def failed(self, identity: Identity, reason: str, now: float) -> float | None:
        """Record a failure; returns the retry delay (None if the identity was forgotten meanwhile)."""
        entry = self.entries.get(identity)
        if entry is None:
            return None
        entry.failures += 1
        entry.in_flight = False
        entry.error = reason
        if entry.valid_cert(now) is None:
            entry.cert = None
        delay = self.backoff.delay(entry.failures, self.rand())
        entry.due_at = now + delay
        return delay

    def next_due(self) -> float | None:
        """The earliest time a not-running fetch becomes due (the caller's next wake-up)."""
        times = [e.due_at for e in self.entries.values() if e.due_at is not None and not e.in_flight]
        return min(times) if times else None

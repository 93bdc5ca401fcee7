"""How long each relay of a migration pass was paused: from the start of its prepare (reading paused) until the old
instance let go of it (released to the taker) or read again (kept). Pure bookkeeping on times the caller gives, so the
summary in the pass's log line is testable without a clock (issue 14: a relay should be paused for its own hand-over
only, not for the whole pass)."""

from __future__ import annotations


class PauseClock:
    """Start and stop times per relay; `summary()` gives the distribution of the stopped ones, in milliseconds."""

    def __init__(self) -> None:
        # By id(): relays need not be hashable, and each lives (is referenced by the pass) until it is stopped.
        self._started: dict[int, float] = {}
        self._paused: list[float] = []

    def start(self, key: object, now: float) -> None:
        self._started[id(key)] = now

    def stop(self, key: object, now: float) -> None:
        """Once per started key; a key never started (or stopped already) is ignored."""
        if (began := self._started.pop(id(key), None)) is not None:
            self._paused.append(now - began)

    def summary(self) -> dict[str, float]:
        """p50/p99/max of the pauses so far (nearest rank), in ms; all 0 with none."""
        ordered = sorted(self._paused)
        if not ordered:
            return {"pause_p50_ms": 0.0, "pause_p99_ms": 0.0, "pause_max_ms": 0.0}

        def rank(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

        return {"pause_p50_ms": rank(0.5), "pause_p99_ms": rank(0.99), "pause_max_ms": round(ordered[-1] * 1000, 1)}

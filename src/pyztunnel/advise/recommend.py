"""From connection durations to `terminationGracePeriodSeconds`, with the arithmetic spelled out (pure functions).

ztunnel derives its drain from the grace period (reference/ztunnel.md §1.3): `drain = grace − 5 s` when grace > 10 s,
`max(grace − 1, 1) s` when grace ≤ 10 s. A connection still open when the drain ends is reset. So the grace period we
recommend is the smallest whole number of seconds whose drain covers the chosen quantile of connection durations plus
a margin.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

DEFAULT_QUANTILE = 99.9
DEFAULT_MARGIN_PERCENT = 10.0
DEFAULT_CURRENT_GRACE = 30


def drain_for_grace(grace: int) -> int:
    """ztunnel's drain (self_termination_deadline) for TERMINATION_GRACE_PERIOD_SECONDS=grace."""
    if grace > 10:
        return grace - 5
    return max(grace - 1, 1)


def grace_for_drain(needed_drain: float) -> int:
    """The smallest grace period (whole seconds, >= 1) whose drain is at least `needed_drain` seconds.

    drain(grace) is not monotonic (drain(10) = 9 but drain(11) = 6), so: a needed drain up to 9 s is met by
    grace = ceil(drain) + 1 (≤ 10, drain = grace − 1); anything longer needs grace = ceil(drain) + 5.
    """
    need = max(math.ceil(needed_drain - 1e-9), 1)
    if need == 1:
        return 1  # drain(1) = max(0, 1) = 1
    if need <= 9:
        return need + 1
    return need + 5


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (the smallest value with at least q % of values <= it): never below a real duration."""
    if not sorted_values:
        raise ValueError("no values")
    if q >= 100:
        return sorted_values[-1]
    rank = max(math.ceil(q / 100.0 * len(sorted_values) - 1e-9), 1)  # 99.9 % of 1000 is rank 999, not 1000
    return sorted_values[rank - 1]


@dataclasses.dataclass(frozen=True)
class Distribution:
    count: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, sorted_values: Sequence[float]) -> Distribution:
        return cls(
            len(sorted_values),
            quantile(sorted_values, 50),
            quantile(sorted_values, 90),
            quantile(sorted_values, 99),
            quantile(sorted_values, 99.9),
            sorted_values[-1],
        )


@dataclasses.dataclass(frozen=True)
class Exposure:
    """What a grace period means for these connections."""

    grace: int
    drain: int
    longer_than_drain: int  # connections that outlive the drain if it starts when they open
    share_longer: float  # of all connections, 0..1
    share_reset_random: float  # of the connections open at a random moment, the share reset (time-weighted)


def exposure(sorted_values: Sequence[float], grace: int) -> Exposure:
    """How many connections a drain of drain_for_grace(grace) cuts.

    `share_longer`: connections longer than the drain (reset if an upgrade starts as they open).
    `share_reset_random`: if the upgrade starts at a random moment, a connection of duration D is open then with
    probability ∝ D and is reset when its remaining time (uniform in [0, D]) exceeds the drain: Σ max(D − drain, 0) / Σ D.
    """
    drain = drain_for_grace(grace)
    longer = sum(1 for d in sorted_values if d > drain)
    total_time = sum(sorted_values)
    cut_time = sum(d - drain for d in sorted_values if d > drain)
    return Exposure(
        grace,
        drain,
        longer,
        longer / len(sorted_values) if sorted_values else 0.0,
        cut_time / total_time if total_time > 0 else 0.0,
    )


@dataclasses.dataclass(frozen=True)
class Recommendation:
    quantile: float
    quantile_value: float  # seconds
    margin_percent: float
    needed_drain: float  # quantile_value × (1 + margin), before rounding
    drain_seconds: int  # needed_drain rounded up to whole seconds (at least 1)
    grace: int
    resulting_drain: int  # drain_for_grace(grace) >= drain_seconds

    def explain(self) -> list[str]:
        q = f"p{self.quantile:g}"
        lines = [
            f"{q} of connection durations = {self.quantile_value:.3f} s",
            f"+ {self.margin_percent:g} % margin = {self.needed_drain:.3f} s, rounded up: the drain must last {self.drain_seconds} s",
        ]
        if self.grace > 10:
            lines.append(
                f"ztunnel drains for grace − 5 s when grace > 10 s, so grace = {self.drain_seconds} + 5 = {self.grace} s"
            )
        else:
            lines.append(
                f"ztunnel drains for max(grace − 1, 1) s when grace ≤ 10 s, so grace = {self.grace} s "
                f"(drain {self.resulting_drain} s)"
            )
        return lines


def recommend(
    sorted_values: Sequence[float], q: float = DEFAULT_QUANTILE, margin_percent: float = DEFAULT_MARGIN_PERCENT
) -> Recommendation:
    value = quantile(sorted_values, q)
    needed = value * (1 + margin_percent / 100.0)
    drain_seconds = max(math.ceil(needed - 1e-9), 1)
    grace = grace_for_drain(drain_seconds)
    return Recommendation(q, value, margin_percent, needed, drain_seconds, grace, drain_for_grace(grace))


def rollout_seconds(grace: int, nodes: int, startup: float) -> float:
    """Upper bound for a one-node-at-a-time rollout: each node waits out the full grace period, then the new proxy starts.

    With long-lived connections the old proxy uses its whole drain, and Kubernetes waits up to the grace period.
    """
    return nodes * (grace + startup)

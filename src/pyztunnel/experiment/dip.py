"""What an operator sees of an upgrade second by second: throughput and p99 during the rollout against the steady
state of the seconds just before it (issue 14's upgrade dip). Pure: input is a run's per-second timeline (the load
generator's `Timeline`, seconds since the load started) and the upgrade's window in the same clock.

Targets: every second of the rollout keeps >= 90 % of the steady-state calls/s and a p99 <= 1.5x the steady-state
p99, and no request fails.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

MIN_THROUGHPUT = 0.9  # of the steady state's calls/s, every second of the rollout
MAX_P99 = 1.5  # x the steady state's p99, every second of the rollout


@dataclasses.dataclass(frozen=True)
class Second:
    index: int  # seconds since the load started
    calls: int
    p99_ms: float
    throughput: float  # calls / the steady state's calls/s
    p99: float  # p99 / the steady state's p99


@dataclasses.dataclass(frozen=True)
class Dip:
    steady_calls: float  # median calls/s over the steady seconds
    steady_p99_ms: float  # median of their per-second p99
    steady_seconds: int
    rollout: list[Second]
    failed: int

    @property
    def worst_throughput(self) -> float:
        return min((s.throughput for s in self.rollout), default=1.0)

    @property
    def worst_p99(self) -> float:
        return max((s.p99 for s in self.rollout), default=1.0)

    @property
    def seconds_below(self) -> int:
        """Rollout seconds under the throughput target."""
        return sum(1 for s in self.rollout if s.throughput < MIN_THROUGHPUT)

    @property
    def seconds_above(self) -> int:
        """Rollout seconds over the p99 target."""
        return sum(1 for s in self.rollout if s.p99 > MAX_P99)

    @property
    def met(self) -> bool:
        return bool(self.rollout) and not self.seconds_below and not self.seconds_above and self.failed == 0


def analyse(
    timeline: Sequence[Mapping[str, Any]], upgrade_start: float, upgrade_end: float, steady_s: int, failed: int
) -> Dip:
    """The steady state is the `steady_s` whole seconds that ended before the upgrade began; the rollout is every
    second that overlaps [upgrade_start, upgrade_end). A second with no call counts as 0 calls/s."""
    by_index = {int(e["Second"]): e for e in timeline}
    first_rollout = int(upgrade_start)
    steady = [by_index.get(i, {}) for i in range(max(0, first_rollout - steady_s), first_rollout)]
    steady_calls = statistics.median(int(e.get("Calls", 0)) for e in steady) if steady else 0.0
    steady_p99 = statistics.median(float(e.get("P99", 0.0)) * 1000 for e in steady) if steady else 0.0
    rollout = []
    for i in range(first_rollout, max(first_rollout + 1, int(-(-upgrade_end // 1)))):
        entry = by_index.get(i, {})
        calls, p99_ms = int(entry.get("Calls", 0)), float(entry.get("P99", 0.0)) * 1000
        rollout.append(
            Second(
                i,
                calls,
                p99_ms,
                calls / steady_calls if steady_calls else 0.0,
                p99_ms / steady_p99 if steady_p99 else 1.0,
            )
        )
    return Dip(steady_calls, steady_p99, len(steady), rollout, failed)


def table(dip: Dip) -> str:
    """Markdown: the steady state, then one row per rollout second, targets marked."""
    lines = [
        f"Steady state (the {dip.steady_seconds} s before the rollout, medians): {dip.steady_calls:,.0f} calls/s,"
        f" p99 {dip.steady_p99_ms:.1f} ms.",
        "",
        "| second | calls/s | vs steady (target >= 0.90) | p99 ms | vs steady (target <= 1.5) |",
        "|---|---|---|---|---|",
    ]
    for s in dip.rollout:
        low = "" if s.throughput >= MIN_THROUGHPUT else " **below**"
        high = "" if s.p99 <= MAX_P99 else " **above**"
        lines.append(f"| {s.index} | {s.calls:,} | {s.throughput:.2f}{low} | {s.p99_ms:.1f} | {s.p99:.2f}{high} |")
    return "\n".join(lines)


def summary(dip: Dip) -> str:
    verdict = "met" if dip.met else "NOT met"
    return (
        f"rollout {len(dip.rollout)} s: worst second {dip.worst_throughput:.2f}x steady throughput"
        f" ({dip.seconds_below} s below {MIN_THROUGHPUT:.2f}), worst p99 {dip.worst_p99:.2f}x"
        f" ({dip.seconds_above} s above {MAX_P99:g}x), {dip.failed} failed: targets {verdict}"
    )

"""The upgrade dip's analysis (experiment/dip.py, pure) and bench_upgrade_dip's flags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from benchmarks.bench_upgrade_dip import options

from pyztunnel.experiment import dip


def _timeline(calls: Sequence[int], p99_ms: Sequence[float]) -> list[dict[str, Any]]:
    return [{"Second": i, "Calls": c, "P99": p / 1000} for i, (c, p) in enumerate(zip(calls, p99_ms, strict=True))]


def test_steady_state_is_the_seconds_before_the_rollout_and_each_rollout_second_is_judged() -> None:
    # 0-1 ramp up, 2-5 steady (1000 calls/s, p99 10 ms), rollout from 6.3 to 8.5 (seconds 6, 7, 8), then the tail.
    calls = [200, 600, 1000, 990, 1010, 1000, 950, 700, 1000, 1000]
    p99 = [50, 20, 10, 10, 11, 10, 12, 30, 10, 10]
    found = dip.analyse(_timeline(calls, p99), 6.3, 8.5, steady_s=4, failed=0)
    assert found.steady_seconds == 4 and found.steady_calls == 1000 and found.steady_p99_ms == 10
    assert [s.index for s in found.rollout] == [6, 7, 8]
    assert [s.throughput for s in found.rollout] == [0.95, 0.7, 1.0]
    assert found.worst_throughput == 0.7 and found.worst_p99 == 3.0
    assert found.seconds_below == 1 and found.seconds_above == 1 and not found.met
    table = dip.table(found)
    assert "| 7 | 700 | 0.70 **below** | 30.0 | 3.00 **above** |" in table
    assert "| 6 | 950 | 0.95 | 12.0 | 1.20 |" in table
    assert "targets NOT met" in dip.summary(found)


def test_a_flat_rollout_meets_the_targets_unless_a_request_failed() -> None:
    timeline = _timeline([1000] * 8, [10.0] * 8)
    assert dip.analyse(timeline, 4.0, 6.0, steady_s=3, failed=0).met
    assert not dip.analyse(timeline, 4.0, 6.0, steady_s=3, failed=1).met


def test_a_second_without_calls_is_a_full_stall() -> None:
    timeline = [e for e in _timeline([1000] * 8, [10.0] * 8) if e["Second"] != 5]
    found = dip.analyse(timeline, 4.5, 6.2, steady_s=3, failed=0)
    assert [(s.index, s.calls, s.throughput) for s in found.rollout] == [(4, 1000, 1.0), (5, 0, 0.0), (6, 1000, 1.0)]
    assert not found.met


def test_flags() -> None:
    assert options([]) == {"connections": "1000", "steady": "10", "grace": "10", "name": "tdip", "startup_nice": "0"}
    chosen = options(["--quick", "--name=x1", "--startup-nice=10"])
    assert chosen["connections"] == "100" and chosen["steady"] == "3" and chosen["name"] == "x1"
    assert chosen["startup_nice"] == "10"
    with pytest.raises(SystemExit, match="unknown flag"):
        options(["--stedy=3"])

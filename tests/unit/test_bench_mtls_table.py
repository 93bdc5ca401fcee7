"""The pure parts of benchmarks/bench_mtls.py: flags, paired ratios, the verdict per row."""

from __future__ import annotations

from benchmarks.bench_mtls import Options, build_rows, paired_ratio, render


def test_options() -> None:
    assert Options.parse([]) == Options(duration=3, idle=1000, haproxy_threads=0, rounds=3)
    assert Options.parse(["--quick"]) == Options(duration=1, idle=300, haproxy_threads=0, rounds=1)
    assert Options.parse(["--quick", "--idle=50", "--rounds=2"]).idle == 50
    assert Options.parse(["--haproxy-threads=2"]).haproxy_threads == 2


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    # A neighbour slowed round 2 for both sides: the paired ratio stays 0.5, a ratio of medians would not.
    assert paired_ratio([5.0, 1.0, 6.0], [10.0, 2.0, 12.0]) == 0.5
    assert paired_ratio([1.0, 2.0], [0.0, -1.0]) is None  # peer within noise of zero: no ratio
    assert paired_ratio([3.0, 1.0], [1.0, 0.0]) == 3.0


def _results(**pyz: float) -> dict[str, dict[str, float | None]]:
    base = {
        "bulk_gbps": 2.0,
        "keepalive_rps": 1000.0,
        "newconn_rps": 100.0,
        "added_p50_ms": 0.2,
        "added_p99_ms": 1.0,
        "cpu_max_proxy": 0.03,
        "cpu_both": 0.06,
        "runq_wait_us": 10.0,
        "idle_kib": 50.0,
        "idle_kib_client": 30.0,
    }
    return {"direct": {}, "haproxy": dict(base), "pyztunnel": {**base, **pyz}}


def test_verdicts() -> None:
    results = _results(bulk_gbps=2.0, newconn_rps=250.0, cpu_max_proxy=0.25, idle_kib=16.0)
    ratios = {"added_p99_ms": None, "added_p50_ms": 1.2, "cpu_max_proxy": 25 / 3}
    rows = {r.measure: r for r in build_rows(results, ["direct", "haproxy", "pyztunnel"], ratios)}
    assert rows["bulk, 1 connection"].met is True  # 1.0x meets >= 1.0x
    assert rows["new connections/s"].met is False  # 2.5x < 3x
    assert rows["CPU per 1000 rps, busiest proxy"].met is False  # 8.3x haproxy's > 1.0x
    assert rows["added latency p50 @1000 rps"].met is True  # 1.2x meets <= 1.2x (issue 14)
    assert rows["memory per idle connection, both proxies"].met is True  # 16 KiB meets <= 16
    assert rows["added latency p99 @1000 rps"].met is None  # no ratio: not judged, never "met"
    assert not rows["CPU per 1000 rps, both proxies"].judged
    table = render(list(rows.values()), ["direct", "haproxy", "pyztunnel"])
    assert "| new connections/s | conn/s | - | 100 | 250 | 2.50x | >= 3x | NO |" in table
    assert "| n/a |" in table

"""Smoke test of benchmarks/bench_xds.py: the whole harness at a small scale (no timed assertion: timing belongs in
the benchmark). Every measure exists, the churn pushes were all ACKed, and the proxies are gone afterwards."""

from __future__ import annotations

import subprocess

from benchmarks import bench_xds


def _bench_proxies() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "pzt-bench-xds-" in line]


def test_bench_xds_smoke() -> None:
    result = bench_xds.run(["--workloads=300", "--services=10", "--churn-seconds=1", "--pushes-per-second=5"])
    over_xds, from_file = result["300"]["xds"], result["300"]["file"]
    assert over_xds["load_s"] > 0 and over_xds["load_cpu_s"] >= 0
    assert over_xds["churn_acked"] == over_xds["churn_pushes"] == 5
    assert over_xds["churn_ack_p99_ms"] >= over_xds["churn_ack_p50_ms"] > 0
    assert from_file["load_s"] > 0 and from_file["reloads"] >= 1
    assert _bench_proxies() == []

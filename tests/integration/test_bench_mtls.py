"""Smoke test of benchmarks/bench_mtls.py: the whole harness with 1 s measures and a few idle connections.

It checks that every measure produced a positive number for every side that has it (not the targets: timing belongs
in the benchmark, not in tests) and that nothing is left running.
"""

from __future__ import annotations

import shutil
import subprocess

from benchmarks import bench_mtls

from tests.conftest import require


def _children() -> set[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "pzt-bench-mtls-" in line or "workloads.yaml" in line}


def test_bench_mtls_smoke() -> None:
    for tool in ("haproxy", "wrk", "iperf3", "nginx"):
        require(shutil.which(tool) is not None or shutil.which(tool, path="/usr/sbin") is not None, f"'{tool}'")
    before = _children()
    result = bench_mtls.run(["--duration=1", "--rounds=1", "--idle=20"])
    results = result["results"]
    assert isinstance(results, dict)
    assert set(results) == {"direct", "haproxy", "pyztunnel"}
    for side, values in results.items():
        for key in ("bulk_gbps", "keepalive_rps", "newconn_rps", "p50_ms", "p99_ms"):
            assert values[key] > 0, (side, key, values)
        if side == "direct":
            assert values["idle_kib"] is None and values["cpu_both"] is None
        else:
            for key in ("cpu_both", "added_p50_ms"):
                assert values[key] is not None and values[key] > 0, (side, key, values)
            # An RSS delta over 20 connections can round to 0 pages; it must exist and not be absurd.
            assert values["idle_kib"] is not None and 0 <= values["idle_kib"] < 1024, (side, values)
    rows = result["rows"]
    assert isinstance(rows, list) and len(rows) == 10
    assert _children() == before, "the harness left processes running"

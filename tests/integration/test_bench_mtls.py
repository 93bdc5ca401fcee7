"""Smoke test of benchmarks/bench_mtls.py: the whole harness with 1 s measures and a few idle connections.

It checks that every measure produced a positive number for every side that has it (not the targets: timing belongs
in the benchmark, not in tests) and that nothing is left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from benchmarks import bench_mtls

from tests.conftest import require


def _children() -> set[str]:
    """The harness's processes that are this test's descendants, or orphans (a leak whose parent is gone); another
    run's live harness on the same machine is not ours to count."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    parent: dict[int, int] = {}
    args: dict[int, str] = {}
    for line in out.splitlines():
        pid, ppid, *rest = line.split(None, 2)
        parent[int(pid)], args[int(pid)] = int(ppid), rest[0] if rest else ""

    def ours(pid: int) -> bool:
        for _ in range(64):
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
            if pid <= 1:
                return False
        return False

    return {
        text
        for pid, text in args.items()
        if ("pzt-bench-mtls-" in text or "workloads.yaml" in text) and (ours(pid) or parent.get(pid) == 1)
    }


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

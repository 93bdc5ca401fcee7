"""Smoke of benchmarks/bench_upgrade_dip.py on a real cluster: a short keep-alive load through the gateway while every
node's proxy is rolled, and the per-second table against the steady state. No timed assertion: only that the whole
harness ran, measured every second of the rollout and failed no request (that is the product's promise, not timing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks import bench_upgrade_dip

NAME = f"tdip{os.getpid() % 100000}"  # unique per run: a concurrent suite must not remove ours


def test_upgrade_dip_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        result = bench_upgrade_dip.run(["--quick", "--connections=20", f"--name={NAME}"])
    finally:
        subprocess.run([sys.executable, "-m", "pyztunnel", "cluster", "down", "--name", NAME], timeout=120)
    assert result["upgrade_error"] is None
    assert result["failed"] == 0 and result["calls"] > 0
    assert result["steady_calls_per_s"] > 0 and result["steady_p99_ms"] > 0
    assert result["rollout"], "every second of the rollout is in the table"
    assert all(s["calls"] >= 0 for s in result["rollout"])
    out = tmp_path / "bench-results" / "upgrade_dip"
    text = (out / "dip.md").read_text()
    assert "| second | calls/s |" in text and "Steady state (the 3 s before the rollout" in text
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"

"""`pyztunnel experiment seed --quick` end to end on a real cluster: it runs and writes its whole report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NAME = "texp"


def test_quick_experiment_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    argv = [sys.executable, "-m", "pyztunnel", "experiment", "seed", "--quick", "--scenarios", "ztunnel,pyztunnel"]
    argv += ["--out", str(out), "--name", NAME, "--duration", "4s"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run([sys.executable, "-m", "pyztunnel", "cluster", "down", "--name", NAME], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = (out / "report.md").read_text()
    assert report.count("| ztunnel's behaviour") == 1 and report.count("| pyztunnel's defaults") == 1
    assert "`pyztunnel experiment seed --quick --scenarios ztunnel,pyztunnel" in report
    assert "Code 418 :" in report and "Sockets used:" in report
    assert "Failed requests per upgrade, measured at 100 connections" in report
    assert "| ztunnel | none (ztunnel) |" in report
    assert "| pyztunnel | handoff, migrate_req, migration, hbone_resume |" in report
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    assert [r["scenario"]["key"] for r in results] == ["ztunnel", "pyztunnel"]
    for key in ("ztunnel", "pyztunnel"):
        run = json.loads((out / "runs" / f"{key}-c100-1.json").read_text())
        assert run["DurationHistogram"]["Count"] > 0 and run["RetCodes"].get("418", 0) > 0
        assert run["Timeline"], "the load generator's per-second timeline is what the plot is drawn from"
    for r in results:
        assert 0 < r["upgrade_start_s"] < r["upgrade_end_s"]
        assert r["gateway_errors"] is not None and r["gateway_errors"] >= 0  # counted from the gateway's error log
    assert [r["scenario"]["hbone_resume"] for r in results] == [False, True]
    for key in ("ztunnel", "pyztunnel"):  # the cluster's logs outlive it
        assert any((out / "logs" / key).glob("gateway-*.log")), sorted((out / "logs" / key).iterdir())

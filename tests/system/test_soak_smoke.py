"""The soak benchmark's smoke run (`make bench BENCH_ARGS=soak` is the real one, 20 upgrades at -c 1000): one rolling
upgrade of every node under a small mixed load. No timed assertion: what must hold is that nothing was lost."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_soak


def test_one_rolling_upgrade_under_the_mixed_load_loses_nothing(tmp_path: Path) -> None:
    result = bench_soak.run(["--quick", f"--out={tmp_path}"])
    assert len(result["upgrades"]) == 1
    assert result["totals"]["bytes_echoed"] > 0  # the streams ran
    (upgrade,) = result["upgrades"]
    assert upgrade["calls"] > 0
    assert (upgrade["failed"], upgrade["retried"], upgrade["broken"], upgrade["bytes_lost"]) == (0, 0, 0, 0), upgrade
    assert result["totals"]["bytes_lost"] == 0 and result["totals"]["bytes_corrupted"] == 0, result["totals"]

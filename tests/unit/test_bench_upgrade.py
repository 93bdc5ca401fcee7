"""The upgrade benchmark's flags (pure): the matrix at the issue's 1000 connections unless told otherwise."""

from __future__ import annotations

import pytest
from benchmarks.bench_upgrade import options


def test_defaults_run_the_matrix_at_1000_connections() -> None:
    assert options([]) == {"connections": "1000", "duration": "12", "scenarios": "mechanisms"}


def test_quick_is_short_and_flags_override_it() -> None:
    quick = options(["--quick"])
    assert quick["connections"] == "100" and quick["duration"] == "8" and quick["scenarios"] == "mechanisms"
    chosen = options(["--quick", "--connections=300", "--gateway-retry", "--scenarios=ztunnel,migration"])
    assert chosen["connections"] == "300" and chosen["duration"] == "8"
    assert chosen["gateway_retry"] == "true" and chosen["scenarios"] == "ztunnel,migration"


def test_an_unknown_flag_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown flag '--conections=5'"):
        options(["--conections=5"])

"""Smoke test of `python -m benchmarks.profile_mtls memory`: both proxies under tracemalloc, a few idle connections."""

from __future__ import annotations

import shutil

from benchmarks import profile_mtls

from tests.conftest import require


def test_profile_memory_smoke() -> None:
    for tool in ("iperf3", "nginx"):
        require(shutil.which(tool) is not None or shutil.which(tool, path="/usr/sbin") is not None, f"'{tool}'")
    result = profile_mtls.memory(["--connections=20", "--top=40"])
    for side in ("client", "server"):
        shares = result[side]
        assert isinstance(shares, dict)
        assert 0 < shares["bytes"] < 1_000_000, (side, shares)
        sites = [where for where, _, _ in shares["sites"]]
        # What every idle HBONE connection holds: the proxy's own objects (its stream leg, made in h2conn.py, its
        # record) and h2's stream.
        assert any(where.startswith("pyztunnel/proxy/h2conn.py:") for where in sites), (side, sites)
        assert any(where.startswith("pyztunnel/proxy/telemetry.py:") for where in sites), (side, sites)
        assert any("h2/stream.py:" in where for where in sites), (side, sites)

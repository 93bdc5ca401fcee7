"""`pyztunnel upgrade` against the real local cluster controller (the contract of docs/architecture.md), with a
stand-in proxy that only answers readiness, so that the rollout logic is checked apart from the proxy itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyztunnel.rollout.testing import STAND_IN_PROXY

NAME = f"tlcup{os.getpid() % 100000}"  # unique per run: a concurrent suite must not remove ours


def spec(stand_in: Path) -> str:
    return textwrap.dedent(
        f"""
        nodes: [{{name: node-1}}, {{name: node-2}}]
        deployments:
          - {{name: web, namespace: default, mesh: false, replicas: 2, command: [sleep, infinity],
              terminationGracePeriodSeconds: 1}}
        proxy: {{version: v1, command: [{sys.executable}, {stand_in}], terminationGracePeriodSeconds: 2}}
        agent: {{enabled: false}}
        ca: {{enabled: false}}
        """
    )


def pyz(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyztunnel", *args], env=env, capture_output=True, text=True, timeout=180, check=check
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN_PROXY)
    (tmp_path / "spec.yaml").write_text(spec(stand_in))
    env = {**os.environ, "PYZTUNNEL_STATE_DIR": str(tmp_path / "state")}
    try:
        up = pyz("cluster", "up", "--name", NAME, "-f", str(tmp_path / "spec.yaml"), env=env, check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        yield env, tmp_path / "state" / NAME
    finally:
        pyz("cluster", "down", "--name", NAME, env=env, check=False)


def state(root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((root / "state.json").read_text())
    return loaded


def proxies(root: Path) -> list[tuple[str, str, bool]]:
    return sorted((p["node"], p["version"], p["ready"]) for p in state(root)["proxies"] if p["phase"] != "Terminating")


def test_rolling_drain_and_a_never_ready_version(cluster: tuple[dict[str, str], Path]) -> None:
    env, root = cluster
    done = pyz("upgrade", "--name", NAME, "--version", "v2", env=env)
    assert "upgrade to v2 done on 2 node(s)" in done.stdout
    assert proxies(root) == [("node-1", "v2", True), ("node-2", "v2", True)]

    pyz("upgrade", "--name", NAME, "--version", "v3", "--strategy", "drain", "--grace", "3", env=env)
    after = state(root)
    assert proxies(root) == [("node-1", "v3", True), ("node-2", "v3", True)]
    # OnDelete during the drain; the strategy before it is put back at the end.
    assert after["daemonset"]["updateStrategy"]["type"] == "RollingUpdate"
    assert after["daemonset"]["terminationGracePeriodSeconds"] == 3
    assert not any(n["cordoned"] for n in after["nodes"])
    # node-2 was drained last: its pods moved to node-1.
    assert {p["node"] for p in after["pods"]} == {"node-1"}

    failed = pyz("upgrade", "--name", NAME, "--version", "broken", "--ready-timeout", "2s", env=env, check=False)
    assert failed.returncode == 2
    assert "not ready within 2s: 0 restarts" in failed.stderr
    assert "deleted it, the old proxy keeps serving (previous template restored)" in failed.stderr
    assert "cordoned nodes: none" in failed.stdout
    assert proxies(root) == [("node-1", "v3", True), ("node-2", "v3", True)]
    assert state(root)["daemonset"]["version"] == "v3"
    assert state(root)["daemonset"]["terminationGracePeriodSeconds"] == 3


def test_a_canary_whose_connections_fail_halts_and_rolls_back(cluster: tuple[dict[str, str], Path]) -> None:
    """The canary proxy is Ready but its own metrics count failed connections (the stand-in proxy of a version
    named failing-…): the bake halts it, the whole previous template comes back and the canary node runs the good
    version again; the other node was never touched."""
    env, root = cluster
    before = {p["node"]: p["name"] for p in state(root)["proxies"]}
    failed = pyz(
        "upgrade",
        "--name",
        NAME,
        "--version",
        "failing-v2",
        "--canary",
        "1",
        "--bake",
        "20s",
        "--canary-interval",
        "0.5s",
        "--auto-rollback",
        env=env,
        check=False,
    )
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "canary halted after" in failed.stderr and "on node-1" in failed.stderr
    assert "connection failures" in failed.stderr and "rolled back: node-1 run v1 again" in failed.stderr
    assert proxies(root) == [("node-1", "v1", True), ("node-2", "v1", True)]
    assert state(root)["daemonset"]["version"] == "v1"
    assert {p["node"]: p["name"] for p in state(root)["proxies"]}["node-2"] == before["node-2"]

"""`pyztunnel cluster` errors a user can cause: one line, exit code 2 (no root needed to see them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyztunnel", "cluster", *args], capture_output=True, text=True, timeout=60
    )


def test_invalid_spec_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes:\n  - name: node-1\ndeployments:\n  - name: x\n    command: [a]\n    replicas: -1\n")
    out = run("up", "-f", str(path), "--name", "tbad")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {path}:6: deployments[0].replicas: Input should be greater than or equal to 0 (got -1)"
    ]


def test_bad_cluster_name() -> None:
    out = run("status", "--name", "Bad_Name")
    assert out.returncode == 2
    assert "cluster name 'Bad_Name' is not valid" in out.stderr


def test_status_of_a_missing_cluster(tmp_path: Path) -> None:
    out = run("status", "--name", "tnone", "--state-dir", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: cluster 'tnone' is not running (no controller at {tmp_path}/tnone/controller.sock); "
        "start it with 'pyztunnel cluster up --name tnone'"
    )

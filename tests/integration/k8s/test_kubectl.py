"""Real kubectl against the same stand-in the backend is tested on: the objects read back as kubectl expects
(`get ds`, `rollout status`, `get nodes` with SchedulingDisabled after the backend's cordon, `get pods -o wide`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pyztunnel.k8s.backend import connect
from tests.conftest import require
from tests.integration.k8s.conftest import Kube


@pytest.fixture
def kubectl(kube: Kube, tmp_path: Path) -> Callable[..., str]:
    path = shutil.which("kubectl")
    require(path is not None, "kubectl (make install puts one in .venv when the machine has none)")
    assert path is not None

    def run(*args: str) -> str:
        env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
        done = subprocess.run(
            [path, "--cache-dir", str(tmp_path / "kcache"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def test_kubectl_reads_what_the_backend_did(kube: Kube, kubectl: Callable[..., str]) -> None:
    run = kubectl
    ds = run("get", "ds", "-n", "istio-system")
    assert ds.split("\n")[0].split() == [
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "NODE",
        "SELECTOR",
        "AGE",
    ]
    assert ds.split("\n")[1].split()[:6] == ["ztunnel", "3", "3", "3", "3", "3"]

    assert kube.upgrade("--version", "1.31.0").code == 0
    status = run("rollout", "status", "ds/ztunnel", "-n", "istio-system", "--timeout", "30s")
    assert 'daemon set "ztunnel" successfully rolled out' in status
    wide = run("get", "pods", "-n", "istio-system", "-o", "wide")
    assert "NODE" in wide.split("\n")[0]
    assert {line.split()[6] for line in wide.strip().split("\n")[1:] if "Running" in line} == {
        "node-1",
        "node-2",
        "node-3",
    }
    images = run(
        "get", "ds", "ztunnel", "-n", "istio-system", "-o", "jsonpath={.spec.template.spec.containers[0].image}"
    )
    assert images == "gcr.io/istio-release/ztunnel:1.31.0"

    async def cordon() -> None:
        async with connect(kube.kubeconfig, None, None) as backend:
            await backend.cordon("node-2")

    asyncio.run(cordon())
    nodes = run("get", "nodes")
    assert "node-2   Ready,SchedulingDisabled" in nodes and "node-1   Ready " in nodes
    revisions = run("get", "controllerrevisions", "-n", "istio-system", "-o", "name")
    assert len(revisions.split()) == 2

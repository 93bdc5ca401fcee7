"""`pyztunnel ca serve|issue|token` as processes: a CA started, used by the client, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

from pyztunnel.identity.client import CaClient
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.identity.spiffe import Identity

BOUND = 20.0


def pyztunnel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyztunnel", *args], capture_output=True, text=True, timeout=60)


def test_issue_writes_three_files(tmp_path: Path) -> None:
    out = pyztunnel(
        "ca", "issue", "spiffe://cluster.local/ns/a/sa/b", "--out", str(tmp_path / "o"), "--state-dir", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["cert-chain.pem", "key.pem", "root-cert.pem"]
    assert stat.S_IMODE((tmp_path / "o" / "key.pem").stat().st_mode) == 0o600
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "o" / "root-cert.pem"), str(tmp_path / "o" / "cert-chain.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr


def test_issue_bad_identity_is_one_line_exit_2(tmp_path: Path) -> None:
    out = pyztunnel("ca", "issue", "spiffe://x/ns/a", "--out", str(tmp_path), "--state-dir", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "invalid SPIFFE identity" in out.stderr


async def test_serve_issue_and_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "ca"
    token = pyztunnel("ca", "token", "node-a", "--state-dir", str(state)).stdout.strip()
    workloads = tmp_path / "workloads.yaml"
    workloads.write_text("workloads:\n- {name: p, namespace: ns, serviceAccount: sa, node: node-a, workloadIps: []}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pyztunnel",
        "ca",
        "serve",
        "--state-dir",
        str(state),
        "--listen",
        "127.0.0.1:0",
        "--workloads",
        str(workloads),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        port = 0
        while not port:
            line = (await asyncio.wait_for(proc.stderr.readline(), BOUND)).decode()
            assert line, "ca serve exited before serving"
            match = re.search(r"CA serving.*port=(\d+)", line)
            port = int(match.group(1)) if match else 0
        settings = CaClientSettings(
            ca_address=f"https://localhost:{port}", ca_root_ca=str(state / "root-cert.pem"), auth_token=token
        )
        client = CaClient(settings, environ={})
        try:
            identity = Identity("cluster.local", "ns", "sa")
            assert (await asyncio.wait_for(client.fetch(identity), BOUND)).leaf_identity() == identity
        finally:
            await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), BOUND) == 0
        rest = (await proc.stderr.read()).decode()
        assert "certificate issued" in rest
        assert "CA stopping" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

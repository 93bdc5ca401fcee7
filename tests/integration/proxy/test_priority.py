"""`PYZTUNNEL_STARTUP_NICE`: a proxy process starts at a lower CPU priority, every one of its threads, and returns to
full priority once ready (proxy/priority.py). Needs CAP_SYS_NICE to return (root in CI)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.proxy.harness import config_text, free_port, loopback_ips
from tests.integration.proxy.streams import StreamServer
from tests.integration.proxy.test_migration import tear_down
from tests.integration.proxy.test_process import Proc, start_ready, write_certs


def nice_values(pid: int) -> set[int]:
    """The nice value of every thread of `pid` (field 19 of /proc/PID/task/TID/stat)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        out.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return out


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    server = StreamServer()
    try:
        yield started
    finally:
        await tear_down(started, server)


def common(tmp: Path, b_ip: str, *source: str) -> list[str]:
    write_certs(tmp / "certs")
    return [
        *source,
        *("--cert-dir", str(tmp / "certs"), "--startup-nice", "10"),
        *("--readiness-addr", "", "--stats-addr", "", "--admin-addr", "", "--workload-wait", "0s"),
        *("--direct-inbound", b_ip, "--handoff-socket", str(tmp / "handoff.sock")),
    ]


async def test_a_proxy_that_is_not_ready_yet_stays_at_the_lower_priority(procs: list[Proc], tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root (CAP_SYS_NICE)")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    # Its config source never answers: never ready.
    nowhere = f"127.0.0.1:{free_port('127.0.0.1')}"
    _, b_ip = loopback_ips()
    proc = await start_ready(procs, tmp_path, "waiting", *common(tmp_path, b_ip, "--xds-address", nowhere))
    assert nice_values(proc.proc.pid) == {min(19, base + 10)}
    assert not any("back to full CPU priority" in line for line in proc.lines)


async def test_a_ready_proxy_returns_to_full_priority_in_every_thread(procs: list[Proc], tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root (CAP_SYS_NICE)")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    a_ip, b_ip = loopback_ips()
    config = tmp_path / "workloads.yaml"
    config.write_text(config_text(a_ip, b_ip))
    proc = await start_ready(procs, tmp_path, "ready", *common(tmp_path, b_ip, "--local-xds-path", str(config)))
    await proc.wait_for_line("ready: back to full CPU priority")
    assert nice_values(proc.proc.pid) == {base}

"""ZDS snapshot and pod plumbing speed of the node agent (root: real network namespaces).

1. Snapshot: the agent's ZDS server sends 100 pods (AddWorkload + a real netns fd each) to a client that ACKs each
   (the probe client, running the real client state machine), then SnapshotSent. Target ≤ 1 s.
2. Plumbing: 100 mesh pods POSTed to the agent API (a `pyztunnel agent` process in a node netns, a probe proxy
   connected): veth, address, route, sysctl, nft table, policy route, Add + Ack. Per-pod milliseconds.

Peer: none. No other implementation of ZDS's server side exists outside istio-cni (Go, needs Kubernetes), so the
numbers are absolute, against the target only.

`python -m benchmarks zds [--pods=N]`
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from pyztunnel.agent.zds_probe import ZdsProbe
from pyztunnel.agent.zds_server import SnapshotEntry, ZdsServer
from pyztunnel.protocols import zds

PREFIX = "pzt-tbench-"
NODE = PREFIX + "node"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _pod_ns(i: int) -> str:
    return f"{PREFIX}pod{i}"


def _cleanup(count: int) -> None:
    for name in [NODE] + [_pod_ns(i) for i in range(count)]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


async def bench_snapshot(count: int, rounds: int) -> dict[str, Any]:
    fds = [os.open(f"/run/netns/{_pod_ns(i)}", os.O_RDONLY | os.O_CLOEXEC) for i in range(count)]
    info = zds.WorkloadInfo("pod", "default", "sa")
    entries: list[SnapshotEntry] = [(zds.AddWorkload(f"uid-{i}", info), fd) for i, fd in enumerate(fds)]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ZdsServer(Path(tmp) / "ztunnel.sock", lambda: entries)
        await server.start()
        try:
            for _ in range(rounds):
                probe = ZdsProbe()
                started = time.perf_counter()
                await probe.connect(server.path)
                got = await asyncio.wait_for(probe.sync(), 30)
                times.append(time.perf_counter() - started)
                probe.close()
                assert len(got) == count + 1 and all(r.netns is not None for r in got[:-1])
        finally:
            await server.close()
            for fd in fds:
                os.close(fd)
    best, median = min(times), statistics.median(times)
    print(
        f"snapshot of {count} pods with netns fds: median {median * 1000:.1f} ms, best {best * 1000:.1f} ms "
        f"({median / count * 1e6:.0f} µs/pod) over {rounds} rounds; target ≤ 1000 ms: "
        f"{'met' if median <= 1.0 else 'MISSED'}"
    )
    return {
        "snapshot_pods": count,
        "snapshot_median_ms": round(median * 1000, 2),
        "snapshot_best_ms": round(best * 1000, 2),
    }


async def bench_plumbing(count: int, run_dir: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        NODE,
        sys.executable,
        "-m",
        "pyztunnel",
        "agent",
        "--run-dir",
        str(run_dir),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(run_dir / "cni.sock")))
    probe = ZdsProbe()
    serving: asyncio.Task[None] | None = None
    try:
        deadline = time.monotonic() + 10
        while not (run_dir / "ztunnel.sock").exists() or not (run_dir / "cni.sock").exists():
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError("agent did not start")
            await asyncio.sleep(0.02)
        await probe.connect(run_dir / "ztunnel.sock")
        await probe.sync()
        serving = asyncio.ensure_future(probe.serve())

        def doc(i: int) -> dict[str, Any]:
            return {
                "uid": f"uid-{i}",
                "name": f"pod{i}",
                "namespace": "default",
                "serviceAccount": "sa",
                "netns": _pod_ns(i),
                "ip": f"10.244.9.{i + 2}",
                "prefixLen": 24,
                "gateway": "10.244.9.1",
                "mesh": True,
            }

        async def post(i: int) -> float:
            started = time.perf_counter()
            async with session.post("http://agent/v1/pods", json=doc(i)) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"POST failed: {resp.status} {body}")
            return time.perf_counter() - started

        async def delete(i: int) -> float:
            started = time.perf_counter()
            async with session.delete(f"http://agent/v1/pods/uid-{i}") as resp:
                await resp.read()
            return time.perf_counter() - started

        per_pod = [await post(i) for i in range(count)]
        deletes = [await delete(i) for i in range(count)]
        # The same with 8 POSTs in flight, as a controller starting a deployment would send them.
        gate = asyncio.Semaphore(8)

        async def gated(i: int) -> float:
            async with gate:
                return await post(i)

        started = time.perf_counter()
        await asyncio.gather(*(gated(i) for i in range(count)))
        concurrent_total = time.perf_counter() - started
        for i in range(count):
            await delete(i)
    finally:
        if serving is not None:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        probe.close()
        await session.close()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    ms = sorted(t * 1000 for t in per_pod)
    p50, p95 = statistics.median(ms), ms[int(len(ms) * 0.95) - 1]
    del_p50 = statistics.median(deletes) * 1000
    print(
        f"plumbing {count} mesh pods through the API (veth, address, route, sysctl, nft, policy route, ZDS Add+Ack): "
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms, total {sum(ms) / 1000:.2f} s; "
        f"delete p50 {del_p50:.1f} ms"
    )
    print(
        f"plumbing {count} mesh pods with 8 POSTs in flight: total {concurrent_total:.2f} s "
        f"({concurrent_total / count * 1000:.1f} ms/pod)"
    )
    return {
        "plumb_pods": count,
        "plumb_p50_ms": round(p50, 2),
        "plumb_p95_ms": round(p95, 2),
        "plumb_total_s": round(sum(ms) / 1000, 2),
        "delete_p50_ms": round(del_p50, 2),
        "plumb_concurrent8_total_s": round(concurrent_total, 2),
    }


def run(args: list[str]) -> dict[str, Any]:
    count = 100
    for arg in args:
        if arg.startswith("--pods="):
            count = int(arg.split("=", 1)[1])
    if os.geteuid() != 0:
        print("skipped: needs root (network namespaces)")
        return {"skipped": "needs root"}
    print("peer: none (no other ZDS server implementation runs outside Kubernetes); absolute numbers vs targets")
    _cleanup(count)
    try:
        for name in [NODE] + [_pod_ns(i) for i in range(count)]:
            _ip("netns", "add", name)
        _ip("-n", NODE, "link", "add", "cbr0", "type", "bridge")
        _ip("-n", NODE, "addr", "add", "10.244.9.1/24", "dev", "cbr0")
        _ip("-n", NODE, "link", "set", "cbr0", "up")
        result = asyncio.run(bench_snapshot(count, rounds=5))
        with tempfile.TemporaryDirectory() as tmp:
            result.update(asyncio.run(bench_plumbing(count, Path(tmp) / "run")))
        return result
    finally:
        _cleanup(count)

"""Listener handoff with 100 pods × 3 listeners: new instance started → old instance stopped accepting (target ≤ 2 s).

As root, every pod has its own network namespace (`pzt-tbench-…`, removed afterwards); otherwise the 300 listeners
are on loopback in this namespace (and, without CAP_NET_ADMIN, cannot be validated: the run then shows fallbacks).
Peer, measured in the same run: what a new instance does without handoff (ztunnel): bind its own 300 listeners,
entering each pod's namespace.

    python -m benchmarks handoff [--pods N]
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pyztunnel.lifecycle import handoff_io
from pyztunnel.lifecycle.handoff import PodRequest
from pyztunnel.netns import run_in_netns

TARGET_S = 2.0


async def _read_event(stream: asyncio.StreamReader, name: str, within: float = 60) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError(f"process exited before {name}")
            event: dict[str, Any] = json.loads(line)
            if event["event"] == name:
                return event


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pyztunnel.lifecycle.testing",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


def _bind_own(pods: dict[str, dict[str, list[int]]], prefix: str | None) -> float:
    """The peer: bind 3 new SO_REUSEPORT listeners per pod (inside its namespace), as ztunnel's new instance does."""
    started = time.monotonic()
    socks: list[socket.socket] = []

    def bind(ports: list[int]) -> list[socket.socket]:
        out = []
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0" if prefix else "127.0.0.1", port))
            s.listen(128)
            out.append(s)
        return out

    for i, pod in enumerate(pods.values()):
        ports: list[int] = pod["ports"]
        socks.extend(run_in_netns(f"{prefix}{i}", functools.partial(bind, ports)) if prefix else bind(ports))
    took = time.monotonic() - started
    for s in socks:
        s.close()
    return took


async def _per_pod_exchanges(tmp: Path, pods: int, prefix: str | None) -> float:
    """One handoff exchange per pod (adopt + confirm), as a proxy that adopts pod by pod while ZDS hands it pods."""
    path = tmp / "handoff-per-pod.sock"
    old = await _spawn("--handoff", str(path), "--pods", str(pods), *(["--netns-prefix", prefix] if prefix else []))
    try:
        assert old.stdout is not None
        ready = await _read_event(old.stdout, "ready")
        started = time.monotonic()
        for uid, pod in ready["pods"].items():
            adoption = await handoff_io.adopt(path, [PodRequest(uid, tuple(pod["netns"]), tuple(pod["ports"]))])
            await adoption.confirm()
            for sock in adoption.sockets.values():
                sock.close()
        return time.monotonic() - started
    finally:
        await _stop(old)


async def _run(pods: int, prefix: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pzt-bench-") as tmp:
        path = Path(tmp) / "handoff.sock"
        old = await _spawn("--handoff", str(path), "--pods", str(pods), *(["--netns-prefix", prefix] if prefix else []))
        new: asyncio.subprocess.Process | None = None
        try:
            assert old.stdout is not None
            ready = await _read_event(old.stdout, "ready")
            wanted = Path(tmp) / "pods.json"
            wanted.write_text(json.dumps(ready["pods"]))
            started = time.monotonic()
            new = await _spawn("--handoff", str(path), "--adopt", str(wanted), "--tag", "new")
            released = await _read_event(old.stdout, "released")
            total = time.monotonic() - started
            assert new.stdout is not None
            adopted = await _read_event(new.stdout, "adopted")
            peer = _bind_own(ready["pods"], prefix)
        finally:
            await _stop(old)
            if new is not None:
                await _stop(new)
        per_pod = await _per_pod_exchanges(Path(tmp), pods, prefix)
    return {
        "pods": pods,
        "listeners": released["listeners"],
        "netns_per_pod": bool(prefix),
        "start_to_old_stopped_s": round(total, 3),
        "handoff_only_s": round(adopted["handoff_s"], 4),
        "adopted": adopted["adopted"],
        "fell_back": adopted["to_bind"],
        "peer_bind_own_s": round(peer, 4),
        "per_pod_exchanges_s": round(per_pod, 4),
        "target_s": TARGET_S,
        "meets_target": total <= TARGET_S,
    }


def run(args: list[str]) -> dict[str, Any]:
    pods = 100
    for arg in args:
        if arg.startswith("--pods="):
            pods = int(arg.split("=", 1)[1])
    prefix = f"pzt-tbench-{uuid.uuid4().hex[:6]}-" if os.geteuid() == 0 else None
    names = [f"{prefix}{i}" for i in range(pods)] if prefix else []
    try:
        if names:
            subprocess.run(
                ["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names), text=True, check=True
            )
        result = asyncio.run(_run(pods, prefix))
    finally:
        if names:
            subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names), text=True)
    ratio = result["handoff_only_s"] / result["peer_bind_own_s"] if result["peer_bind_own_s"] else float("nan")
    result["handoff_vs_bind_ratio"] = round(ratio, 2)
    where = "one netns per pod" if result["netns_per_pod"] else "loopback, one netns"
    print(
        f"{result['pods']} pods × 3 listeners ({where}): adopted {result['adopted']}, fell back {result['fell_back']}"
    )
    print(
        f"  new instance started → old stopped accepting: {result['start_to_old_stopped_s']:.3f} s (target ≤ {TARGET_S} s)"
    )
    print(f"  of which the handoff itself (connect → released): {result['handoff_only_s'] * 1000:.1f} ms")
    print(
        f"  peer, binding 300 own listeners (ztunnel's way): {result['peer_bind_own_s'] * 1000:.1f} ms; ratio {ratio:.2f}"
    )
    print(f"  one exchange per pod instead of one batch: {result['per_pod_exchanges_s'] * 1000:.1f} ms in all")
    return result

"""Failed connections when a listener is replaced under a connect() storm, per mechanism (the headline table in
miniature, one listener instead of a cluster).

In a netns of its own (`pzt-tbench-sw-…`, root), a client hammers one port while the serving listener is replaced
again and again, each way:
- close: the new instance binds its own SO_REUSEPORT listener, the old one closes its own (ztunnel; both off);
- close+migrate: the same with `net.ipv4.tcp_migrate_req=1` (the agent's backstop);
- handoff: the new instance adopts the old one's socket over the handoff protocol; the old one stops accepting.

    python -m benchmarks listener_switch [--switches=N] [--between=N] [--threads=N]
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pyztunnel.lifecycle import handoff_io
from pyztunnel.lifecycle.handoff import ListenerKey, PodRequest
from pyztunnel.lifecycle.testing import Hammer, TaggedListeners
from pyztunnel.netns import netns_inode, netns_path, socket_in_netns

MECHANISMS = ("close", "close+migrate", "handoff")
PEER = "close"


def _listener(ns: str, port: int = 0) -> socket.socket:
    sock = socket_in_netns(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


async def _mechanism(ns: str, mechanism: str, switches: int, between: int, threads: int, tmp: Path) -> dict[str, Any]:
    inode = netns_inode(netns_path(ns))
    first = _listener(ns)
    port = first.getsockname()[1]
    key = ListenerKey("pod", port)
    current = TaggedListeners(b"0\n", inode)
    current.add(key, first)
    hammer = Hammer(port, threads=threads, netns=ns).start()
    started = time.monotonic()
    try:
        for i in range(switches):
            await hammer.wait_total(hammer.total + between)
            new = TaggedListeners(f"{i + 1}\n".encode(), inode)
            if mechanism == "handoff":
                path = tmp / f"handoff-{i}.sock"
                service = await handoff_io.serve(path, current)
                adoption = await handoff_io.adopt(path, [PodRequest("pod", inode, (port,))])
                sock = adoption.take("pod", port)
                assert sock is not None, adoption.to_bind
                new.add(key, sock)
                await adoption.confirm()
                await asyncio.wait_for(current.on_released.wait(), 10)
                await service.close()
            else:
                new.add(key, _listener(ns, port))
                await current.close()
            current = new
        await hammer.wait_total(hammer.total + between)
    finally:
        await asyncio.to_thread(hammer.stop)
        await current.close()
    took = time.monotonic() - started
    failed = sum(hammer.errors.values())
    return {
        "switches": switches,
        "connections": hammer.total,
        "failed": failed,
        "failed_per_switch": round(failed / switches, 2),
        "errors": dict(hammer.errors),
        "conn_per_s": round(hammer.total / took),
    }


def run(args: list[str]) -> dict[str, Any]:
    opts = {"switches": 30, "between": 300, "threads": 8}
    for arg in args:
        name, _, value = arg.lstrip("-").partition("=")
        if name in opts and value:
            opts[name] = int(value)
    if os.geteuid() != 0:
        print("skipped: needs root (a network namespace of its own, tcp_migrate_req)")
        return {"skipped": "needs root"}
    ns = f"pzt-tbench-sw-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    results: dict[str, Any] = {}
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory(prefix="pzt-bench-") as tmp:
            for mechanism in MECHANISMS:
                migrate = int(mechanism == "close+migrate")
                sysctl = ["sysctl", "-qw", f"net.ipv4.tcp_migrate_req={migrate}"]
                subprocess.run(["ip", "netns", "exec", ns, *sysctl], check=True)
                results[mechanism] = asyncio.run(
                    _mechanism(ns, mechanism, opts["switches"], opts["between"], opts["threads"], Path(tmp))
                )
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    peer = results[PEER]["failed"]
    print(f"{opts['switches']} listener switches per mechanism, {opts['threads']} client threads")
    print(f"{'mechanism':<15}{'connections':>12}{'conn/s':>9}{'failed':>8}{'per switch':>12}   vs {PEER}")
    for mechanism, r in results.items():
        ratio = f"{r['failed'] / peer:.2f}" if peer else "n/a"
        print(
            f"{mechanism:<15}{r['connections']:>12}{r['conn_per_s']:>9}{r['failed']:>8}{r['failed_per_switch']:>12}   {ratio}"
        )
    return {"options": opts, **results}

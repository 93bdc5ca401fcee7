"""Connection migration: how long an old proxy takes to hand N idle established connections to the new one.

Two `pyztunnel proxy` processes in direct mode on loopback, an echo server in this process. Two kinds, both measured:
`passthrough` (outbound passthrough: both legs plain TCP, moved whole) and `hbone` (outbound to a mesh workload
through a third proxy serving it: the HBONE streams are stopped with that peer and resumed by the new instance).
N client connections are opened through the old one (one round trip each), the new one starts and registers, the old
one gets SIGTERM: measured from its `drain started` line to its `migrated established connections` line (log
timestamps), and until it has exited. Then one round trip on every connection proves they all live on (for HBONE:
through a resumed stream). Peer, measured in the same run: what the clients would do without migration (ztunnel:
reset, reconnect): open N new connections through the new instance, one round trip each.

Also from the same run: how long each relay was paused (the old proxy's `migration pass` lines: from its prepare to
its release, p50/p99/max over the passes' relays; the worst pass is shown), and the CPU time per moved connection of
the old proxy (SIGTERM → exit, its drain included) and of the new one (SIGTERM → every connection answered a round
trip through it, less the cost of a second round trip on each: what is left is taking and, for HBONE, resuming).

    python -m benchmarks migrate [--connections N]
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import re
import resource
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import tunnels
from benchmarks.cpu_sampler import cpu_seconds
from pyztunnel.aio import spawn


def _arg(args: list[str], name: str, default: int) -> int:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith(name + "="):
            return int(a.split("=", 1)[1])
    return default


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _stamp(line: str) -> float:
    return datetime.datetime.fromisoformat(line.split("\t", 1)[0].replace("Z", "+00:00")).timestamp()


class Proxy:
    """A proxy process whose stderr is read all the time: a pipe nobody drains fills up (64 KiB), and a proxy
    blocked writing a log line stops serving (the harness hung at 1000 connections that way)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._more = asyncio.Event()
        self._pump = spawn(self._read(), "proxy-stderr")

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.lines.append(raw.decode())
            self._more.set()
        self._more.set()

    async def line(self, needle: str, within: float = 60) -> str:
        async def scan() -> str:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                if self._pump.done():
                    raise RuntimeError(f"proxy exited before {needle!r}:\n" + "".join(self.lines[-20:]))
                self._more.clear()
                await self._more.wait()

        return await asyncio.wait_for(scan(), within)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._pump


async def _proxy(tmp: Path, name: str, role: list[str], mesh: list[str]) -> Proxy:
    args = ["--readiness-addr", "", "--stats-addr", "", "--admin-addr", "", "--workload-wait", "0s"]
    args += [*role, *mesh, "--connection-termination-deadline", "60s"]
    env = {**os.environ, "PYZTUNNEL_KEY_DIR": str(tmp / f"keys-{name}"), "RUST_LOG": "info", "XDS_ADDRESS": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pyztunnel", "proxy", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    proxy = Proxy(proc)
    await proxy.line("proxy started")
    return proxy


async def _round_trips(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.write(b"ping")
    for reader, _ in conns:
        assert await asyncio.wait_for(reader.readexactly(4), 30) == b"ping"


async def _open(ip: str, port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    conns = []
    for start in range(0, n, 100):
        conns += await asyncio.gather(*(asyncio.open_connection(ip, port) for _ in range(min(100, n - start))))
    await _round_trips(conns)
    return conns


async def _cpu_until_exit(proc: asyncio.subprocess.Process) -> float:
    """The CPU seconds of a process when it exits (polled: the last reading before /proc lets go of it)."""
    last = 0.0
    while proc.returncode is None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            last = cpu_seconds(proc.pid)
        await asyncio.sleep(0.005)
    return last


def _pauses(lines: list[str]) -> dict[str, float]:
    """The pause summary of the pass with the longest pause (the old proxy's `migration pass` lines)."""
    passes = [
        {k: float(v) for k, v in re.findall(r"(pause_\w+_ms)=([\d.]+)", line)}
        for line in lines
        if "migration pass" in line
    ]
    return max(passes, key=lambda p: p.get("pause_max_ms", 0.0), default={})


async def _measure(n: int, hbone: bool) -> dict[str, Any]:
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    a_ip, b_ip = f"{net}.10", f"{net}.20"
    app_port, out_port = _free_port(b_ip), _free_port(a_ip)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    app = await asyncio.start_server(echo, b_ip, app_port, backlog=4096)
    procs: list[Proxy] = []
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    with tempfile.TemporaryDirectory(prefix="pzt-bench-migrate-") as tmp_dir:
        tmp = Path(tmp_dir)
        moving = ["--direct-outbound", f"{a_ip}:{out_port}={b_ip}:{app_port}", "--handoff-socket", str(tmp / "h.sock")]
        mesh: list[str] = []
        if hbone:  # both addresses are mesh workloads: the outbound connection is HBONE to a proxy serving b_ip
            config = tmp / "workloads.yaml"
            config.write_text(tunnels.WORKLOADS.format(client=a_ip, server=b_ip))
            mesh = ["--local-xds-path", str(config), "--cert-dir", str(tunnels.write_certs(tmp / "certs")["pyz"])]
        try:
            if hbone:
                procs.append(await _proxy(tmp, "peer", ["--direct-inbound", b_ip], mesh))
            old = await _proxy(tmp, "old", moving, mesh)
            procs.append(old)
            conns = await _open(a_ip, out_port, n)
            new = await _proxy(tmp, "new", moving, mesh)
            procs.append(new)
            await new.line("registered to take established connections")
            old_cpu0, new_cpu0 = cpu_seconds(old.proc.pid), cpu_seconds(new.proc.pid)
            old_cpu = spawn(_cpu_until_exit(old.proc), "old-cpu")
            signalled = time.time()
            old.proc.send_signal(signal.SIGTERM)
            started = _stamp(await old.line("drain started"))
            moved_line = await old.line("migrated established connections")
            await asyncio.wait_for(old.proc.wait(), 60)
            exited = time.time()
            moved = int(moved_line.split("connections=")[1].split()[0])
            old_cpu_s = await old_cpu - old_cpu0
            await _round_trips(conns)  # all alive, now through the new instance
            new_cpu1 = cpu_seconds(new.proc.pid)
            await _round_trips(conns)  # again: the round trips' own cost, taken off the new instance's
            new_cpu_s = 2 * new_cpu1 - new_cpu0 - cpu_seconds(new.proc.pid)
            pauses = _pauses(old.lines)
            t0 = time.monotonic()
            fresh = await _open(a_ip, out_port, n)
            reconnect_s = time.monotonic() - t0
            for _, writer in fresh:
                writer.close()
        finally:
            for _, writer in conns:
                writer.close()
            for proxy in procs:
                await proxy.close()
            app.close()
    migrate_s = _stamp(moved_line) - started
    return {
        "kind": "hbone" if hbone else "passthrough",
        "connections": n,
        "migrated": moved,
        "migrate_s": round(migrate_s, 4),
        "per_connection_us": round(migrate_s / max(moved, 1) * 1e6, 1),
        "sigterm_to_exit_s": round(exited - signalled, 3),
        **pauses,
        "old_cpu_us_per_connection": round(old_cpu_s / max(moved, 1) * 1e6),
        "new_cpu_us_per_connection": round(new_cpu_s / max(moved, 1) * 1e6),
        "peer_reconnect_s": round(reconnect_s, 4),
        "migrate_vs_reconnect": round(migrate_s / reconnect_s, 2) if reconnect_s else None,
    }


def run(args: list[str]) -> dict[str, object]:
    n = _arg(args, "--connections", 1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * n + 1024)), hard))  # children inherit it
    results = {kind: asyncio.run(_measure(n, kind == "hbone")) for kind in ("passthrough", "hbone")}
    print(f"{'measure':<62} {'passthrough':>12} {'hbone':>12}")
    rows = [
        ("idle connections migrated", "migrated", "{}"),
        ("drain started → all migrated (old proxy log), s", "migrate_s", "{:.3f}"),
        ("per connection, µs", "per_connection_us", "{}"),
        ("SIGTERM → old proxy exited, s", "sigterm_to_exit_s", "{:.3f}"),
        ("relay paused (prepare → release), p50 ms", "pause_p50_ms", "{}"),
        ("relay paused, p99 ms", "pause_p99_ms", "{}"),
        ("relay paused, max ms", "pause_max_ms", "{}"),
        ("old proxy CPU per moved connection (SIGTERM → exit), µs", "old_cpu_us_per_connection", "{}"),
        ("new proxy CPU per moved connection (take + resume), µs", "new_cpu_us_per_connection", "{}"),
        ("peer: clients reconnect through the new proxy (no migration), s", "peer_reconnect_s", "{:.3f}"),
        ("migrate / reconnect", "migrate_vs_reconnect", "{}"),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(results[kind].get(key, "-")) for kind in ("passthrough", "hbone")]
        print(f"{label:<62} {cells[0]:>12} {cells[1]:>12}")
    return {"connections": n, **results}

"""Prototype (issue 14): is `os.splice` worth it on a plaintext TCP↔TCP relay (outbound passthrough, inbound
plaintext)? Not the proxy's code: one uvloop process relays iperf3 through either the proxy's own kind of relay (an
asyncio Protocol per leg, `data_received` → `transport.write`, as relay.TcpLeg) or a splice relay (socket → pipe →
socket in the kernel, driven by `add_reader`/`add_writer`), and the relay process's CPU per GiB is compared, paired:
A, B, A, B… in one run.

    python -m benchmarks.proto_splice [--rounds=3] [--seconds=3]
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import uvloop

from benchmarks import tunnels
from benchmarks.nginx_util import free_port

PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: up to 1 MiB per splice
F_SETPIPE_SZ = 1031


class _Leg(asyncio.Protocol):
    """relay.TcpLeg's shape: read → peer write, pause on the peer's full buffer."""

    def __init__(self) -> None:
        self.peer: _Leg | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)

    def pause_writing(self) -> None:
        assert self.peer is not None
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.peer is not None
        self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        assert self.peer is not None
        self.peer.transport.write_eof()
        return True


async def _protocol_relay(loop: asyncio.AbstractEventLoop, down: socket.socket, up: socket.socket) -> None:
    a, b = _Leg(), _Leg()
    a.peer, b.peer = b, a
    await loop.connect_accepted_socket(lambda: b, up)  # the upstream speaks only after the client did
    await loop.connect_accepted_socket(lambda: a, down)


class _SpliceDirection:
    """src → pipe → dst in the kernel; reading pauses while the pipe holds bytes dst has not taken."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket) -> None:
        self.loop, self.src, self.dst = loop, src, dst
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        import fcntl

        fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        self.queued = 0
        loop.add_reader(src.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            n = os.splice(self.src.fileno(), self.w, PIPE_SIZE, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            return
        except OSError:
            self.loop.remove_reader(self.src.fileno())
            return
        if n == 0:
            self.loop.remove_reader(self.src.fileno())
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
            return
        self.queued += n
        self._drain()

    def _drain(self) -> None:
        while self.queued:
            try:
                n = os.splice(self.r, self.dst.fileno(), self.queued, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                self.loop.remove_reader(self.src.fileno())
                self.loop.add_writer(self.dst.fileno(), self._writable)
                return
            except OSError:  # the other side went away: this prototype just stops relaying
                self.loop.remove_reader(self.src.fileno())
                return
            self.queued -= n

    def _writable(self) -> None:
        self._drain()
        if not self.queued:
            self.loop.remove_writer(self.dst.fileno())
            self.loop.add_reader(self.src.fileno(), self._readable)


async def _splice_relay(loop: asyncio.AbstractEventLoop, down: socket.socket, up: socket.socket) -> None:
    _SpliceDirection(loop, down, up)
    _SpliceDirection(loop, up, down)


def _serve(host: str, port: int, target: tuple[str, int], mode: str, ready: threading.Event) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.create_server((host, port), reuse_port=False)
        listener.setblocking(False)
        ready.set()
        while True:
            down, _ = await loop.sock_accept(listener)
            up = socket.socket()
            up.setblocking(False)
            await loop.sock_connect(up, target)
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await (_splice_relay if mode == "splice" else _protocol_relay)(loop, down, up)

    uvloop.run(main())


def relay_process(mode: str, host: str, port: int, target: tuple[str, int]) -> subprocess.Popen[bytes]:
    code = f"from benchmarks.proto_splice import _serve_main; _serve_main({mode!r}, {host!r}, {port}, {target!r})"
    return subprocess.Popen([sys.executable, "-c", code])


def _serve_main(mode: str, host: str, port: int, target: tuple[str, int]) -> None:
    _serve(host, port, target, mode, threading.Event())


def main(argv: list[str]) -> int:
    rounds = next((int(a.split("=")[1]) for a in argv if a.startswith("--rounds=")), 3)
    seconds = next((int(a.split("=")[1]) for a in argv if a.startswith("--seconds=")), 3)
    addrs = tunnels.Addresses.random()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"pzt-splice-{os.getpid()}"
    tmp.mkdir()
    samples: dict[str, list[tuple[float, float]]] = {"protocol": [], "splice": []}
    with tunnels.iperf3_server(tmp, addrs.server) as iperf_port:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ports: dict[str, int] = {}
        try:
            for mode in samples:
                ports[mode] = free_port(addrs.client)
                procs[mode] = relay_process(mode, addrs.client, ports[mode], (addrs.server, iperf_port))
                tunnels.wait_until(functools.partial(tunnels.listening, addrs.client, ports[mode]), mode, None)
            for _ in range(rounds):
                for mode, proc in procs.items():
                    cpu = tunnels.cpu_seconds(proc.pid)
                    gbps = _bulk(addrs.client, ports[mode], seconds)
                    used = tunnels.cpu_seconds(proc.pid) - cpu
                    samples[mode].append((gbps, used / (gbps * seconds / 8 / 1.073741824)))
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    for mode, runs in samples.items():
        print(
            f"{mode:9s} Gbit/s {statistics.median(g for g, _ in runs):6.2f}"
            f"  relay CPU s per GiB {statistics.median(c for _, c in runs):.3f}"
        )
    ratios = [s[1] / p[1] for p, s in zip(samples["protocol"], samples["splice"], strict=True)]
    print(f"splice / protocol CPU per GiB (paired median): {statistics.median(ratios):.2f}")
    return 0


def _bulk(host: str, port: int, seconds: int) -> float:
    import json

    out = subprocess.run(
        ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"], capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

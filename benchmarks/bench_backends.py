"""Throughput of the test backends, so the demo's load is never limited by them.

- httpbin `GET /status/200` with `wrk` (1 thread, 32 connections, 3 s); peer: nginx `return 200` (1 worker), same run.
- tcp-echo: 256 MiB pushed and read back over one connection; peer: the same server on asyncio's own event loop
  (what uvloop buys). Loopback only. `--quick` shortens both.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.cpu_sampler import cpu_seconds

WAIT = 10.0


def _start(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(rb"listening on [\d.]+:(\d+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"{argv[:4]} did not start: {line!r}")
    return proc, int(match.group(1))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _wrk(url: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", url], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match is not None, out
    return float(match.group(1))


def _nginx(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    temp_paths = " ".join(f"{k} {tmp};" for k in ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
                                                    "uwsgi_temp_path", "scgi_temp_path"))  # fmt: skip
    conf.write_text(
        f"worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; {temp_paths}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200; }} }} }}\n"
    )
    proc = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")])
    _wait_port(port)
    return proc


def _echo(proc: subprocess.Popen[bytes], port: int, total: int) -> tuple[float, float]:
    """(MB/s, server CPU seconds per GiB echoed): the second does not depend on how fast the client is."""
    cpu = cpu_seconds(proc.pid)
    mbps = _echo_throughput(port, total)
    return mbps, (cpu_seconds(proc.pid) - cpu) / (total / 2**30)


def _echo_throughput(port: int, total: int) -> float:
    chunk = os.urandom(256 * 1024)
    sock = socket.create_connection(("127.0.0.1", port))
    received = 0

    def receive() -> None:
        nonlocal received
        while data := sock.recv(1 << 20):
            received += len(data)

    reader = threading.Thread(target=receive)
    started = time.monotonic()
    reader.start()
    sent = 0
    while sent < total:
        sock.sendall(chunk)
        sent += len(chunk)
    sock.shutdown(socket.SHUT_WR)
    reader.join()
    elapsed = time.monotonic() - started
    sock.close()
    assert received == sent, (received, sent)
    return sent / elapsed / 1e6


ASYNCIO_ECHO = """
import asyncio
from pyztunnel.apps import tcp_echo
from pyztunnel.apps._lifecycle import Shutdown, announce
async def main():
    s = Shutdown(); s.install()
    await tcp_echo.serve(tcp_echo.TcpEchoSettings(host="127.0.0.1", port=0), s, lambda k: announce("tcp-echo", k))
asyncio.run(main())
"""


def run(args: list[str]) -> dict[str, object]:
    quick = "--quick" in args
    seconds = 2 if quick else 3
    total = (64 if quick else 256) * 1024 * 1024
    cli = [sys.executable, "-m", "pyztunnel"]
    result: dict[str, object] = {}

    httpbin, port = _start([*cli, "httpbin", "--host", "127.0.0.1", "--port", "0"])
    try:
        result["httpbin_rps"] = _wrk(f"http://127.0.0.1:{port}/status/200", seconds)
    finally:
        _stop(httpbin)
    with tempfile.TemporaryDirectory(prefix="pzt-bench-nginx-") as tmp:
        nginx_port = _free_port()
        nginx = _nginx(nginx_port, Path(tmp))
        try:
            result["nginx_rps"] = _wrk(f"http://127.0.0.1:{nginx_port}/", seconds)
        finally:
            _stop(nginx)

    for name, argv in (
        ("uvloop", [*cli, "tcp-echo", "--host", "127.0.0.1", "--port", "0"]),
        ("asyncio", [sys.executable, "-c", ASYNCIO_ECHO]),
    ):
        echo, port = _start(argv)
        try:
            mbps, cpu_per_gib = _echo(echo, port, total)
        finally:
            _stop(echo)
        result[f"tcp_echo_{name}_MBps"] = round(mbps)
        result[f"tcp_echo_{name}_cpu_s_per_GiB"] = round(cpu_per_gib, 3)

    h, n = float(result["httpbin_rps"]), float(result["nginx_rps"])  # type: ignore[arg-type]
    u, a = float(result["tcp_echo_uvloop_MBps"]), float(result["tcp_echo_asyncio_MBps"])  # type: ignore[arg-type]
    result["httpbin_vs_nginx"] = round(h / n, 3)
    result["uvloop_vs_asyncio"] = round(u / a, 2)
    cu, ca = float(result["tcp_echo_uvloop_cpu_s_per_GiB"]), float(result["tcp_echo_asyncio_cpu_s_per_GiB"])  # type: ignore[arg-type]
    print(f"httpbin GET /status/200: {h:,.0f} req/s; nginx return 200: {n:,.0f} req/s ({h / n:.2f}x nginx)")
    print(f"tcp-echo one connection, {total >> 20} MiB each way: uvloop {u:,.0f} MB/s; asyncio {a:,.0f} MB/s "
          f"({u / a:.2f}x); server CPU per GiB: uvloop {cu:.2f} s, asyncio {ca:.2f} s")  # fmt: skip
    return result

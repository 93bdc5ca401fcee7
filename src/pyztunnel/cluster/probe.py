"""Readiness probes, run from inside a node's netns (as the kubelet probes from the node), from 169.254.7.127.

Deadlines use `asyncio.timeout`, never `asyncio.wait_for`: on Python 3.11, wait_for returns the inner result and
drops a cancellation that arrives while the inner await has just completed, so a pod's probe loop could survive
the cancel of its deletion and keep `DELETE ?wait=1` waiting forever (docs/cluster.md, "Bounded waits").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from pyztunnel.cluster.topology import PROBE_SOURCE
from pyztunnel.netns import socket_in_netns


async def _connect(netns_fd: int, ip: str, port: int, source: str | None) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = await loop.run_in_executor(None, socket_in_netns, netns_fd)
    sock.setblocking(False)
    try:
        if source is not None:
            sock.bind((source, 0))
        await loop.sock_connect(sock, (ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def tcp(netns_fd: int, ip: str, port: int, limit: float, source: str | None = PROBE_SOURCE) -> bool:
    try:
        async with asyncio.timeout(limit):
            sock = await _connect(netns_fd, ip, port, source)
    except (OSError, TimeoutError):
        return False
    sock.close()
    return True


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names lowercased

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400


def parse_head(head: bytes) -> HttpAnswer | None:
    """The status line and headers of an HTTP/1.x response head (up to the blank line); None if it is not one."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return HttpAnswer(int(parts[1]), headers)


async def http_answer(netns_fd: int, ip: str, port: int, path: str, limit: float) -> HttpAnswer | None:
    """The status and headers of `GET path`, or None when there is no answer."""

    async def get() -> HttpAnswer | None:
        sock = await _connect(netns_fd, ip, port, PROBE_SOURCE)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n".encode())
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                head = exc.partial
            return parse_head(head)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        async with asyncio.timeout(limit):
            return await get()
    except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError):
        return None


async def http(netns_fd: int, ip: str, port: int, path: str, limit: float) -> bool:
    answer = await http_answer(netns_fd, ip, port, path, limit)
    return answer is not None and answer.ok

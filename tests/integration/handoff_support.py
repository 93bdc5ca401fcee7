"""Shared by the handoff tests and benchmark: a connect() hammer and the old instance as a child process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pyztunnel.lifecycle.handoff import PodRequest
from pyztunnel.netns import netns_path, setns


async def poll(condition: Callable[[], bool], within: float, what: str) -> None:
    """Wait until `condition()` holds, checking every millisecond; TimeoutError naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {within}s")
        await asyncio.sleep(0.001)


class Hammer:
    """Threads that connect() to a port as fast as they can and read the answer; counts answers and failures."""

    def __init__(self, port: int, threads: int = 4, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.addr = (host, port)
        self.netns = netns
        self.answers: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"hammer-{i}", daemon=True) for i in range(threads)]

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + sum(self.errors.values())

    def start(self) -> Hammer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        if self.netns is not None:
            # A dedicated thread that ends with the hammer: entering the namespace here changes nothing else.
            fd = os.open(netns_path(self.netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
        while not self._stop.is_set():
            try:
                with socket.create_connection(self.addr, timeout=5) as s:
                    data = b""
                    while chunk := s.recv(16):
                        data += chunk
                outcome, bucket = data.decode().strip() or "empty", self.answers
            except OSError as exc:
                outcome, bucket = type(exc).__name__, self.errors
            with self._lock:
                bucket[outcome] += 1

    async def wait_total(self, n: int, within: float = 60) -> None:
        await poll(lambda: self.total >= n, within, f"{n} connections")


class OldInstance:
    """`python -m pyztunnel.lifecycle.testing` as a child: the instance that hands its listeners over."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.described: dict[str, dict[str, list[int]]] = ready["pods"]
        self.pods = {uid: pod["ports"] for uid, pod in self.described.items()}

    def requests(self) -> list[PodRequest]:
        return [PodRequest(uid, (p["netns"][0], p["netns"][1]), tuple(p["ports"])) for uid, p in self.described.items()]

    async def event(self, name: str, within: float = 10) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("old instance exited")
                event: dict[str, Any] = json.loads(line)
                if event["event"] == name:
                    return event

    async def command(self, cmd: str, reply: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.event(reply)

    async def wait_queue(self, at_least: int, within: float = 10) -> int:
        deadline = time.monotonic() + within
        while True:
            length = int((await self.command("queue", "queue"))["length"])
            if length >= at_least or time.monotonic() > deadline:
                return length


@contextlib.asynccontextmanager
async def old_instance(handoff: Path, pods: int = 1, netns: str | None = None) -> AsyncIterator[OldInstance]:
    argv = [sys.executable, "-m", "pyztunnel.lifecycle.testing", "--handoff", str(handoff), "--pods", str(pods)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("old instance did not start")
        yield OldInstance(proc, json.loads(line))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

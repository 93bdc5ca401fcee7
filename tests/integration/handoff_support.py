"""Shared by the handoff tests: the old instance as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pyztunnel.lifecycle import handoff, handoff_io, handoff_key
from pyztunnel.lifecycle.handoff import PodRequest
from pyztunnel.lifecycle.peerauth import Handshake


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
async def old_instance(
    handoff: Path, pods: int = 1, netns: str | None = None, adopt: Path | None = None, tag: str = "old"
) -> AsyncIterator[OldInstance]:
    """The stand-in listener set as a child process; with `adopt` (a ready event's pods, as JSON) it adopts them
    from the instance serving `handoff` instead of binding its own (a new instance)."""
    argv = [sys.executable, "-m", "pyztunnel.lifecycle.testing", "--handoff", str(handoff), "--pods", str(pods)]
    argv += ["--tag", tag, *(["--adopt", str(adopt)] if adopt is not None else [])]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        while True:  # an adopting instance reports "adopted" first
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line:
                raise RuntimeError("instance did not start")
            if json.loads(line)["event"] == "ready":
                break
        yield OldInstance(proc, json.loads(line))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def hello_and_request(conn: socket.socket) -> None:
    """Play a genuine old instance's hello (it holds the node's key beside the socket it serves), then read the
    request: what a lying or broken, but authentic, peer does before it lies."""
    data, _ = await handoff_io.recv_msg(conn)
    old = Handshake(handoff_key.load_or_create(handoff_key.beside(Path(conn.getsockname()))), "old")
    old.peer_hello(handoff.decode(data))
    await handoff_io.send_msg(conn, handoff.hello(old))
    await handoff_io.recv_msg(conn)

"""A minimal ZDS client that ACKs everything and records what it got: for tests, the benchmark and diagnostics.

It runs the real client state machine (`protocols.zds.ClientState`) over a real SEQPACKET socket, so a test of the
agent against it exercises both ends of the protocol. It is not the proxy: it starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from pathlib import Path

from pyztunnel.netns import netns_inode
from pyztunnel.protocols import zds
from pyztunnel.unixfd import close_fds, recv_with_fds, send_with_fds


@dataclasses.dataclass
class Received:
    event: zds.ClientEvent
    netns: tuple[int, int] | None  # (st_dev, st_ino) of the fd an Add carried


class ZdsProbe:
    def __init__(self, state: zds.ClientState | None = None, nack: dict[str, str] | None = None) -> None:
        self.state = state or zds.ClientState()
        self.nack = nack or {}  # uid -> error to answer its Add with
        self.received: list[Received] = []
        self.sock: socket.socket | None = None

    async def connect(self, path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            await asyncio.get_running_loop().sock_connect(sock, str(path))
            await send_with_fds(sock, self.state.connect())
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    async def step(self) -> Received | None:
        """Receive one request, ACK it (or NACK per `nack`), record it. None at EOF."""
        assert self.sock is not None
        data, fds, flags = await recv_with_fds(self.sock, zds.MAX_DATAGRAM, 1)
        if not data and not fds:
            return None
        try:
            incoming = zds.decode_request(data, len(fds), flags)
            netns = netns_inode(fds[0]) if incoming.uses_fd else None
            event = self.state.handle(incoming.message, netns)
        finally:
            close_fds(fds)
        error = self.nack.get(getattr(event, "uid", ""), "") if isinstance(event, zds.StartWorkload) else ""
        await send_with_fds(self.sock, zds.encode_ack(zds.Ack(error)))
        record = Received(event, netns)
        self.received.append(record)
        return record

    async def sync(self) -> list[Received]:
        """Read until the snapshot's SnapshotSent has been ACKed; return what came."""
        start = len(self.received)
        while True:
            record = await self.step()
            if record is None:
                raise ConnectionError("agent closed the connection during the snapshot")
            if isinstance(record.event, zds.Reconcile):
                return self.received[start:]

    async def serve(self) -> None:
        """ACK everything until EOF (run as a task)."""
        while await self.step() is not None:
            pass

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
            self.state.disconnected()


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))

"""The proxy's ZDS client (reference §2): connect to the agent's SEQPACKET socket, say Hello first, act on every
request and Ack it, reconcile at SnapshotSent, reconnect with backoff (10 ms, doubling, capped at 15 s).

Readiness: "workload proxy manager" is blocked until a SnapshotSent has been processed on the current connection
and no pod is pending; it is blocked again whenever the connection drops (ztunnel's `check_ready`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from pyztunnel import netns, unixfd
from pyztunnel.protocols import zds
from pyztunnel.proxy.podset import PodSet

_log = logging.getLogger("pyztunnel.proxy.zds")

BACKOFF_INITIAL = 0.01
BACKOFF_MAX = 15.0
READINESS_TASK = "workload proxy manager"


class ZdsClient:
    def __init__(self, path: Path, pods: PodSet, set_ready: Callable[[bool], None]) -> None:
        self.path = path
        self.pods = pods
        self.set_ready = set_ready
        self.state = zds.ClientState()
        self.connections = 0
        self.snapshot_done = asyncio.Event()
        self._sock: socket.socket | None = None
        self._stopping = False

    def check_ready(self) -> None:
        """Ready = the snapshot was processed on the current connection and no pod is pending (ztunnel's
        `check_ready`); re-evaluated after every message and whenever the pod set changes (a pending pod started)."""
        self.set_ready(self.state.snapshot_received and self.state.connected and not self.pods.pending)

    async def run(self) -> None:
        """Connect and serve until cancelled, reconnecting with backoff."""
        backoff = BACKOFF_INITIAL
        while not self._stopping:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, str(self.path))
            except OSError as exc:
                sock.close()
                _log.debug("cannot connect to ZDS", extra={"fields": {"path": str(self.path), "error": str(exc)}})
                await asyncio.sleep(backoff)  # reconnect backoff (§2.1)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_INITIAL
            self._sock = sock
            self.connections += 1
            try:
                await self._serve(sock)
            except (OSError, zds.ZdsError) as exc:
                _log.warning("ZDS connection failed", extra={"fields": {"error": str(exc)}})
            finally:
                self._sock = None
                sock.close()
                self.state.disconnected()
                self.set_ready(False)
            if not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def stop(self) -> None:
        """Drop the ZDS connection (on drain ztunnel stops reading it, §1.6 step 4)."""
        self._stopping = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    async def _serve(self, sock: socket.socket) -> None:
        await unixfd.send_with_fds(sock, self.state.connect())
        _log.info("connected to ZDS", extra={"fields": {"path": str(self.path)}})
        while True:
            data, fds, flags = await unixfd.recv_with_fds(sock, zds.MAX_DATAGRAM, 2)
            if not data and not fds:
                _log.info("ZDS connection closed by the agent")
                return
            error, disconnect = await self._handle(data, fds, flags)
            await unixfd.send_with_fds(sock, zds.encode_ack(zds.Ack(error or "")))
            self.check_ready()
            if disconnect:
                raise zds.ProtocolError(error or "protocol error")

    async def _handle(self, data: bytes, fds: list[int], flags: int) -> tuple[str | None, bool]:
        """Act on one datagram; returns (NACK reason or None, whether to reconnect afterwards)."""
        try:
            incoming = zds.decode_request(data, len(fds), flags)
        except zds.ZdsError as exc:
            unixfd.close_fds(fds)
            return str(exc), True
        fd = fds[0] if incoming.uses_fd else None
        if fd is None:
            unixfd.close_fds(fds)
        netns_id = netns.netns_inode(fd) if fd is not None else None
        try:
            event = self.state.handle(incoming.message, netns_id)
        except zds.ZdsError as exc:
            if fd is not None:
                unixfd.close_fds([fd])
            return str(exc), True
        match event:
            case zds.StartWorkload(uid=uid, info=info):
                assert fd is not None
                error = await self.pods.start(uid, info, fd)
                return error, False
            case zds.ReplaceWorkload(uid=uid, info=info):
                assert fd is not None
                await self.pods.drain(uid)
                return await self.pods.start(uid, info, fd), False
            case zds.Unchanged():
                if fd is not None:
                    unixfd.close_fds([fd])
                return None, False
            case zds.DrainWorkload(uid=uid):
                await self.pods.drain(uid)
                return None, False
            case zds.ForgetFromSnapshot(uid=uid):
                self.pods.forget_pending(uid)
                return None, False
            case zds.Reconcile(drain=uids):
                for uid in uids:
                    await self.pods.drain(uid)
                _log.info("ZDS snapshot received", extra={"fields": {"pods": len(self.pods.pods)}})
                self.snapshot_done.set()
                return None, False

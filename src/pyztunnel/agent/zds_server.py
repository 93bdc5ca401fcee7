"""The agent's ZDS server: the asyncio shell around `protocols.zds.ServerConnection` (reference/ztunnel.md §2.3).

A unix SOCK_SEQPACKET listener, mode 0600 (a stale socket file is removed first). A connecting process that does not
run as our uid (SO_PEERCRED) is refused at once. Per connection: ZdsHello within the deadline, the snapshot (one Ack
at a time, each within the deadline), SnapshotSent, then Adds (only to the newest connection) and Dels (to every
connection). A connection that breaks the protocol is dropped with a logged reason; the others go on. Liveness: a
receive is always pending on every connection, so a proxy's exit (EOF) is seen at once and any message that is not an
awaited Ack is a protocol error, which is what istio-cni's 5 s liveness poll checks.

A workload only the departed connection was given (an Add that went to the newest proxy, which then left) is sent
again to the newest remaining connection: otherwise the pod would show ready while no live proxy serves it.

fd ownership: every netns fd handed to the server is dup()ed when it is queued; the dup is closed once sent or when
the connection is dropped. The caller keeps its own fd. Every fd received from a proxy is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.localsock import check_same_uid, listen_unix, peer_cred
from pyztunnel.protocols import zds
from pyztunnel.unixfd import close_fds, recv_with_fds, sendmsg_fds

log = logging.getLogger("pyztunnel.agent.zds")

SnapshotEntry = tuple[zds.AddWorkload | zds.KeepWorkload, int | None]  # an Add with its netns fd, or a Keep


class NoConnection(Exception):
    """No proxy is connected (istio-cni: "no ztunnel connection")."""

    def __str__(self) -> str:
        return "no ztunnel connection"


@dataclasses.dataclass
class _Conn:
    id: int
    sock: socket.socket
    machine: zds.ServerConnection
    fds: deque[int]  # dup()ed netns fds of queued Adds, in send order (the machine sends FIFO)
    workloads: set[str]  # uids this connection was given (snapshot Add/Keep, later Adds) and not deleted
    since: float = dataclasses.field(default_factory=time.time)
    timer: asyncio.TimerHandle | None = None
    reader: asyncio.Task[None] | None = None
    snapshot_done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    closed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class ZdsServer:
    def __init__(
        self, path: Path, snapshot: Callable[[], Sequence[SnapshotEntry]], timeout: float = zds.ACK_TIMEOUT
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self.timeout = timeout
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: dict[int, _Conn] = {}  # insertion order = connection order; the last is the newest
        self._ids = itertools.count(1)
        self._waiters: set[asyncio.Future[None]] = set()  # woken when a connection opens, syncs or closes
        self._closing = False

    # ---------------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        # A stale socket of a previous agent is replaced (istio-cni does the same).
        self._listener = listen_unix(self.path, socket.SOCK_SEQPACKET)
        self._accept_task = spawn(self._accept_loop(), name="zds-accept")
        log.info("zds server listening", extra={"fields": {"path": str(self.path)}})

    async def close(self) -> None:
        self._closing = True
        if self._accept_task is not None:
            await cancel_and_wait(self._accept_task)
            self._accept_task = None
        conns = list(self._conns.values())
        for conn in conns:
            self._apply(conn, conn.machine.closed("agent shutting down"))
        await cancel_and_wait(*[c.reader for c in conns if c.reader is not None])
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            try:
                cred = peer_cred(sock)
            except OSError as exc:
                log.warning("refusing ztunnel connection", extra={"fields": {"reason": f"no peer credentials: {exc}"}})
                sock.close()
                continue
            if (refused := check_same_uid(cred)) is not None:
                log.warning("refusing ztunnel connection", extra={"fields": {"reason": refused, **cred.fields()}})
                sock.close()
                continue
            sock.setblocking(False)
            self._open(sock)

    def _open(self, sock: socket.socket) -> None:
        entries = self._snapshot()
        fds: deque[int] = deque()
        requests: list[zds.AddWorkload | zds.KeepWorkload] = []
        for request, fd in entries:
            if isinstance(request, zds.AddWorkload) and fd is not None:
                fds.append(os.dup(fd))
                requests.append(request)
            else:
                requests.append(zds.KeepWorkload(request.uid))  # no netns fd: istio-cni sends Keep
        conn = _Conn(next(self._ids), sock, zds.ServerConnection(requests), fds, {r.uid for r in requests})
        self._conns[conn.id] = conn
        log.info("ztunnel connected", extra={"fields": {"conn": conn.id, "snapshot": len(requests)}})
        self._arm(conn)  # the hello deadline
        conn.reader = spawn(self._read_loop(conn), name=f"zds-conn-{conn.id}")
        self._notify()

    # ------------------------------------------------------------------------------------------------ public API

    @property
    def connections(self) -> list[dict[str, object]]:
        return [
            {"id": c.id, "phase": c.machine.phase.value, "since": c.since, "newest": c is self._newest()}
            for c in self._conns.values()
        ]

    def _newest(self) -> _Conn | None:
        return next(reversed(self._conns.values()), None)

    async def add(self, request: zds.AddWorkload, netns_fd: int) -> zds.Ack:
        """Send an Add (with a dup of `netns_fd`) to the newest connection and return its Ack (a NACK when the
        connection is lost first). Raises NoConnection when no proxy is connected."""
        conn = self._newest()
        if conn is None:
            raise NoConnection()
        done: asyncio.Future[zds.Ack] = asyncio.get_running_loop().create_future()
        self._enqueue_add(conn, request, netns_fd, done)
        return await done

    def _enqueue_add(self, conn: _Conn, request: zds.AddWorkload, netns_fd: int, token: object) -> None:
        # `conn` is live: a connection leaves `_conns` in the same step as its machine closes and its queued dups are
        # closed, so the dup queued here is either sent (and closed) or closed with the connection.
        conn.fds.append(os.dup(netns_fd))
        conn.workloads.add(request.uid)
        self._apply(conn, conn.machine.enqueue(request, token=token))

    async def delete(self, uid: str) -> list[zds.Ack]:
        """Broadcast a Del to every connection; return their Acks."""
        futures = []
        for conn in list(self._conns.values()):
            done: asyncio.Future[zds.Ack] = asyncio.get_running_loop().create_future()
            futures.append(done)
            conn.workloads.discard(uid)
            self._apply(conn, conn.machine.enqueue(zds.DelWorkload(uid), token=done))
        return list(await asyncio.gather(*futures))

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; it is re-checked whenever a connection changes. Bound it with wait_for."""
        while not predicate():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    # ------------------------------------------------------------------------------------------------ the shell

    async def _read_loop(self, conn: _Conn) -> None:
        try:
            while not conn.closed.is_set():
                try:
                    data, fds, flags = await recv_with_fds(conn.sock, zds.MAX_DATAGRAM, 1)
                except OSError as exc:
                    self._apply(conn, conn.machine.closed(f"receive failed: {exc}"))
                    return
                close_fds(fds)  # a proxy never sends the agent an fd; the machine judges the count
                if not data and not fds and not flags:
                    self._apply(conn, conn.machine.closed("connection closed by the proxy (EOF)"))
                    return
                if conn.machine.phase is not zds.ServerPhase.AWAIT_HELLO and conn.machine.in_flight is None:
                    self._apply(conn, conn.machine.unsolicited())
                    return
                self._apply(conn, conn.machine.receive(data, len(fds), flags))
        finally:
            if not conn.closed.is_set():
                self._apply(conn, conn.machine.closed("reader stopped"))

    def _apply(self, conn: _Conn, actions: list[zds.ServerAction]) -> None:
        for action in actions:
            match action:
                case zds.Send(request=request):
                    self._send(conn, request)
                case zds.Completed(request=request, ack=ack, token=token):
                    self._disarm(conn)  # a Send that follows re-arms it
                    if not ack.ok and not conn.closed.is_set():
                        log.warning(
                            "ztunnel refused a request",
                            extra={"fields": {"conn": conn.id, "request": _describe(request), "error": ack.error}},
                        )
                    if isinstance(token, asyncio.Future) and not token.done():
                        token.set_result(ack)
                case zds.SnapshotDone():
                    conn.snapshot_done.set()
                    log.info("snapshot sent to ztunnel", extra={"fields": {"conn": conn.id}})
                    self._notify()
                case zds.Close(reason=reason):
                    self._drop(conn, reason)

    def _send(self, conn: _Conn, request: zds.Request) -> None:
        data = zds.encode_request(request)
        fd = conn.fds.popleft() if isinstance(request, zds.AddWorkload) else None
        try:
            sendmsg_fds(conn.sock, data, [] if fd is None else [fd])
        except BlockingIOError:
            # At most one request is ever outstanding, so a full buffer means the proxy stopped reading.
            self._apply(conn, conn.machine.closed("send buffer full: the proxy is not reading"))
            return
        except OSError as exc:
            self._apply(conn, conn.machine.closed(f"send failed: {exc}"))
            return
        finally:
            if fd is not None:
                os.close(fd)
        self._arm(conn)

    def _arm(self, conn: _Conn) -> None:
        self._disarm(conn)
        conn.timer = asyncio.get_running_loop().call_later(
            self.timeout, lambda: self._apply(conn, conn.machine.timeout())
        )

    @staticmethod
    def _disarm(conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _drop(self, conn: _Conn, reason: str) -> None:
        if conn.closed.is_set():
            return
        conn.closed.set()
        self._disarm(conn)
        close_fds(conn.fds)
        conn.fds.clear()
        conn.sock.close()
        self._conns.pop(conn.id, None)
        if "shutting down" in reason or "EOF" in reason:
            log.info("ztunnel disconnected", extra={"fields": {"conn": conn.id, "reason": reason}})
        else:
            log.warning("dropping ztunnel connection", extra={"fields": {"conn": conn.id, "reason": reason}})
        if conn.reader is not None and conn.reader is not asyncio.current_task():
            conn.reader.cancel()
        if not self._closing:
            self._hand_on(conn)
        self._notify()

    def _hand_on(self, gone: _Conn) -> None:
        """Send the workloads only `gone` had to the newest remaining connection (with a fresh dup of the agent's
        netns fd: the pod set is asked again, so a pod deleted meanwhile is not sent)."""
        newest = self._newest()
        if newest is None:
            return  # the next proxy to connect gets every pod in its snapshot
        orphans = gone.workloads.difference(*(c.workloads for c in self._conns.values()))
        if not orphans:
            return
        for request, fd in self._snapshot():
            if request.uid not in orphans or not isinstance(request, zds.AddWorkload) or fd is None:
                continue
            log.info(
                "sending workload to the remaining ztunnel",
                extra={"fields": {"uid": request.uid, "conn": newest.id, "left": gone.id}},
            )
            try:
                self._enqueue_add(newest, request, fd, _RESENT)
            except OSError as exc:  # the agent's fd went meanwhile (the pod is being deleted) or no fd is left
                log.warning("cannot send workload again", extra={"fields": {"uid": request.uid, "error": str(exc)}})

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


_RESENT = object()  # the token of a re-sent Add: nobody awaits it; its NACK is logged like any other


def _describe(request: zds.Request) -> str:
    uid = getattr(request, "uid", "")
    return f"{type(request).__name__}({uid})" if uid else type(request).__name__

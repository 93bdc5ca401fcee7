"""AcceptLoop: pausing and resuming under a connect() storm loses nothing; a paused listener keeps its queue."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from typing import Any

from pyztunnel.aio import TaskGroup
from pyztunnel.lifecycle.accept import AcceptLoop
from pyztunnel.lifecycle.testing import Hammer, accept_queue_length, poll, reuseport_listener


def answer(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        conn.send(b"ok\n")


def exchange(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        return c.recv(8)


async def test_pause_and_resume_storm_loses_nothing() -> None:
    acceptor = AcceptLoop(reuseport_listener(), answer, "storm", tasks=TaskGroup("storm"))
    acceptor.start()
    hammer = Hammer(acceptor.sock.getsockname()[1]).start()
    try:
        for _ in range(100):
            await hammer.wait_total(hammer.total + 10)
            acceptor.pause()
            assert not acceptor.accepting
            acceptor.start()
    finally:
        await asyncio.to_thread(hammer.stop)
        acceptor.close()
    assert dict(hammer.errors) == {} and hammer.answers["ok"] == hammer.total >= 1000
    assert acceptor.accepted == hammer.total


async def test_paused_listener_keeps_its_queue_until_resumed() -> None:
    acceptor = AcceptLoop(reuseport_listener(), answer, "queue", tasks=TaskGroup("queue"))
    loop = asyncio.get_running_loop()
    clients = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            await loop.sock_connect(c, acceptor.sock.getsockname())
            clients.append(c)
        assert accept_queue_length(acceptor.sock) == 3
        acceptor.start()
        replies = await asyncio.wait_for(asyncio.gather(*(loop.sock_recv(c, 8) for c in clients)), 5)
        assert replies == [b"ok\n"] * 3
    finally:
        for c in clients:
            c.close()
        acceptor.close()
    assert acceptor.sock.fileno() == -1


async def test_failing_and_async_handlers() -> None:
    handled = asyncio.Event()
    calls: list[str] = []

    def bad(conn: socket.socket) -> None:
        calls.append("bad")
        raise RuntimeError("boom")

    async def good(conn: socket.socket) -> None:
        answer(conn)
        handled.set()

    acceptor = AcceptLoop(reuseport_listener(), bad, "h", tasks=TaskGroup("h"))
    acceptor.start()
    port = acceptor.sock.getsockname()[1]
    try:
        # The handler failed: the connection was closed, and the loop goes on.
        assert await asyncio.wait_for(asyncio.to_thread(exchange, port), 5) == b""
        acceptor.handle = good
        assert await asyncio.wait_for(asyncio.to_thread(exchange, port), 5) == b"ok\n"
        assert handled.is_set()
    finally:
        acceptor.close()
    assert calls == ["bad"]


class _Exhausted(socket.socket):
    """accept() fails with EMFILE the first time, as when the process is out of descriptors."""

    failures = 1

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


async def test_fd_exhaustion_backs_off_then_resumes() -> None:
    plain = reuseport_listener()
    sock = _Exhausted(fileno=plain.detach())
    acceptor = AcceptLoop(sock, answer, "emfile", tasks=TaskGroup("emfile"))
    acceptor.start()
    try:
        reply = asyncio.ensure_future(asyncio.to_thread(exchange, sock.getsockname()[1]))
        await poll(lambda: not acceptor.accepting, 5, "backing off")
        await poll(lambda: acceptor.accepted == 1, 5, "accepted after the back-off")
        assert await asyncio.wait_for(reply, 5) == b"ok\n"
    finally:
        acceptor.close()

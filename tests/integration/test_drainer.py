"""The drain shell with real loopback sockets and real loop time (deadline 0.2 s); waits on events, never sleeps."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from pyztunnel.lifecycle.drain import Outcome
from pyztunnel.lifecycle.drainer import ConnectionSet, Drainer, TrackedSocket

DEADLINE = 0.2


@dataclass
class Server:
    listener: socket.socket
    connections: ConnectionSet
    clients: list[socket.socket] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def connect(self) -> tuple[socket.socket, TrackedSocket]:
        client = socket.create_connection(self.listener.getsockname())
        self.clients.append(client)
        accepted, peer = self.listener.accept()
        tracked = TrackedSocket(accepted, src=f"{peer[0]}:{peer[1]}")
        self.connections.add(tracked)
        return client, tracked

    def drainer(self, deadline: float = DEADLINE) -> Drainer:
        return Drainer(
            deadline,
            stop_accepting=lambda: self.calls.append("stop_accepting"),
            goaway=lambda: self.calls.append("goaway"),
            connections=self.connections,
        )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    listener = socket.create_server(("127.0.0.1", 0))
    srv = Server(listener, ConnectionSet())
    try:
        yield srv
    finally:
        listener.close()
        for c in srv.clients:
            c.close()
        for t in srv.connections:
            assert isinstance(t, TrackedSocket)
            t.sock.close()


async def test_deadline_resets_remaining_connections_with_rst(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = server.connect()
    d = server.drainer()
    run = asyncio.ensure_future(d.run())
    d.signal()
    outcome = await asyncio.wait_for(run, 5)
    assert outcome is Outcome.DEADLINE
    assert server.calls == ["stop_accepting", "goaway"]
    assert d.reset_count == 1 and len(server.connections) == 0
    assert d.finished.is_set() and d.outcome is Outcome.DEADLINE
    # SO_LINGER 0: the peer sees a reset, not an orderly FIN (which would read as b"").
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    assert "connection reset at drain deadline" in caplog.text
    assert "drain duration expired with pending connections" in caplog.text


async def test_connections_ending_within_deadline_finish_clean(server: Server) -> None:
    client, tracked = server.connect()
    d = server.drainer(deadline=30)  # far away: only the connection closing can end this drain quickly
    run = asyncio.ensure_future(d.run())
    d.quitquitquit()
    await asyncio.wait_for(d.started.wait(), 5)
    # The established connection keeps working during the drain.
    client.sendall(b"ping")
    assert tracked.sock.recv(4) == b"ping"
    tracked.sock.close()
    server.connections.discard(tracked)
    assert await asyncio.wait_for(run, 5) is Outcome.CLEAN
    assert d.reset_count == 0


async def test_no_connections_exits_at_once_async_callbacks_awaited(server: Server) -> None:
    stopped = asyncio.Event()

    async def stop_accepting() -> None:
        stopped.set()

    d = Drainer(30, stop_accepting=stop_accepting, goaway=lambda: None, connections=server.connections)
    run = asyncio.ensure_future(d.run())
    d.signal()
    assert await asyncio.wait_for(run, 5) is Outcome.CLEAN
    assert stopped.is_set()


async def test_real_sigterm_then_second_signal_forces(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server.connect()
    d = server.drainer(deadline=30)
    d.install_signal_handlers()
    try:
        run = asyncio.ensure_future(d.run())
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(d.started.wait(), 5)
        assert "drain started, waiting 30s" in caplog.text
        os.kill(os.getpid(), signal.SIGINT)
        assert await asyncio.wait_for(run, 5) is Outcome.FORCED
    finally:
        d.remove_signal_handlers()
    assert d.reset_count == 0

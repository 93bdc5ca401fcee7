"""Connection migration between two `pyztunnel proxy` processes (direct mode, loopback, this netns).

Outbound passthrough relays carry continuous checksummed streams both ways; the old instance drains, moves them to
the new one and is SIGKILLed; the streams go on with no byte lost or corrupted and no reset seen by either end. With
the switch off, or a peer that does not answer, the old instance keeps them (and resets them at its deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from pyztunnel.lifecycle import handoff, handoff_key, migrate
from pyztunnel.lifecycle.handoff_io import recv_msg, send_msg
from pyztunnel.netns import netns_inode
from tests.integration.proxy.harness import free_port, loopback_ips
from tests.integration.proxy.streams import Endpoint, StreamServer, open_clients
from tests.integration.proxy.test_process import Proc, start_ready

CONNECTIONS = 5


class Setup:
    def __init__(self, tmp: Path, mode: str = "outbound") -> None:
        self.tmp = tmp
        self.mode = mode
        self.a_ip, self.b_ip = loopback_ips()
        self.app_port, self.out_port = free_port(self.b_ip), free_port(self.a_ip)
        self.handoff = tmp / "handoff.sock"
        self.server = StreamServer()
        self.procs: list[Proc] = []

    async def proxy(self, name: str, *extra: str, deadline: str = "30s") -> Proc:
        return await start_ready(
            self.procs,
            self.tmp,
            name,
            *("--readiness-addr", "", "--stats-addr", "", "--admin-addr", ""),
            *self.listener(),
            *("--handoff-socket", str(self.handoff), "--workload-wait", "0s"),
            *("--connection-termination-deadline", deadline),
            *extra,
        )

    def listener(self) -> list[str]:
        if self.mode == "inbound":  # inbound plaintext: 15006 on the pod's address → its app
            return ["--direct-inbound", f"{self.b_ip}={self.app_port}"]
        return ["--direct-outbound", f"{self.a_ip}:{self.out_port}={self.b_ip}:{self.app_port}"]

    async def clients(self) -> list[Endpoint]:
        ip, port = (self.b_ip, 15006) if self.mode == "inbound" else (self.a_ip, self.out_port)
        clients = await open_clients(ip, port, CONNECTIONS)
        for client in clients:
            await client.wait_received(200_000)
        return clients


class World(Protocol):
    """Proxies around one stream app (Setup here, test_resume's Nodes)."""

    b_ip: str
    app_port: int
    server: StreamServer
    procs: list[Proc]


W = TypeVar("W", bound=World)


@contextlib.asynccontextmanager
async def serving(world: W) -> AsyncIterator[W]:
    """The app listening, and every proxy of `world` killed (logs shown) afterwards."""
    await world.server.start(world.b_ip, world.app_port)
    try:
        yield world
    finally:
        await tear_down(world.procs, world.server)


@pytest.fixture
async def setup(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    async with serving(Setup(tmp_path, getattr(request, "param", "outbound"))) as s:
        yield s


async def tear_down(procs: list[Proc], server: StreamServer) -> None:
    """Kill what still runs, show every proxy's log (pytest prints it for a failed test), close the app."""
    for proc in procs:
        if proc.proc.returncode is None:
            proc.proc.kill()
        await proc.proc.wait()
        assert proc.proc.stderr is not None
        proc.lines += (await proc.proc.stderr.read()).decode().splitlines(keepends=True)
    sys.stderr.write("".join(line for p in procs for line in p.lines))
    await server.close()


async def upgrade_and_finish(old: Proc, new: Proc, clients: list[Endpoint], server: StreamServer) -> None:
    """SIGTERM the old instance: it moves every connection, exits clean at once (nothing left to wait for) and is
    SIGKILLed anyway; the streams flow on through the new one, then end intact."""
    old.proc.send_signal(signal.SIGTERM)
    moved = await old.wait_for_line("migrated established connections")
    assert f"connections={len(clients)} kept=0" in moved
    await old.wait_for_line("shutdown complete")
    old.proc.kill()
    await new.wait_for_line("took over established connections")
    before = [c.dir.received for c in clients]
    for client, seen in zip(clients, before, strict=True):
        await client.wait_received(seen + 500_000)  # the streams flow through the new instance
    await asyncio.gather(*(c.finish() for c in clients))
    assert_intact(clients, server)


def assert_intact(clients: list[Endpoint], server: StreamServer) -> None:
    """No error, no wrong byte at any offset, every stream ended with EOF after all that was sent. (Which server end
    belongs to which client is not known here, so the byte totals are compared as multisets.)"""
    ends = [*clients, *server.ends]
    assert [e.dir.error for e in ends] == [None] * len(ends)
    assert [e.dir.corrupt for e in ends] == [None] * len(ends)
    assert all(e.dir.eof for e in ends)
    assert sorted(c.dir.sent for c in clients) == sorted(p.dir.received for p in server.ends)
    assert sorted(c.dir.received for c in clients) == sorted(p.dir.sent for p in server.ends)


@pytest.mark.parametrize("setup", ["outbound", "inbound"], indirect=True)
async def test_migrated_streams_survive_sigkill_of_the_old_instance(setup: Setup) -> None:
    old = await setup.proxy("old")
    clients = await setup.clients()
    new = await setup.proxy("new")
    await new.wait_for_line("registered to take established connections")
    await old.wait_for_line("a new instance will take established connections")
    await upgrade_and_finish(old, new, clients, setup.server)
    lines = [
        await new.wait_for_line(
            f"src.addr={c.writer.get_extra_info('sockname')[0]}:{c.writer.get_extra_info('sockname')[1]} "
        )
        for c in clients
    ]
    assert not any("connection complete" in line for line in old.lines)
    for client, line in zip(clients, lines, strict=True):
        # One line at the real end, with the bytes of the whole connection (before and after the move).
        assert "connection complete" in line and "error=" not in line
        request, response = client.dir.sent, client.dir.received
        # ztunnel's log flips them for outbound: bytes_sent is what the local app sent.
        sent, recv = (request, response) if setup.mode == "outbound" else (response, request)
        assert f"bytes_sent={sent} bytes_recv={recv}" in line
    assert not any("reset" in line for line in old.lines + new.lines)


async def test_switch_off_keeps_ztunnels_behaviour(setup: Setup) -> None:
    old = await setup.proxy("old", deadline="1s")
    clients = await setup.clients()
    new = await setup.proxy("new", "--no-connection-migration")
    old.proc.send_signal(signal.SIGTERM)
    await old.wait_for_line("drain duration expired with pending connections")
    for client in clients:
        await client.wait_received(10**12, within=10)  # ends with the reset
    assert all(isinstance(c.dir.error, ConnectionResetError) for c in clients)
    assert not any("registered to take" in line for line in new.lines)
    assert any("registered with the previous instance as its successor" in line for line in new.lines)


async def fake_taker(path: Path, pods: dict[str, handoff.Netns]) -> socket.socket:
    """A taker that registers as a genuine new instance would (it holds the node's key) and answers the drain's
    ping; what it does with the batch is up to the test."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.setblocking(False)
    await asyncio.get_running_loop().sock_connect(conn, str(path))
    taker = migrate.Taker(pods, handoff_key.load_or_create(handoff_key.beside(path)))
    await send_msg(conn, taker.start())
    for _ in range(2):
        data, _ = await recv_msg(conn, max_fds=1)
        for out in taker.receive(data, []).send:
            await send_msg(conn, out)
    return conn


async def answer_ping(conn: socket.socket) -> None:
    data, _ = await asyncio.wait_for(recv_msg(conn, max_fds=1), 10)
    assert handoff.decode(data) == {"type": "ping"}
    await send_msg(conn, handoff.encode({"type": "pong"}))


@pytest.mark.parametrize("answer", ["silent", "lying"])
async def test_a_slow_or_lying_taker_leaves_the_connections_with_the_old_instance(setup: Setup, answer: str) -> None:
    old = await setup.proxy("old")
    clients = await setup.clients()
    uid = f"direct-out-{setup.a_ip}-{setup.out_port}"
    conn = await fake_taker(setup.handoff, {uid: netns_inode("/proc/self/ns/net")})
    try:
        await old.wait_for_line("a new instance will take established connections")
        old.proc.send_signal(signal.SIGTERM)
        await answer_ping(conn)
        data, fds = await asyncio.wait_for(recv_msg(conn), 10)
        assert len(fds) == 2 * CONNECTIONS
        for fd in fds:
            os.close(fd)  # our duplicates: closing them sends nothing while the old instance holds its own
        if answer == "lying":
            batch = handoff.decode(data)["batch"]
            await send_msg(conn, handoff.encode({"type": "taken", "batch": batch + 1, "taken": [1, 2, 3]}))
        kept = await old.wait_for_line("migrated established connections", within=15)
        assert f"connections=0 kept={CONNECTIONS}" in kept
        assert any("connection migration stopped" in line for line in old.lines)  # no further batch
        before = [c.dir.received for c in clients]
        for client, seen in zip(clients, before, strict=True):
            await client.wait_received(seen + 500_000)  # still served by the old instance
        await asyncio.gather(*(c.finish() for c in clients))
        assert_intact(clients, setup.server)
        await old.wait_for_line("shutdown complete")
        assert sum("connection complete" in line for line in old.lines) == CONNECTIONS
    finally:
        conn.close()

"""A new instance killed (SIGKILL) during an upgrade, between `pyztunnel proxy` processes (direct mode, loopback).

What must hold whatever the new instance does (docs/lifecycle.md, "What a crash loses"): the old instance keeps every
connection it still holds, and a restarted new instance finds it and takes them over.
- killed after it registered to take connections, before the old one drains: the old one notices at once, stops
  nothing at its drain (no HBONE stream is stopped for a taker that cannot take it) and relays on;
- killed after it registered (and reported ready): the name `handoff.sock` still leads to the old instance, so the
  restarted one registers there and the upgrade goes on with nothing lost;
- killed with a batch undecided: the plain-TCP relays of the batch run on in the old instance, and its HBONE streams,
  stopped with their peer for that batch, are continued from the old instance (a resume CONNECT of its own at the
  client end; at the server end the app socket waits for the peer's, which the restart gets with the next round).
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pyztunnel.lifecycle import handoff_io
from pyztunnel.localsock import peer_cred
from tests.integration.proxy.streams import Endpoint, StreamServer
from tests.integration.proxy.test_migration import Setup, assert_intact, serving, upgrade_and_finish
from tests.integration.proxy.test_process import Proc
from tests.integration.proxy.test_resume import Nodes


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with serving(Setup(tmp_path)) as s:
        yield s


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with serving(Nodes(tmp_path)) as n:
        yield n


async def kill(proc: Proc) -> None:
    proc.proc.kill()
    await proc.proc.wait()


async def keep_relaying_then_finish(old: Proc, clients: list[Endpoint], server: StreamServer) -> None:
    """The old instance drains with nothing to give: the streams flow on through it, then end intact, no reset."""
    old.proc.send_signal(signal.SIGTERM)
    await old.wait_for_line("no new instance to take established connections; they stay here")
    before = [c.dir.received for c in clients]
    for client, seen in zip(clients, before, strict=True):
        await client.wait_received(seen + 500_000)
    for client in clients:
        await client.finish()
    assert_intact(clients, server)
    await old.wait_for_line("shutdown complete")
    assert not any("reset" in line or "cannot be resumed" in line for line in old.lines)


async def test_a_taker_killed_before_the_drain_stops_no_hbone_stream(nodes: Nodes) -> None:
    staying = await nodes.proxy("b", "staying")
    old = await nodes.proxy("a", "old")
    clients = await nodes.clients()
    new = await nodes.proxy("a", "new")
    await old.wait_for_line("a new instance will take established connections")
    await kill(new)
    await old.wait_for_line("the new instance that registered to take connections went away")
    await keep_relaying_then_finish(old, clients, nodes.server)
    assert not any("reset" in line for line in staying.lines)


async def test_a_taker_killed_before_the_drain_leaves_the_tcp_relays_running(setup: Setup) -> None:
    old = await setup.proxy("old")
    clients = await setup.clients()
    new = await setup.proxy("new")
    await old.wait_for_line("a new instance will take established connections")
    await kill(new)
    await old.wait_for_line("the new instance that registered to take connections went away")
    await keep_relaying_then_finish(old, clients, setup.server)


async def name_holder(path: Path) -> int:
    """The pid of the process serving `path` (SO_PEERCRED of a connection to it)."""
    conn = await handoff_io.connect(path)
    try:
        return peer_cred(conn).pid
    finally:
        conn.close()


async def test_a_new_instance_killed_after_it_registered_leaves_the_name_with_the_old_one(setup: Setup) -> None:
    old = await setup.proxy("old")
    await old.wait_for_line("serving the handoff socket")
    clients = await setup.clients()
    first = await setup.proxy("new")
    await first.wait_for_line("registered to take established connections")
    # Ready, registered: the name still leads to the old instance, which holds the connections (and listeners).
    assert await name_holder(setup.handoff) == old.proc.pid
    await kill(first)
    # Its restart (what the kubelet does) must find the old instance behind the name, not a dead socket.
    restarted = await setup.proxy("restarted")
    await restarted.wait_for_line("registered to take established connections")
    await upgrade_and_finish(old, restarted, clients, setup.server)
    assert not any("reset" in line for line in old.lines + restarted.lines)
    # Once the old instance was done with it, the name moved to the restarted one (for the next upgrade).
    await restarted.wait_for_line("serving the handoff socket")
    assert await name_holder(setup.handoff) == restarted.proc.pid


async def test_two_instances_started_at_once_do_not_both_take_the_name(setup: Setup) -> None:
    """Both find no predecessor at the same moment (an old instance restarted by its kubelet while the new one starts):
    one takes the name, the other registers with it as its successor, and an upgrade from the first to the second
    loses nothing (before: both renamed, the loser was reachable by no one)."""
    procs = await asyncio.gather(setup.proxy("one"), setup.proxy("two"))
    holder = await name_holder(setup.handoff)
    (old,) = [p for p in procs if p.proc.pid == holder]
    (new,) = [p for p in procs if p.proc.pid != holder]
    await new.wait_for_line("registered to take established connections")
    await old.wait_for_line("a new instance will take established connections")
    clients = await setup.clients()  # both accept (SO_REUSEPORT): the old one holds some of them
    old.proc.send_signal(signal.SIGTERM)
    moved = await old.wait_for_line("migrated established connections")
    assert "kept=0" in moved
    await old.wait_for_line("shutdown complete")
    await flows_on(clients, 500_000)  # every stream through the new one
    for client in clients:
        await client.finish()
    assert_intact(clients, setup.server)
    await new.wait_for_line("serving the handoff socket")
    assert await name_holder(setup.handoff) == new.proc.pid
    assert not any("reset" in line for line in old.lines + new.lines)


async def flows_on(clients: list[Endpoint], more: int) -> None:
    before = [c.dir.received for c in clients]
    for client, seen in zip(clients, before, strict=True):
        await client.wait_received(seen + more)


async def taker_dies_mid_batch(
    start: Callable[..., Awaitable[Proc]], old: Proc, clients: list[Endpoint], tmp: Path, flowing: bool = True
) -> Proc:
    """The old instance drains and sends its first batch; the new one dies before it answers (SIGKILL, injected at
    that point); its restart registers during the drain and takes everything in another round. The restart.
    `flowing`: the clients' streams flow through the old instance before the restart starts."""
    fault = ("--fault", "new-migration-batch", "--fault-marker", str(tmp / "fired"))
    first = await start("new", *fault)
    await old.wait_for_line("a new instance will take established connections")
    old.proc.send_signal(signal.SIGTERM)
    await first.wait_for_line("fault injected: killing this process")
    await first.proc.wait()
    kept = await old.wait_for_line("migrated established connections")
    assert f"connections=0 kept={len(clients)}" in kept  # never answered: everything stayed with the old one
    if flowing:
        await flows_on(clients, 200_000)  # through the old instance, meanwhile
    restarted = await start("restarted", *fault)  # the marker is there: it does not die again
    await old.wait_for_line("a new instance registered during our drain")
    moved = await old.wait_for_lines("migrated established connections", 2)
    assert f"connections={len(clients)}" in moved[1]
    await old.wait_for_line("shutdown complete")
    await restarted.wait_for_line("took over established connections")
    await flows_on(clients, 500_000)  # through the restarted instance
    for client in clients:
        await client.finish()
    return restarted


async def test_a_new_instance_killed_in_the_middle_of_the_migration_is_replaced_by_its_restart(setup: Setup) -> None:
    """The plain-TCP relays of the unanswered batch go on relaying at the old instance, then move to the restart."""
    old = await setup.proxy("old")
    clients = await setup.clients()
    restarted = await taker_dies_mid_batch(setup.proxy, old, clients, setup.tmp)
    assert_intact(clients, setup.server)
    assert not any("reset" in line for line in old.lines + restarted.lines)


@pytest.mark.parametrize("moving", ["a", "b"])
async def test_hbone_streams_stopped_for_a_taker_that_dies_mid_batch_go_on(nodes: Nodes, moving: str) -> None:
    """They were stopped with their peer for the batch: at the client end (`a`) the old instance continues them with
    its own resume CONNECTs; at the server end (`b`) the peer's resume CONNECTs are refused until the restart
    listens, and then find the app sockets that the old instance handed to the restart."""
    staying = await nodes.proxy("b" if moving == "a" else "a", "staying")
    old = await nodes.proxy(moving, "old")
    clients = await nodes.clients()
    start = functools.partial(nodes.proxy, moving)
    restarted = await taker_dies_mid_batch(start, old, clients, nodes.tmp, flowing=moving == "a")
    assert_intact(clients, nodes.server)
    logs = old.lines + restarted.lines + staying.lines
    assert not any("reset" in line or "cannot be resumed" in line for line in logs)

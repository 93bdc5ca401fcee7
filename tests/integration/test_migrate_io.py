"""The old instance's shell (`GiveService`) against scripted takers over a real SEQPACKET pair: what is released,
what resumes, and that a taker which vanishes or stalls gets no further batch."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence

import pytest

from pyztunnel.aio import spawn
from pyztunnel.lifecycle import handoff, migrate
from pyztunnel.lifecycle.handoff import Netns
from pyztunnel.lifecycle.handoff_io import recv_msg, send_msg
from pyztunnel.lifecycle.migrate_header import ConnHeader, Ends
from pyztunnel.lifecycle.migrate_io import Exportable, Exported, GiveService
from pyztunnel.lifecycle.migrate_take import Intake
from pyztunnel.netns import netns_inode

NS: Netns = (1, 2)
ENDS = Ends(("127.0.0.1", 1), ("127.0.0.1", 2))
KEY = bytes(range(32))


class FakeRelay:
    def __init__(self, movable: bool = True) -> None:
        self.movable = movable
        self.state = "running"
        self.prepared = 0  # how often it was paused (an HBONE stream: stopped with its peer) for a move

    async def prepare(self, within: float) -> Exported | None:
        if not self.movable:
            return None
        self.prepared += 1
        self.state = "paused"
        r, w = os.pipe()  # any fds do for the giver; the taker here does not validate
        return Exported("pod-a", "outbound-passthrough", ENDS, ENDS, 1.0, {}, r, w)

    def release(self) -> None:
        self.state = "released"

    def resume(self) -> None:
        self.state = "running"


class Source:
    def __init__(self, relays: list[FakeRelay]) -> None:
        self.relays = relays
        self.listed: set[int] = set()

    def migration_pods(self) -> Mapping[str, Netns]:
        return {"pod-a": NS}

    def migration_candidates(self, uids: set[str]) -> Sequence[Exportable]:
        fresh = [r for r in self.relays if id(r) not in self.listed]  # each one once, as the contract says
        self.listed.update(id(r) for r in fresh)
        return fresh

    def migration_relist(self) -> None:
        self.listed = {id(r) for r in self.relays if r.state == "released"}


async def register(service: GiveService) -> tuple[socket.socket, asyncio.Task[None]]:
    """A taker registered with `service`; the old side's socket is closed when its exchange ends (as the handoff
    service does). At the drain it is pinged first: `answer_ping`."""
    old, new = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old.setblocking(False)
    new.setblocking(False)
    taker = migrate.Taker({"pod-a": NS}, KEY)
    await send_msg(new, taker.start())
    first, _ = await recv_msg(old, max_fds=1)
    task = spawn(service.handle(old, first), "handle")
    task.add_done_callback(lambda _: old.close())
    for _ in range(2):
        data, _ = await recv_msg(new, max_fds=1)
        for out in taker.receive(data, []).send:
            await send_msg(new, out)
    await asyncio.wait_for(service.registered.wait(), 5)
    return new, task


async def answer_ping(new: socket.socket) -> None:
    data, _ = await asyncio.wait_for(recv_msg(new), 5)
    assert handoff.decode(data) == {"type": "ping"}
    await send_msg(new, handoff.encode({"type": "pong"}))


async def test_taken_relays_are_released_and_the_rest_resume() -> None:
    relays = [FakeRelay(), FakeRelay(movable=False), FakeRelay()]
    service = GiveService(Source(relays), KEY)
    new, task = await register(service)
    try:
        migrating = spawn(service.migrate(), "migrate")
        await answer_ping(new)
        data, fds = await asyncio.wait_for(recv_msg(new), 5)
        msg = handoff.decode(data)
        assert len(fds) == 4 and [c["id"] for c in msg["connections"]] == [1, 2]
        for fd in fds:
            os.close(fd)
        answer = {"type": "taken", "batch": msg["batch"], "taken": [2], "refused": [{"id": 1, "reason": "no"}]}
        await send_msg(new, handoff.encode(answer))
        assert handoff.decode((await recv_msg(new))[0]) == {"type": "commit", "batch": 1, "ids": [2]}
        assert handoff.decode((await recv_msg(new))[0]) == {"type": "done"}
        assert await asyncio.wait_for(migrating, 5) == 1
        assert [r.state for r in relays] == ["running", "running", "released"]
        await asyncio.wait_for(task, 5)
    finally:
        new.close()
        await service.close()


async def test_a_taker_that_vanishes_leaves_everything_running() -> None:
    relays = [FakeRelay() for _ in range(150)]  # two batches: the second is never offered
    service = GiveService(Source(relays), KEY)
    new, task = await register(service)
    migrating = spawn(service.migrate(), "migrate")
    await answer_ping(new)
    _, fds = await asyncio.wait_for(recv_msg(new), 5)
    assert len(fds) == 2 * migrate.MAX_CONNECTIONS_PER_MESSAGE
    for fd in fds:
        os.close(fd)
    new.close()
    assert await asyncio.wait_for(migrating, 5) == 0
    assert {r.state for r in relays} == {"running"}
    assert service.kept == migrate.MAX_CONNECTIONS_PER_MESSAGE
    await asyncio.wait_for(task, 5)
    await service.close()


async def test_a_stalled_taker_gets_no_second_batch() -> None:
    relays = [FakeRelay() for _ in range(150)]
    service = GiveService(Source(relays), KEY, answer_timeout=0.2)
    new, task = await register(service)
    try:
        migrating = spawn(service.migrate(), "migrate")
        await answer_ping(new)
        _, fds = await asyncio.wait_for(recv_msg(new), 5)
        for fd in fds:
            os.close(fd)
        assert await asyncio.wait_for(migrating, 5) == 0
        assert handoff.decode((await recv_msg(new))[0]) == {"type": "abort", "batch": 1}
        assert {r.state for r in relays} == {"running"}
        await asyncio.wait_for(task, 5)
        # Nothing more was sent (no second batch, no done): the next thing is the end of the exchange.
        assert new.recv(65536) == b""
    finally:
        new.close()
        await service.close()


async def test_no_taker_no_migration() -> None:
    relays = [FakeRelay()]
    assert await GiveService(Source(relays), KEY).migrate() == 0
    assert relays[0].state == "running"


async def test_a_taker_that_dies_before_the_drain_is_noticed_and_nothing_is_paused() -> None:
    relays = [FakeRelay() for _ in range(3)]
    service = GiveService(Source(relays), KEY)
    new, task = await register(service)
    new.close()  # kill -9 of the new instance between its registration and our drain
    await asyncio.wait_for(task, 5)  # noticed at once: its registration ended
    assert await service.migrate() == 0
    assert [r.prepared for r in relays] == [0, 0, 0] and {r.state for r in relays} == {"running"}
    await service.close()


async def test_a_taker_that_does_not_answer_the_ping_gets_nothing_and_nothing_is_paused() -> None:
    relays = [FakeRelay() for _ in range(3)]
    service = GiveService(Source(relays), KEY, answer_timeout=0.2)
    new, task = await register(service)
    try:
        assert await asyncio.wait_for(service.migrate(), 5) == 0  # the ping goes unanswered (a stopped process)
        assert [r.prepared for r in relays] == [0, 0, 0]
        await asyncio.wait_for(task, 5)
    finally:
        new.close()
        await service.close()


async def test_the_newest_live_taker_gets_the_connections() -> None:
    relays = [FakeRelay()]
    service = GiveService(Source(relays), KEY)
    older, older_task = await register(service)
    newer, newer_task = await register(service)
    try:
        newer.close()  # the newest died (and was restarted as... nothing here): the older one is still there
        await asyncio.wait_for(newer_task, 5)
        migrating = spawn(service.migrate(), "migrate")
        await answer_ping(older)
        data, fds = await asyncio.wait_for(recv_msg(older), 5)
        for fd in fds:
            os.close(fd)
        batch = handoff.decode(data)["batch"]
        await send_msg(older, handoff.encode({"type": "taken", "batch": batch, "taken": [1], "refused": []}))
        assert await asyncio.wait_for(migrating, 5) == 1 and relays[0].state == "released"
        await asyncio.wait_for(older_task, 5)
    finally:
        older.close()
        await service.close()


class Sink:
    def __init__(self) -> None:
        self.adopted: list[int] = []

    def migration_pods(self) -> Mapping[str, Netns]:
        return {"pod-a": netns_inode("/proc/self/ns/net")}

    async def adopt(self, header: ConnHeader, down: socket.socket | None, up: socket.socket | None) -> bool:
        self.adopted.append(header.id)
        for sock in (down, up):
            if sock is not None:
                sock.close()
        return True


async def test_a_batch_held_when_the_old_instance_dies_is_kept_by_the_new_one() -> None:
    """kill -9 of the old instance after it sent a batch: its copies of the sockets die with it; the new one's are
    the last, so it resumes them instead of closing them (which would end the connections)."""
    sink = Sink()
    old, new = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    giver, taker = migrate.Giver(KEY), migrate.Taker(sink.migration_pods(), KEY)
    reply = giver.receive(taker.start(), sink.migration_pods())
    reply = giver.receive(taker.receive(reply.send[0], []).send[0], sink.migration_pods())
    taker.receive(reply.send[0], [])
    assert taker.state == "waiting"
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        intake = Intake(new, taker, sink, commit_timeout=5)
        ends = Ends(accepted.getsockname(), accepted.getpeername())
        up = Ends(client.getsockname(), client.getpeername())
        batch = giver.batch([ConnHeader(1, "pod-a", "inbound-plaintext", ends, up, 1.0, {})])
        await send_msg(old, batch, [accepted.fileno(), client.fileno()])
        data, _ = await asyncio.wait_for(recv_msg(old), 5)  # taken ...
        assert handoff.decode(data)["taken"] == [1]
        old.close()  # ... and the old instance dies before its commit
        await asyncio.wait_for(intake.done.wait(), 5)
        assert sink.adopted == [1]
    finally:
        for s in (listener, client, accepted, old):
            s.close()


async def test_a_taker_registering_during_the_drain_gets_what_the_dead_one_did_not_take() -> None:
    """The new instance dies in the middle of the migration; its restart registers while we still drain: it gets
    every connection we kept (another round), instead of our deadline resetting them."""
    relays = [FakeRelay() for _ in range(3)]
    service = GiveService(Source(relays), KEY)
    first, first_task = await register(service)
    migrating = spawn(service.migrate(), "migrate")
    await answer_ping(first)
    _, fds = await asyncio.wait_for(recv_msg(first), 5)
    for fd in fds:
        os.close(fd)
    first.close()  # kill -9 with the batch unanswered
    assert await asyncio.wait_for(migrating, 5) == 0
    await asyncio.wait_for(first_task, 5)
    assert {r.state for r in relays} == {"running"}
    second, second_task = await register(service)  # the restart: another round starts by itself
    try:
        await answer_ping(second)
        data, fds = await asyncio.wait_for(recv_msg(second), 5)
        for fd in fds:
            os.close(fd)
        msg = handoff.decode(data)
        assert len(msg["connections"]) == 3
        ids = [c["id"] for c in msg["connections"]]
        await send_msg(second, handoff.encode({"type": "taken", "batch": msg["batch"], "taken": ids, "refused": []}))
        assert handoff.decode((await recv_msg(second))[0])["type"] == "commit"
        assert handoff.decode((await recv_msg(second))[0]) == {"type": "done"}
        await asyncio.wait_for(second_task, 5)
        assert {r.state for r in relays} == {"released"}
    finally:
        second.close()
        await service.close()


class CountingRelay(FakeRelay):
    """Counts how many relays are paused (prepared, neither released nor resumed) at the same time."""

    paused = 0
    most = 0

    async def prepare(self, within: float) -> Exported | None:
        CountingRelay.paused += 1
        CountingRelay.most = max(CountingRelay.most, CountingRelay.paused)
        return await super().prepare(within)

    def release(self) -> None:
        CountingRelay.paused -= 1
        super().release()

    def resume(self) -> None:
        CountingRelay.paused -= 1
        super().resume()


async def test_only_a_window_of_relays_is_paused_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    # The rest of the node's traffic keeps flowing through the old instance while a batch is handed over.
    caplog.set_level(logging.INFO, "pyztunnel.lifecycle.migrate")
    CountingRelay.paused = CountingRelay.most = 0
    relays = [CountingRelay() for _ in range(450)]
    service = GiveService(Source(list(relays)), KEY, prepare_window=200)
    new, task = await register(service)
    try:
        migrating = spawn(service.migrate(), "migrate")
        await answer_ping(new)
        batches = 0
        while True:
            data, fds = await asyncio.wait_for(recv_msg(new, max_fds=200), 5)
            msg = handoff.decode(data)
            if msg["type"] == "done":
                break
            for fd in fds:
                os.close(fd)
            ids = [c["id"] for c in msg["connections"]]
            await send_msg(new, handoff.encode({"type": "taken", "batch": msg["batch"], "taken": ids, "refused": []}))
            assert handoff.decode((await recv_msg(new))[0])["type"] == "commit"
            batches += 1
        assert await asyncio.wait_for(migrating, 5) == 450
        assert {r.state for r in relays} == {"released"} and batches >= 5
        assert CountingRelay.most <= 200, CountingRelay.most
        # The pass's log line says how long its relays were paused (each from its prepare to its release).
        (record,) = [r for r in caplog.records if r.getMessage() == "migration pass"]
        fields = record.fields  # type: ignore[attr-defined]
        assert fields["moved"] == 450
        assert 0 <= fields["pause_p50_ms"] <= fields["pause_p99_ms"] <= fields["pause_max_ms"]
        assert fields["pause_max_ms"] <= fields["seconds"] * 1000 + 1
        await asyncio.wait_for(task, 5)
    finally:
        new.close()
        await service.close()

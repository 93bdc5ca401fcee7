"""The pool's sharing of connections being opened: a burst opens what it needs at once, never one more than that."""

from __future__ import annotations

import asyncio
import typing

import pytest

from pyztunnel.proxy.h2conn import H2ClientConn
from pyztunnel.proxy.pool import Pool

KEY = ("spiffe://a", "spiffe://b", "10.0.0.1")


pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


class FakeConn:
    """What the pool looks at on a connection; `open_stream` is the caller's part, here a count."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.opened_streams = 0
        self.streams: dict[int, object] = {}
        self.closing = False
        self.on_idle: object = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def usable(self) -> bool:
        return not self.closing and self.opened_streams < self.max_streams

    def goaway(self) -> None:
        self.closing = True


class Connector:
    def __init__(self, max_streams: int, fail_first: int = 0) -> None:
        self.max_streams = max_streams
        self.started = 0
        self.fail_first = fail_first
        self.release = asyncio.Event()
        self.made: list[FakeConn] = []
        self.changed = asyncio.Event()

    async def wait_started(self, count: int) -> None:
        async with asyncio.timeout(5):
            while self.started < count:
                self.changed.clear()
                await self.changed.wait()

    async def __call__(self) -> H2ClientConn:
        self.started += 1
        self.changed.set()
        attempt = self.started
        await self.release.wait()  # every attempt is under way at once until the test lets them finish
        if attempt <= self.fail_first:
            raise ConnectionError(f"attempt {attempt} failed")
        self.made.append(FakeConn(self.max_streams))
        return typing.cast(H2ClientConn, self.made[-1])


async def take_stream(pool: Pool, connect: Connector) -> H2ClientConn:
    conn = await pool.get(KEY, connect)
    typing.cast(FakeConn, conn).opened_streams += 1  # what open_stream does, synchronously after get
    return conn


@pytest.mark.parametrize(("callers", "expected"), [(1, 1), (100, 1), (101, 2), (250, 3)])
async def test_a_burst_opens_the_connections_it_needs_concurrently(callers: int, expected: int) -> None:
    pool = Pool(streams_per_connection=100)
    connect = Connector(max_streams=100)
    tasks = [asyncio.ensure_future(take_stream(pool, connect)) for _ in range(callers)]
    await connect.wait_started(expected)
    for _ in range(callers):
        await asyncio.sleep(0)  # [noqa: sleep-ok: yields so that a wrong pool would start more attempts]
    assert connect.started == expected  # all under way at once, before any finished
    connect.release.set()
    conns = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len({id(c) for c in conns}) == expected
    assert all(typing.cast(FakeConn, c).opened_streams <= 100 for c in conns)
    assert pool.opened == expected


async def test_a_failed_attempt_fails_its_caller_and_the_others_retry() -> None:
    pool = Pool(streams_per_connection=100)
    connect = Connector(max_streams=100, fail_first=1)
    first = asyncio.ensure_future(take_stream(pool, connect))
    others = [asyncio.ensure_future(take_stream(pool, connect)) for _ in range(5)]
    for _ in range(10):
        await asyncio.sleep(0)  # [noqa: sleep-ok: yields so every caller reaches the pool]
    connect.release.set()
    with pytest.raises(ConnectionError, match="attempt 1 failed"):
        await asyncio.wait_for(first, 5)
    conns = await asyncio.wait_for(asyncio.gather(*others), 5)
    assert len({id(c) for c in conns}) == 1 and connect.started == 2


async def test_a_connection_opened_after_close_is_not_kept() -> None:
    pool = Pool()
    connect = Connector(max_streams=100)
    caller = asyncio.ensure_future(take_stream(pool, connect))
    await connect.wait_started(1)
    pool.close()
    connect.release.set()
    with pytest.raises(ConnectionError, match="pool closed"):
        await asyncio.wait_for(caller, 5)
    assert not pool.connections and [c.closing for c in connect.made] == [True]


async def test_a_draining_pool_still_serves_and_tells_every_connection_it_goes_away() -> None:
    """The proxy's drain: a connection accepted as it began still gets its stream (a closed pool reset it: the e2e
    502; tests/integration/proxy/test_hbone.py), on a new connection (it goes away once idle); every pooled
    connection, busy ones too, gets its GOAWAY at once (without it a waypoint never learnt its upstream was going
    away and its streams met the reset at the drain deadline: 502s in test_waypoint_cluster)."""
    pool = Pool()
    connect = Connector(max_streams=100)
    connect.release.set()
    busy = typing.cast(FakeConn, await take_stream(pool, connect))
    busy.streams[1] = object()
    idle = typing.cast(FakeConn, await pool.get(("spiffe://a", "spiffe://c", "10.0.0.2"), connect))
    pool.drain()
    assert idle.closing and busy.closing and list(busy.streams) == [1]  # its stream goes on
    fresh = typing.cast(FakeConn, await take_stream(pool, connect))
    assert fresh not in (busy, idle) and not fresh.closing

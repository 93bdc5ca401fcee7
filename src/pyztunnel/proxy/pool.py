"""Pooled outbound HBONE connections (§3.3), one pool per pod.

Key: (source identity, destination identity, destination IP). A connection serves at most `max_streams` streams in
its life and then leaves the pool (it closes when its last stream ends). Concurrent requests for a key share the
connections being opened: one more is opened only when those under way are spoken for (`streams_per_connection`
callers each), so a burst of N requests opens N/100 connections at once, not one after another (an upgrade resumes
hundreds of streams to one destination at the same moment). A caller whose own connection attempt fails gets its
error; one that waited on another's retries. A connection idle for `idle_timeout` is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable

from pyztunnel.aio import spawn
from pyztunnel.proxy.h2conn import H2ClientConn, H2Conn

_log = logging.getLogger("pyztunnel.proxy.pool")

PoolKey = tuple[str, str, str]  # (src identity, dst identity, dst ip)


@dataclasses.dataclass
class _Opening:
    """Connections being opened for one key, and how many callers wait for a stream on one of them."""

    tasks: set[asyncio.Task[H2ClientConn]] = dataclasses.field(default_factory=set)
    waiting: int = 0


class Pool:
    def __init__(self, idle_timeout: float = 300.0, streams_per_connection: int = 100) -> None:
        self.idle_timeout = idle_timeout
        self.streams_per_connection = max(1, streams_per_connection)
        self._conns: dict[PoolKey, list[H2ClientConn]] = {}
        self._opening: dict[PoolKey, _Opening] = {}
        self._idle: dict[int, asyncio.TimerHandle] = {}
        self.opened = 0
        self._closed = False
        self._draining = False

    def _usable(self, key: PoolKey) -> H2ClientConn | None:
        conns = self._conns.get(key)
        if not conns:
            return None
        for conn in list(conns):
            if conn.usable:
                return conn
            # Spent (stream budget), going away or dead: out of the pool; it closes once its streams end.
            conns.remove(conn)
            if conn.streams:
                conn.on_idle = _close_spent
            else:
                conn.goaway()
        return None

    async def get(self, key: PoolKey, connect: Callable[[], Awaitable[H2ClientConn]]) -> H2ClientConn:
        """A connection for `key` with room for one more stream (opening one if needed)."""
        while True:
            if self._closed:
                raise ConnectionError("pool closed")
            conn = self._usable(key)
            if conn is not None:
                self._touch(conn)
                return conn
            opening = self._opening.setdefault(key, _Opening())
            mine: asyncio.Task[H2ClientConn] | None = None
            if opening.waiting >= len(opening.tasks) * self.streams_per_connection:
                mine = spawn(self._open(key, connect), "pool-connect")
                opening.tasks.add(mine)
                mine.add_done_callback(functools.partial(self._opened, key, opening))
            opening.waiting += 1
            try:
                if mine is not None:
                    # Shielded: others count on this connection even if this caller goes away.
                    await asyncio.shield(mine)
                else:
                    await asyncio.wait(set(opening.tasks), return_when=asyncio.FIRST_COMPLETED)
            finally:
                opening.waiting -= 1
                self._drop_if_unused(key, opening)

    async def _open(self, key: PoolKey, connect: Callable[[], Awaitable[H2ClientConn]]) -> H2ClientConn:
        conn = await connect()
        self.opened += 1
        if self._closed:  # closed while we were connecting: it serves nothing; GOAWAY closes it at once
            conn.goaway()
            return conn
        conn.on_idle = self._on_idle
        self._conns.setdefault(key, []).append(conn)
        conn.lost.add_done_callback(functools.partial(self._forget_done, key, conn))
        self._touch(conn)
        return conn

    def _opened(self, key: PoolKey, opening: _Opening, task: asyncio.Task[H2ClientConn]) -> None:
        opening.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller that started it raises it; nobody else needs it
        self._drop_if_unused(key, opening)

    def _drop_if_unused(self, key: PoolKey, opening: _Opening) -> None:
        if not opening.tasks and not opening.waiting and self._opening.get(key) is opening:
            del self._opening[key]

    def _touch(self, conn: H2ClientConn) -> None:
        handle = self._idle.pop(id(conn), None)
        if handle is not None:
            handle.cancel()

    def _on_idle(self, conn: H2Conn) -> None:
        assert isinstance(conn, H2ClientConn)
        if not conn.usable or self._draining:
            conn.goaway()
            return
        loop = asyncio.get_running_loop()
        self._touch(conn)
        self._idle[id(conn)] = loop.call_later(self.idle_timeout, self._expire, conn)

    def _expire(self, conn: H2ClientConn) -> None:
        self._idle.pop(id(conn), None)
        if not conn.streams:
            _log.debug("closing idle pooled connection")
            conn.goaway()

    def _forget_done(self, key: PoolKey, conn: H2ClientConn, _: object) -> None:
        self._forget(key, conn)

    def _forget(self, key: PoolKey, conn: H2ClientConn) -> None:
        self._touch(conn)
        conns = self._conns.get(key)
        if conns and conn in conns:
            conns.remove(conn)
        if not conns:
            self._conns.pop(key, None)

    @property
    def connections(self) -> list[H2ClientConn]:
        return [c for conns in self._conns.values() for c in conns]

    def drain(self) -> None:
        """The proxy drains: GOAWAY every pooled connection (streams in flight go on, and the peer learns that the
        connection is going away: a waypoint ends its HTTP exchanges on it gracefully instead of meeting the reset at
        the drain deadline), but requests are still served (a connection accepted just before the drain began still
        needs its stream; refusing it would reset an app's connection): on a new connection, which goes away once
        its streams end."""
        self._draining = True
        self._goaway_all()

    def close(self) -> None:
        """GOAWAY every pooled connection (streams in flight go on) and refuse new requests."""
        self._closed = True
        self._goaway_all()

    def _goaway_all(self) -> None:
        for conn in self.connections:
            conn.goaway()
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()


def _close_spent(conn: H2Conn) -> None:
    conn.goaway()

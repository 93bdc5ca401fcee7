"""Pooled outbound HBONE connections (§3.3), one pool per pod.

Key: (source identity, destination identity, destination IP). A connection serves at most `max_streams` streams in
its life and then leaves the pool (it closes when its last stream ends). Concurrent requests for a key wait on a
per-key lock, so only one new connection is opened at a time. A connection idle for `idle_timeout` is closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from pyztunnel.proxy.h2conn import H2ClientConn, H2Conn

_log = logging.getLogger("pyztunnel.proxy.pool")

PoolKey = tuple[str, str, str]  # (src identity, dst identity, dst ip)


class Pool:
    def __init__(self, idle_timeout: float = 300.0) -> None:
        self.idle_timeout = idle_timeout
        self._conns: dict[PoolKey, list[H2ClientConn]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._idle: dict[int, asyncio.TimerHandle] = {}
        self.opened = 0
        self._closed = False

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
        if self._closed:
            raise ConnectionError("pool closed")
        conn = self._usable(key)
        if conn is not None:
            self._touch(conn)
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._usable(key)
            if conn is not None:
                self._touch(conn)
                return conn
            conn = await connect()
            self.opened += 1
            conn.on_idle = self._on_idle
            self._conns.setdefault(key, []).append(conn)
            conn.lost.add_done_callback(functools.partial(self._forget_done, key, conn))
            self._touch(conn)
            return conn

    def _touch(self, conn: H2ClientConn) -> None:
        handle = self._idle.pop(id(conn), None)
        if handle is not None:
            handle.cancel()

    def _on_idle(self, conn: H2Conn) -> None:
        assert isinstance(conn, H2ClientConn)
        if not conn.usable:
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
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                self._locks.pop(key, None)

    @property
    def connections(self) -> list[H2ClientConn]:
        return [c for conns in self._conns.values() for c in conns]

    def close(self) -> None:
        """GOAWAY every pooled connection (streams in flight go on) and refuse new requests."""
        self._closed = True
        for conn in self.connections:
            conn.goaway()
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()


def _close_spent(conn: H2Conn) -> None:
    conn.goaway()

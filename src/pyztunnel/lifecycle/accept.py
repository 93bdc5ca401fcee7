"""Accepting on a listening socket so that stopping never loses a connection.

`AcceptLoop` calls accept() inside the event loop's reader callback and hands each connection over synchronously, so
`pause()` is just `remove_reader`: there is no moment at which a connection has been accepted but its owner is being
cancelled (cancelling a task blocked in `loop.sock_accept()` has exactly that window; docs/lifecycle.md). A paused
listener keeps its queue (for a listener handed to another instance that is what we want); `close()` removes it from
the loop first, then closes our descriptor (a handed-off socket lives on in the other instance; never shutdown()).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable

from pyztunnel.aio import TaskGroup

_log = logging.getLogger("pyztunnel.lifecycle.accept")

_RESOURCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_TRANSIENT = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)
BACKOFF_S = 0.1


class AcceptLoop:
    def __init__(
        self,
        sock: socket.socket,
        handle: Callable[[socket.socket], Awaitable[None] | None],
        name: str = "listener",
        per_wakeup: int = 64,
        *,
        tasks: TaskGroup,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.handle = handle
        self.name = name
        self.tasks = tasks  # the owner of an async handler's coroutines
        self.per_wakeup = per_wakeup  # bounded, so one busy listener cannot starve the loop
        self.accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None

    @property
    def accepting(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        if self._loop is None and self.sock.fileno() >= 0:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock.fileno(), self._ready)

    def pause(self) -> None:
        """Stop accepting now (sync: safe from a signal-driven drain). The socket and its queue stay."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def close(self) -> None:
        self.pause()
        self.sock.close()

    def _ready(self) -> None:
        for _ in range(self.per_wakeup):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue
                if exc.errno in _RESOURCE:
                    # Out of fds or memory: back off instead of spinning; the queue waits.
                    _log.error("accept failed", extra={"fields": {"listener": self.name, "error": str(exc)}})
                    loop = self._loop
                    self.pause()
                    if loop is not None:
                        self._retry = loop.call_later(BACKOFF_S, self.start)
                    return
                raise
            self.accepted += 1
            conn.setblocking(False)
            try:
                result = self.handle(conn)
            except Exception:
                _log.exception("connection handler failed", extra={"fields": {"listener": self.name}})
                conn.close()
                continue
            if result is not None:
                self.tasks.spawn(_guard(result, conn), f"conn-{self.name}")


async def _guard(awaitable: Awaitable[None], conn: socket.socket) -> None:
    try:
        await awaitable
    except Exception:
        _log.exception("connection handler failed")
        conn.close()

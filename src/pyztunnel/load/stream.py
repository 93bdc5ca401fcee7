"""`-stream` (tcp:// only): every connection streams pattern data to an echo server for the whole run.

The data is a per-connection pseudo-random pattern, so each echoed byte is checked against what was sent at that
offset. A connection that breaks is counted (with the bytes sent but never echoed: lost) and reopened; echoed bytes
that differ from the pattern are counted as corrupted. Each streaming session is one "call" in the fortio output:
`OK` when it lasted until the end intact.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Protocol, cast

from pyztunnel.aio import TaskGroup
from pyztunnel.load.histogram import Histogram
from pyztunnel.load.options import LoadOptions
from pyztunnel.load.stats import RunStats, error_kind

CHUNK = 16 * 1024
WINDOW = 256 * 1024  # bytes in flight at most: bounds what a break can lose, keeps the check cheap
RECONNECT_DELAY = 0.1
_now = time.monotonic


class Worker(Protocol):
    """What a stream needs of the worker that owns it (`runner.Worker`)."""

    options: LoadOptions
    stats: RunStats
    loop: asyncio.AbstractEventLoop
    address: tuple[Any, ...]
    stopping: bool
    tasks: TaskGroup  # owns the streams' connects

    def caller_done(self) -> None: ...


def stream_pattern(connection: int, size: int = 64 * 1024) -> bytes:
    """The data a -stream connection sends, repeated: pseudo-random, different per connection, reproducible."""
    return random.Random(connection).randbytes(size)


def count_mismatches(data: bytes, pattern: bytes, offset: int) -> int:
    """Bytes of `data` that differ from the cyclic `pattern` starting at `offset` (sans-IO)."""
    size = len(pattern)
    bad = 0
    pos = 0
    while pos < len(data):
        start = (offset + pos) % size
        take = min(len(data) - pos, size - start)
        piece = data[pos : pos + take]
        expected = pattern[start : start + take]
        if piece != expected:
            bad += sum(1 for a, b in zip(piece, expected, strict=True) if a != b)
        pos += take
    return bad


class _StreamProto(asyncio.Protocol):
    def __init__(self, caller: StreamCaller) -> None:
        self.caller = caller
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.caller.on_data(self, data)

    def eof_received(self) -> bool | None:
        return False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.caller.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.caller.on_lost(self, exc)


class StreamCaller:
    def __init__(self, worker: Worker, connection: int) -> None:
        self.worker = worker
        self.id = connection
        self.pattern = stream_pattern(connection)
        self.proto: _StreamProto | None = None
        self.sockets = 0
        self.peer = ""
        self.connect_times = Histogram(worker.options.resolution)
        self.sent = 0
        self.received = 0
        self.corrupted = 0
        self.session_start = 0.0
        self.ending = False
        self.done = False
        self.drain_timer: asyncio.TimerHandle | None = None
        self.retry_timer: asyncio.TimerHandle | None = None

    async def warmup(self) -> str | None:
        return None

    def start(self) -> None:
        self._open()

    def _open(self) -> None:
        self.retry_timer = None
        if self.ending or self.worker.stopping:
            return self._finish()
        self.worker.tasks.spawn(self._connect(), name=f"load-stream-{self.id}")
        return None

    async def _connect(self) -> None:
        worker = self.worker
        started = _now()
        try:
            async with asyncio.timeout(worker.options.timeout):
                transport, proto = await worker.loop.create_connection(
                    lambda: _StreamProto(self), worker.address[0], worker.address[1]
                )
        except (TimeoutError, OSError) as exc:
            kind = "connect: " + ("timeout" if isinstance(exc, TimeoutError) else error_kind(exc))
            now = _now()
            worker.stats.record(kind, round(now - started, 9), now, kind)
            if not (self.ending or worker.stopping):
                self.retry_timer = worker.loop.call_later(RECONNECT_DELAY, self._open)
            else:
                self._finish()
            return
        self.sockets += 1
        took = round(_now() - started, 9)
        self.connect_times.record(took)
        worker.stats.connect_times.record(took)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        if self.ending or worker.stopping:
            transport.close()
            return self._finish()
        self.proto = proto
        self.sent = self.received = self.corrupted = 0
        self.session_start = _now()
        worker.stats.stream.connections += 1
        self.pump()
        return None

    def pump(self) -> None:
        proto = self.proto
        if proto is None or proto.transport is None or self.ending:
            return
        size = len(self.pattern)
        while not proto.paused and self.sent - self.received < WINDOW:
            start = self.sent % size
            chunk = self.pattern[start : start + CHUNK]
            proto.transport.write(chunk)
            self.sent += len(chunk)
            self.worker.stats.bytes_sent += len(chunk)
            self.worker.stats.stream.bytes_sent += len(chunk)

    def on_data(self, proto: _StreamProto, data: bytes) -> None:
        if proto is not self.proto:
            return
        stats = self.worker.stats
        beyond = max(self.received + len(data) - self.sent, 0)  # more than was sent: all of that is wrong
        bad = count_mismatches(data[: len(data) - beyond], self.pattern, self.received) + beyond
        self.corrupted += bad
        self.received += len(data)
        stats.bytes_received += len(data)
        stats.stream.bytes_echoed += len(data)
        stats.stream.bytes_corrupted += bad
        stats.second(_now()).echoed += len(data)
        if self.ending:
            if self.received >= self.sent:
                self._end_session("OK" if not self.corrupted else "corrupted", None)
            return
        self.pump()

    def on_lost(self, proto: _StreamProto, exc: Exception | None) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        stats = self.worker.stats
        stats.stream.broken += 1
        stats.second(_now()).broken += 1
        kind = "broken: " + error_kind(exc)
        self._end_session(kind, kind, lost=max(self.sent - self.received, 0))
        if not (self.ending or self.worker.stopping):
            self.retry_timer = self.worker.loop.call_later(RECONNECT_DELAY, self._open)
        else:
            self._finish()

    def _end_session(self, code: str, kind: str | None, lost: int = 0) -> None:
        stats = self.worker.stats
        now = _now()
        if self.corrupted:
            stats.stream.corrupted_connections += 1
            if code == "OK":
                code = kind = "corrupted"
        stats.stream.bytes_lost += lost
        stats.second(now).lost += lost
        stats.record(code, round(now - self.session_start, 9), now, kind)
        self.corrupted = 0
        if code in {"OK", "corrupted"}:
            self._drop()
            self._finish()

    def wake(self) -> None:
        """The run is over: stop sending, wait (up to -timeout) for the echo of what was sent, then close."""
        if self.ending:
            return
        self.ending = True
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
            return self._finish()
        if self.proto is None:
            return None  # connecting: _connect finishes
        if self.received >= self.sent:
            self._end_session("OK", None)
            return None
        self.drain_timer = self.worker.loop.call_later(self.worker.options.timeout, self._drain_timeout)
        return None

    def _drain_timeout(self) -> None:
        self.drain_timer = None
        if self.proto is not None:
            lost = self.sent - self.received
            self.worker.stats.stream.broken += 1
            self._end_session("echo timeout", "echo timeout", lost=lost)
            self._drop()
            self._finish()

    def _drop(self) -> None:
        proto, self.proto = self.proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    def _finish(self) -> None:
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        if not self.done:
            self.done = True
            self.worker.caller_done()

    def close(self) -> None:
        if self.retry_timer is not None:
            self.retry_timer.cancel()
        self._drop()

"""Continuous checksummed byte streams in both directions through a relay, for the migration tests.

Each direction carries the same pseudo-random sequence (4 MiB, repeated; a prime chunk size keeps chunk boundaries
moving): every received byte is compared with what should come at that offset, so one lost, duplicated or corrupted
byte anywhere fails the check at once. Resets are recorded, not raised, so a test can assert there were none.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from pyztunnel.aio import spawn

PATTERN = random.Random(1337).randbytes(4 << 20)
CHUNK = 4093


def expected(offset: int, n: int) -> bytes:
    start = offset % len(PATTERN)
    out = PATTERN[start : start + n]
    while len(out) < n:
        out += PATTERN[: n - len(out)]
    return out


class Direction:
    """One side's view of one connection: what it sent and what it received (and checked)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0
        self.received = 0
        self.corrupt: str | None = None
        self.error: BaseException | None = None
        self.eof = False
        self.progress = asyncio.Event()

    def check(self, data: bytes) -> None:
        if self.corrupt is None and data != expected(self.received, len(data)):
            self.corrupt = f"{self.name}: wrong bytes at offset {self.received}"
        self.received += len(data)
        self.progress.set()


class Endpoint:
    """Writes the pattern while `running`, and reads and checks everything that arrives until EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self.reader, self.writer = reader, writer
        self.dir = Direction(name)
        self.running = True
        self.tasks = [spawn(self._write(), "stream-write"), spawn(self._read(), "stream-read")]

    async def _write(self) -> None:
        try:
            while self.running:
                self.writer.write(expected(self.dir.sent, CHUNK))
                self.dir.sent += CHUNK
                await self.writer.drain()
                await asyncio.sleep(0.002)  # pacing: a steady stream, not a saturating one [noqa: sleep-ok]
            self.writer.write_eof()
        except (ConnectionError, OSError) as exc:
            self.dir.error = self.dir.error or exc

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.dir.check(data)
            self.dir.eof = True
            self.dir.progress.set()
        except (ConnectionError, OSError) as exc:
            self.dir.error = self.dir.error or exc
            self.dir.progress.set()

    async def wait_received(self, at_least: int, within: float = 20) -> None:
        async with asyncio.timeout(within):
            while self.dir.received < at_least and self.dir.error is None and not self.dir.eof:
                self.dir.progress.clear()
                await self.dir.progress.wait()

    async def finish(self, within: float = 20) -> None:
        """Stop writing (EOF), then wait for the peer's EOF after everything it sent."""
        self.running = False
        async with asyncio.timeout(within):
            await asyncio.gather(*self.tasks)
        self.writer.close()

    def summary(self) -> dict[str, Any]:
        return {"sent": self.dir.sent, "received": self.dir.received, "error": self.dir.error, "bad": self.dir.corrupt}


class StreamServer:
    """The destination: every accepted connection becomes an `Endpoint`; it stops writing when the client's EOF
    arrives (then its own EOF follows what it sent)."""

    def __init__(self) -> None:
        self.ends: list[Endpoint] = []
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._accept, host, port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        end = Endpoint(reader, writer, f"server#{len(self.ends)}")
        self.ends.append(end)
        await end.tasks[1]  # reading until the client's EOF
        end.running = False
        await end.tasks[0]
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for end in self.ends:
            for task in end.tasks:
                task.cancel()
            await asyncio.gather(*end.tasks, return_exceptions=True)


async def open_clients(host: str, port: int, count: int) -> list[Endpoint]:
    clients = []
    for n in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        clients.append(Endpoint(reader, writer, f"client#{n}"))
    return clients

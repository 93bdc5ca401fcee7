"""Two proxies on loopback exchanging real HBONE (TLS 1.3 + HTTP/2 CONNECT) in direct mode."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.proxy.harness import Mesh, echo_server, start_mesh, stop_mesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    m = await start_mesh(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(contextlib.asynccontextmanager(echo_server)(m.b_ip, m.app_port))
        try:
            yield m
        finally:
            await stop_mesh(m)


async def test_echo_through_two_proxies(mesh: Mesh) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    reader, writer = await mesh.open_client()
    writer.write(b"hello mesh")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(10), 5) == b"hello mesh"
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()


async def test_100_mib_arrives_intact(tmp_path: Path) -> None:
    """100 MiB client → app through both proxies; the app answers with the sha256 it saw, after the half-close."""
    m = await start_mesh(tmp_path)
    seen: list[str] = []

    async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        while data := await reader.read(1 << 20):
            h.update(data)
        seen.append(h.hexdigest())
        writer.write(h.hexdigest().encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(digest, m.b_ip, m.app_port)
    try:
        reader, writer = await m.open_client()
        block = hashlib.sha512(b"seed").digest() * 16384  # 1 MiB, not all zeroes
        expected = hashlib.sha256()
        for i in range(100):
            chunk = block[i:] + block[:i]
            expected.update(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 60)
        assert answer.decode() == expected.hexdigest()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
        await stop_mesh(m)

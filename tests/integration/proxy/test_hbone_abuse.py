"""Issue 11's attacks on :15008 by a holder of a valid mesh certificate, on loopback with real TLS: each is cut off
the way the HTTP/2 servers cut it off after the CVEs, costs the proxy no app socket and no unbounded memory, and
every other connection keeps being served (a round trip during or after each)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from pyztunnel.aio import TaskGroup
from pyztunnel.identity import tls
from pyztunnel.lifecycle.testing import poll
from pyztunnel.protocols import hbone
from tests.h2frames import FrameFactory, FrameReader
from tests.integration.proxy.harness import CLIENT_ID, Mesh, RecordingApp, roundtrip, start_mesh, stop_mesh

# Every test on both TLS transports (proxy/tlssock.py and uvloop's).
pytestmark = pytest.mark.usefixtures("tls_transport")


@contextlib.asynccontextmanager
async def mesh_with_app(tmp: Path, **settings: str) -> AsyncIterator[tuple[Mesh, RecordingApp]]:
    mesh = await start_mesh(tmp, **settings)
    app = RecordingApp()
    server = await asyncio.start_server(app.echo, mesh.b_ip, mesh.app_port)
    try:
        yield mesh, app
    finally:
        server.close()
        await server.wait_closed()
        await stop_mesh(mesh)


class Wire:
    """An HBONE client that writes frames by hand (what h2 as a client would refuse to send). It reads all the time,
    as an HTTP/2 client does: frames sent just before a reset are not lost behind the reset (a StreamReader raises a
    connection error before it returns data still buffered), and header blocks are decoded in the order they came
    (HPACK is stateful)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameFactory()
        self._frames = FrameReader()
        self.decoder = hpack.Decoder()
        self.seen: list[Frame] = []
        self.statuses: dict[int, int] = {}
        self.ended: BaseException | None = None
        self._arrived = asyncio.Event()
        self._tasks = TaskGroup("wire")
        self._tasks.spawn(self._read(), "wire-read")

    @classmethod
    async def open(cls, mesh: Mesh, tmp: Path, preface: bool = True) -> Wire:
        ctx = tls.client_context(await mesh.certs.get(CLIENT_ID), tmp)
        reader, writer = await asyncio.open_connection(mesh.b_ip, hbone.HBONE_PORT, ssl=ctx, server_hostname="")
        wire = cls(reader, writer)
        if preface:
            wire.send(wire.frames.preface())
        return wire

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for frame in self._frames.feed(data):
                    if isinstance(frame, HeadersFrame):
                        headers = dict(self.decoder.decode(frame.data, raw=True))
                        self.statuses[frame.stream_id] = int(headers.get(b":status", b"0"))
                    self.seen.append(frame)
                self._arrived.set()
            self.ended = ConnectionError("closed by the proxy")
        except (ConnectionError, ssl.SSLError) as exc:
            self.ended = exc
        self._arrived.set()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def connect(self, stream_id: int, port: int, mesh: Mesh) -> bytes:
        headers = hbone.connect_headers(
            f"{mesh.b_ip}:{port}",
            forwarded_for='for="127.0.0.1:1"',
            baggage_value="",
            traceparent_value=hbone.traceparent(b"\0" * 16, b"\0" * 8),
        )
        return self.frames.headers(stream_id, headers)

    async def until(self, match: type, within: float = 10, **fields: object) -> Frame:
        """The next frame of that type (with those fields); ConnectionError if the proxy closed without one."""

        async def wait() -> Frame:
            while True:
                for frame in self.seen:
                    if isinstance(frame, match) and all(getattr(frame, k) == v for k, v in fields.items()):
                        self.seen.remove(frame)
                        return frame
                if self.ended is not None:
                    raise ConnectionError(f"closed by the proxy: {self.ended}")
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(wait(), within)

    def status(self, frame: Frame) -> int:
        return self.statuses[frame.stream_id]

    async def gone(self, within: float = 10) -> None:
        """Until the proxy closed the connection."""

        async def wait() -> None:
            while self.ended is None:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(wait(), within)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
        await self._tasks.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------------------------- #11.1 rapid reset


async def test_rapid_reset_opens_no_app_socket_and_gets_enhance_your_calm(tmp_path: Path) -> None:
    """CONNECT then RST_STREAM, in a loop: no stream is set up (no app socket, no fd), the connection gets
    GOAWAY(ENHANCE_YOUR_CALM) once it has used up its reset allowance (1000, nghttp2's burst), and a connection of
    someone else is served meanwhile."""
    async with mesh_with_app(tmp_path) as (mesh, app):
        await roundtrip(mesh)
        accepted, fds = app.accepted, open_fds()
        wire = await Wire.open(mesh, tmp_path)
        try:
            stream_id = 1
            with contextlib.suppress(ConnectionError):
                for _ in range(30):  # 30 × 50 resets, more than the allowance
                    batch = b""
                    for _ in range(50):
                        batch += wire.connect(stream_id, mesh.app_port, mesh) + wire.frames.rst_stream(stream_id)
                        stream_id += 2
                    wire.send(batch)
                    await wire.writer.drain()
                    assert open_fds() <= fds + 4  # the attacker's connection (both ends), nothing per stream
            await roundtrip(mesh)  # someone else is served meanwhile
            assert app.accepted == accepted + 1  # the round trip's; not one for a reset stream
            goaway = await wire.until(GoAwayFrame)
            assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
            with pytest.raises(ConnectionError):
                await wire.until(HeadersFrame, within=5)  # and it is closed
        finally:
            await wire.close()
        await roundtrip(mesh)  # and after
        assert app.accepted == accepted + 2
        await asyncio.wait_for(
            mesh.node_b.telemetry.wait_for(lambda t: any(e.startswith("too many stream resets") for e in t.errors)), 5
        )
        assert open_fds() <= fds


def _syn_sent_to(port: int) -> int:
    """Sockets of this network namespace in SYN_SENT towards `port` (a connect the peer has not answered)."""
    count = 0
    with open("/proc/self/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            if fields[3] == "02" and int(fields[2].split(":")[1], 16) == port:
                count += 1
    return count


async def test_a_reset_cancels_the_app_connect_of_a_stream_being_set_up(tmp_path: Path) -> None:
    """A stream reset while its app connect is under way (an app whose accept queue is full: the SYN is dropped and
    the connect hangs): the connect is cancelled at once, its socket closed, and the record logged."""
    async with mesh_with_app(tmp_path, PYZTUNNEL_CONNECT_TIMEOUT="60s") as (mesh, _app):
        port = mesh.app_port + 1 if mesh.app_port < 65000 else mesh.app_port - 1
        full = socket.socket()
        full.bind((mesh.b_ip, port))
        full.listen(0)
        filler = socket.create_connection((mesh.b_ip, port))  # takes the only place in the accept queue
        wire = await Wire.open(mesh, tmp_path)
        try:
            wire.send(wire.connect(1, port, mesh))
            await wire.writer.drain()

            await poll(lambda: _syn_sent_to(port) == 1, 10, "the app connect under way")
            wire.send(wire.frames.rst_stream(1))
            await wire.writer.drain()

            def cancelled() -> bool:
                return _syn_sent_to(port) == 0 and not any(len(server.tasks) for server in mesh.pod_b.servers)

            await poll(cancelled, 5, "the app connect cancelled")
            telemetry = mesh.node_b.telemetry
            await asyncio.wait_for(
                telemetry.wait_for(lambda t: t.errors["stream reset before it was answered"] == 1), 5
            )
        finally:
            await wire.close()
            filler.close()
            full.close()
        await roundtrip(mesh)


# ------------------------------------------------------------------------------------- #11.2 endless header block


async def test_a_header_block_that_never_ends_is_cut_at_the_header_list_limit(tmp_path: Path) -> None:
    """HEADERS and CONTINUATION frames without END_HEADERS: GOAWAY(ENHANCE_YOUR_CALM) as soon as the block passes
    the 64 KiB header-list limit (h2 would keep 64 frames of up to 1 MiB each), and a frame announcing 1 MiB of it
    is refused on its 9-byte header, before its body is even sent."""
    async with mesh_with_app(tmp_path) as (mesh, _app):
        wire = await Wire.open(mesh, tmp_path)
        try:
            chunk = b"\0" * 16384
            wire.send(wire.frames.raw_headers(1, chunk, end_headers=False))
            for _ in range(4):  # 80 KiB in all
                wire.send(wire.frames.continuation(1, chunk))
            goaway = await wire.until(GoAwayFrame)
            assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        finally:
            await wire.close()
        wire = await Wire.open(mesh, tmp_path)
        try:
            wire.send(wire.frames.raw_headers(1, b"\0" * 100, end_headers=False))
            wire.send(wire.frames.frame_header(hbone.FRAME_SIZE, 0x9, 0, 1))  # CONTINUATION of 1 MiB: no body
            goaway = await wire.until(GoAwayFrame)
            assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        finally:
            await wire.close()
        await roundtrip(mesh)


# ----------------------------------------------------------------------------------------- #11.3 too many streams


async def test_streams_beyond_200_are_refused_and_the_others_go_on(tmp_path: Path) -> None:
    """201 CONNECTs on one connection: the 201st gets RST_STREAM(REFUSED_STREAM), as ztunnel's h2 answers; the 200
    good streams are not taken down with it (h2 alone would GOAWAY(PROTOCOL_ERROR) the whole connection)."""
    async with mesh_with_app(tmp_path) as (mesh, app):
        limit = hbone.SERVER_MAX_CONCURRENT_STREAMS
        wire = await Wire.open(mesh, tmp_path)
        try:
            ids = [1 + 2 * i for i in range(limit + 1)]
            wire.send(b"".join(wire.connect(i, mesh.app_port, mesh) for i in ids))
            refused = await wire.until(RstStreamFrame, stream_id=ids[-1])
            assert isinstance(refused, RstStreamFrame) and refused.error_code == ErrorCodes.REFUSED_STREAM
            for stream_id in ids[:limit]:
                assert wire.status(await wire.until(HeadersFrame, stream_id=stream_id)) == 200
            assert app.accepted == limit
            wire.send(wire.frames.data(1, b"the first stream still carries bytes"))
            echoed = await wire.until(DataFrame, stream_id=1)
            assert isinstance(echoed, DataFrame) and echoed.data == b"the first stream still carries bytes"
        finally:
            await wire.close()
        await roundtrip(mesh)


# ------------------------------------------------------------------------------------------ #11.4 preface deadline


async def test_a_connection_that_never_sends_the_preface_is_closed_at_its_own_deadline(tmp_path: Path) -> None:
    """TLS done, then silence: closed at the preface deadline (here 0.5 s), not when the keepalive PING would
    notice (30 s)."""
    async with mesh_with_app(tmp_path, PYZTUNNEL_HBONE_PREFACE_TIMEOUT="0.5s") as (mesh, _app):
        wire = await Wire.open(mesh, tmp_path, preface=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await wire.gone(within=5)  # its SETTINGS arrive, then the close
        finally:
            await wire.close()
        assert loop.time() - started < 5
        telemetry = mesh.node_b.telemetry
        await asyncio.wait_for(
            telemetry.wait_for(lambda t: t.errors["http/2 preface not received within 0.5s"] == 1), 5
        )
        await roundtrip(mesh)

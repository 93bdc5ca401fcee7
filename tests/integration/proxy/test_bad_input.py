"""Issue 3's bad inputs against a live inbound HBONE listener: each is refused the way ztunnel refuses it, counted or
logged with its response flag, and the proxies keep serving everyone else (a normal round trip after each)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h2.events
import pytest

from pyztunnel.identity import tls
from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.identity.spiffe import Identity
from pyztunnel.protocols import h2wire, hbone
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex
from tests.integration.proxy.harness import (
    CLIENT_ID,
    SERVER_ID,
    Mesh,
    RecordingApp,
    config_text,
    roundtrip,
    start_mesh,
    stop_mesh,
)

HBONE = hbone.HBONE_PORT


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    m = await start_mesh(tmp_path, PYZTUNNEL_TLS_HANDSHAKE_TIMEOUT="0.5")
    server = await asyncio.start_server(RecordingApp().echo, m.b_ip, m.app_port)
    try:
        yield m
    finally:
        server.close()
        await server.wait_closed()
        await stop_mesh(m)


def client_ctx(mesh: Mesh, cert: WorkloadCert, tmp: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = tls.client_context(cert, tmp)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


class RawHbone:
    """A minimal HBONE client written with ssl + h2 directly (independent of the proxy's own client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2wire.new_connection(client_side=True)
        self.events: list[h2.events.Event] = []
        self.flush()

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    async def until(self, kind: type, stream_id: int | None = None, within: float = 5) -> h2.events.Event:
        async def wait() -> h2.events.Event:
            while True:
                for event in self.events:
                    if isinstance(event, kind) and (
                        stream_id is None or getattr(event, "stream_id", None) == stream_id
                    ):
                        self.events.remove(event)
                        return event
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                self.events += self.h2.receive_data(data)
                self.flush()

        return await asyncio.wait_for(wait(), within)

    def connect(self, headers: hbone.Headers) -> int:
        stream_id = int(self.h2.get_next_available_stream_id())
        self.h2.send_headers(stream_id, headers)
        self.flush()
        return stream_id

    async def status(self, headers: hbone.Headers) -> int:
        stream_id = self.connect(headers)
        event = await self.until(h2.events.ResponseReceived, stream_id)
        assert isinstance(event, h2.events.ResponseReceived)
        status = hbone.status_of(event.headers or [])
        assert status is not None
        return int(status)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def raw(mesh: Mesh, tmp: Path, cert: WorkloadCert | None = None) -> RawHbone:
    cert = cert or await mesh.certs.get(CLIENT_ID)
    reader, writer = await asyncio.open_connection(
        mesh.b_ip, HBONE, ssl=client_ctx(mesh, cert, tmp), server_hostname=""
    )
    return RawHbone(reader, writer)


def connect_headers(authority: str) -> hbone.Headers:
    return hbone.connect_headers(
        authority,
        forwarded_for='for="127.0.0.1:1"',
        baggage_value="",
        traceparent_value=hbone.traceparent(b"\0" * 16, b"\0" * 8),
    )


async def expect_tls_refused(mesh: Mesh, ctx: ssl.SSLContext) -> None:
    """The handshake fails, or the server drops the connection right after it."""
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
        reader, writer = await asyncio.open_connection(mesh.b_ip, HBONE, ssl=ctx, server_hostname="")
        try:
            writer.write(h2wire.new_connection(True).data_to_send())
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                raise ConnectionError("closed by the server")
        finally:
            writer.close()


async def expect_closed(reader: asyncio.StreamReader) -> None:
    """The proxy closes the client's connection (reset, as ztunnel drops it) without a byte."""
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        pass


async def wait_counted(mesh: Mesh, flag: str, n: int = 1) -> None:
    await asyncio.wait_for(mesh.node_b.telemetry.wait_for(lambda t: t.failed_by_flag[flag] >= n), 5)


# ------------------------------------------------------------------------------------------- TLS-level refusals


async def test_no_client_certificate(mesh: Mesh, tmp_path: Path) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=mesh.ca.root_pem)
    ctx.set_alpn_protocols(["h2"])
    await expect_tls_refused(mesh, ctx)
    await wait_counted(mesh, "TLS_FAILURE")
    await roundtrip(mesh)


async def test_other_trust_domain(mesh: Mesh, tmp_path: Path) -> None:
    foreign = mesh.ca.issue(Identity("evil.local", "a", "client"), timedelta(hours=1))
    await expect_tls_refused(mesh, client_ctx(mesh, foreign, tmp_path))
    await wait_counted(mesh, "TLS_FAILURE")
    await roundtrip(mesh)


async def test_expired_client_certificate(mesh: Mesh, tmp_path: Path) -> None:
    old = mesh.ca.issue(CLIENT_ID, timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=3))
    await expect_tls_refused(mesh, client_ctx(mesh, old, tmp_path))
    await wait_counted(mesh, "TLS_FAILURE")
    await roundtrip(mesh)


async def test_alpn_not_h2(mesh: Mesh, tmp_path: Path) -> None:
    cert = await mesh.certs.get(CLIENT_ID)
    await expect_tls_refused(mesh, client_ctx(mesh, cert, tmp_path, alpn=["http/1.1"]))
    await wait_counted(mesh, "TLS_FAILURE")
    await roundtrip(mesh)


async def test_tls12_refused(mesh: Mesh, tmp_path: Path) -> None:
    cert = await mesh.certs.get(CLIENT_ID)
    ctx = client_ctx(mesh, cert, tmp_path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    await expect_tls_refused(mesh, ctx)
    await wait_counted(mesh, "TLS_FAILURE")
    await roundtrip(mesh)


async def test_garbage_instead_of_client_hello(mesh: Mesh) -> None:
    reader, writer = await asyncio.open_connection(mesh.b_ip, HBONE)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
    await writer.drain()
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(reader.read(), 5)  # an alert at most, then the close
    writer.close()
    await wait_counted(mesh, "TLS_FAILURE")
    await roundtrip(mesh)


async def test_stalled_handshake_is_bounded(mesh: Mesh) -> None:
    """A client that connects and never speaks is dropped after the handshake timeout (0.5 s here)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(mesh.b_ip, HBONE)
    started = loop.time()
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert loop.time() - started < 3
    writer.close()
    await wait_counted(mesh, "TLS_FAILURE")
    await roundtrip(mesh)


async def test_wrong_server_san_refused_by_client(tmp_path: Path) -> None:
    """Outbound: the server presents a certificate whose SAN is not the destination's identity → no connection."""
    m = await start_mesh(tmp_path)
    try:
        imposter = m.ca.issue(Identity("cluster.local", "b", "imposter"), timedelta(hours=1))
        m.certs.certs[SERVER_ID] = imposter  # node B now serves the wrong identity for B's workload
        reader, writer = await m.open_client()
        writer.write(b"x")
        await expect_closed(reader)
        writer.close()
        assert m.node_a.telemetry.errors, "the failed outbound connection is logged"
        assert m.node_a.telemetry.failed_by_flag["TLS_FAILURE"] == 1
    finally:
        await stop_mesh(m)


# ------------------------------------------------------------------------------------------- CONNECT-level refusals


@pytest.mark.parametrize(
    ("authority", "status"),
    [("not-an-authority", 400), ("{b}:15008", 400), ("{b}:15001", 400), ("{b}:15006", 400), ("10.9.9.9:80", 400)],
    ids=["malformed", "illegal-15008", "illegal-15001", "illegal-15006", "ip-mismatch"],
)
async def test_bad_connect_gets_400(mesh: Mesh, tmp_path: Path, authority: str, status: int) -> None:
    client = await raw(mesh, tmp_path)
    try:
        assert await client.status(connect_headers(authority.format(b=mesh.b_ip))) == status
    finally:
        await client.close()
    assert mesh.node_b.telemetry.errors
    await roundtrip(mesh)


async def test_not_connect_gets_400(mesh: Mesh, tmp_path: Path) -> None:
    client = await raw(mesh, tmp_path)
    try:
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/"),
            (b":authority", f"{mesh.b_ip}:80".encode()),
        ]
        assert await client.status(headers) == 400
    finally:
        await client.close()
    await roundtrip(mesh)


async def test_app_refusing_gets_503(mesh: Mesh, tmp_path: Path) -> None:
    client = await raw(mesh, tmp_path)
    closed_port = mesh.app_port + 1 if mesh.app_port < 65535 else mesh.app_port - 1
    try:
        assert await client.status(connect_headers(f"{mesh.b_ip}:{closed_port}")) == 503
    finally:
        await client.close()
    assert mesh.node_b.telemetry.failed_by_flag["CONNECT"] == 1
    await roundtrip(mesh)


async def test_unknown_workload_gets_503(mesh: Mesh, tmp_path: Path) -> None:
    client = await raw(mesh, tmp_path)  # handshake while B is known
    try:
        # B leaves the config while the HBONE connection is up (the pod went away, the config caught up)
        without_b = config_text(mesh.a_ip, "127.255.255.254")
        mesh.node_b.indexes.set(WorkloadIndex(local.parse(without_b, "t.yaml")))
        assert await client.status(connect_headers(f"{mesh.b_ip}:{mesh.app_port}")) == 503
    finally:
        await client.close()


async def test_policy_denial_gets_401_and_no_bytes_reach_the_app(tmp_path: Path) -> None:
    deny = """\
- name: deny-client
  namespace: b
  scope: Namespace
  action: Deny
  rules: [[[{principals: [!Exact cluster.local/ns/a/sa/client]}]]]
"""
    m = await start_mesh(tmp_path, policies=deny)
    seen: list[bytes] = []

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(app, m.b_ip, m.app_port)
    try:
        client = await raw(m, tmp_path)
        try:
            stream_id = client.connect(connect_headers(f"{m.b_ip}:{m.app_port}"))
            client.h2.send_data(stream_id, b"secret")
            client.flush()
            event = await client.until(h2.events.ResponseReceived, stream_id)
            assert isinstance(event, h2.events.ResponseReceived)
            assert hbone.status_of(event.headers or []) == 401
        finally:
            await client.close()
        # and through the outbound proxy: the client's connection is closed, nothing reaches the app
        reader, writer = await m.open_client()
        writer.write(b"secret")
        await expect_closed(reader)
        writer.close()
        assert seen == []
        assert m.node_b.telemetry.failed_by_flag["DENY"] == 2
        assert m.node_a.telemetry.failed_by_flag["DENY"] == 1
    finally:
        server.close()
        await server.wait_closed()
        await stop_mesh(m)


async def test_oversized_headers_close_only_that_connection(mesh: Mesh, tmp_path: Path) -> None:
    client = await raw(mesh, tmp_path)
    try:
        headers = [*connect_headers(f"{mesh.b_ip}:{mesh.app_port}"), (b"x-big", b"a" * (70 * 1024))]
        client.connect(headers)
        with contextlib.suppress(ConnectionError):
            await client.until(h2.events.ConnectionTerminated)
    finally:
        await client.close()
    await roundtrip(mesh)


async def test_stream_reset_mid_transfer(mesh: Mesh, tmp_path: Path) -> None:
    client = await raw(mesh, tmp_path)
    try:
        stream_id = client.connect(connect_headers(f"{mesh.b_ip}:{mesh.app_port}"))
        event = await client.until(h2.events.ResponseReceived, stream_id)
        assert hbone.status_of(event.headers or []) == 200
        client.h2.send_data(stream_id, b"partial")
        client.flush()
        await client.until(h2.events.DataReceived, stream_id)
        client.h2.reset_stream(stream_id)
        client.flush()
        telemetry = mesh.node_b.telemetry
        await asyncio.wait_for(telemetry.wait_for(lambda t: t.closed_total >= 1), 5)
        assert any("reset" in key for key in telemetry.errors), telemetry.errors
        # the same HBONE connection still carries new streams
        assert await client.status(connect_headers(f"{mesh.b_ip}:{mesh.app_port}")) == 200
    finally:
        await client.close()
    await roundtrip(mesh)

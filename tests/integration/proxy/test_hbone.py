"""Two proxies on loopback exchanging real HBONE (TLS 1.3 + HTTP/2 CONNECT) in direct mode."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import h2.events
import pytest

from tests.integration.proxy.harness import Mesh, echo_server, roundtrip, start_mesh, stop_mesh

# Every test on both TLS transports (proxy/tlssock.py and uvloop's).
pytestmark = pytest.mark.usefixtures("tls_transport")


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
    assert await asyncio.wait_for(reader.readexactly(10), 10) == b"hello mesh"
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


async def test_service_vip_and_passthrough(tmp_path: Path) -> None:
    """A service VIP resolves to a healthy endpoint's target port over HBONE; a destination outside the mesh is
    passed through as plain TCP (no HBONE: proxy B sees nothing)."""
    from pyztunnel.proxy.netsock import DirectNet
    from pyztunnel.proxy.pod import PodProxy, Ports
    from pyztunnel.proxy.podset import DATA_PATH
    from tests.integration.proxy.harness import config_text, free_port

    m = await start_mesh(tmp_path)
    vip, outside = "127.96.0.10", m.b_ip.rsplit(".", 1)[0] + ".30"
    text = config_text(m.a_ip, m.b_ip).replace(
        "   workloadIps: ['" + m.b_ip + "'], protocol: HBONE}",
        "   workloadIps: ['"
        + m.b_ip
        + "'], protocol: HBONE, services: {'b/echo.b.svc.cluster.local': {80: "
        + str(m.app_port)
        + "}}}",
    )
    text += f"services:\n- {{name: echo, namespace: b, hostname: echo.b.svc.cluster.local, vips: ['/{vip}'], ports: {{80: {m.app_port}}}}}\n"
    m.set_config(text)
    vip_port, out_port = free_port(m.a_ip), free_port(m.a_ip)
    outside_port = free_port(outside)
    extra = [
        PodProxy(
            m.node_a,
            "vip",
            DirectNet(m.a_ip, {vip_port: (vip, 80)}),
            lambda i: i.workload_by_ip(m.a_ip),
            DATA_PATH,
            Ports(vip_port, None, None),
        ),
        PodProxy(
            m.node_a,
            "out",
            DirectNet(m.a_ip, {out_port: (outside, outside_port)}),
            lambda i: i.workload_by_ip(m.a_ip),
            DATA_PATH,
            Ports(out_port, None, None),
        ),
    ]
    servers = []
    try:
        for pod in extra:
            await pod.start()
        async with contextlib.AsyncExitStack() as stack:
            for ip, port in ((m.b_ip, m.app_port), (outside, outside_port)):
                servers.append(await stack.enter_async_context(contextlib.asynccontextmanager(echo_server)(ip, port)))
            for port, payload in ((vip_port, b"via the VIP"), (out_port, b"passthrough")):
                reader, writer = await asyncio.open_connection(m.a_ip, port)
                writer.write(payload)
                assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
                writer.close()
                await writer.wait_closed()
            await asyncio.wait_for(m.node_a.telemetry.wait_for(lambda t: t.closed_total >= 2), 5)
        assert m.node_b.telemetry.opened_total == 1  # only the VIP connection came over HBONE
    finally:
        for pod in extra:
            await pod.drain_immediate()
        await stop_mesh(m)


async def test_policy_change_closes_established_connections(mesh: Mesh) -> None:
    """A DENY policy that arrives while a connection is open closes it (ztunnel's PolicyWatcher); new ones get 401."""
    from tests.integration.proxy.harness import config_text

    reader, writer = await mesh.open_client()
    writer.write(b"before")
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"
    deny = """\
- name: deny-all-from-a
  namespace: b
  scope: Namespace
  action: Deny
  rules: [[[{namespaces: [!Exact a]}]]]
"""
    mesh.set_config(config_text(mesh.a_ip, mesh.b_ip, deny))
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    telemetry = mesh.node_b.telemetry
    await asyncio.wait_for(telemetry.wait_for(lambda t: t.errors["connection closed due to policy change"] == 1), 5)
    assert telemetry.failed_by_flag["DENY"] == 1


async def test_pool_stream_budget_one_connect_at_a_time_and_idle_release(tmp_path: Path) -> None:
    """§3.3 pooling: concurrent requests for one key open one connection at a time; a connection serves at most
    POOL_MAX_STREAMS_PER_CONNECTION streams; an unused connection is released after POOL_UNUSED_RELEASE_TIMEOUT."""
    m = await start_mesh(tmp_path, POOL_MAX_STREAMS_PER_CONNECTION="3", POOL_UNUSED_RELEASE_TIMEOUT="0.3s")
    try:
        async with contextlib.asynccontextmanager(echo_server)(m.b_ip, m.app_port):
            clients = await asyncio.gather(*(m.open_client() for _ in range(7)))
            for i, (_, writer) in enumerate(clients):
                writer.write(b"%02d" % i)
            for i, (reader, _) in enumerate(clients):
                assert await asyncio.wait_for(reader.readexactly(2), 5) == b"%02d" % i
            assert m.pod_a.pool.opened == 3  # ceil(7 / 3), not one per waiting request
            assert len(m.pod_b.servers) == 3
            pooled = list(m.pod_b.servers)
            for _, writer in clients:
                writer.close()
            # every HBONE connection closes once unused: spent ones at once, the last after the idle timeout
            await asyncio.wait_for(asyncio.gather(*(c.lost for c in pooled)), 5)
            assert m.pod_a.pool.connections == []
    finally:
        await stop_mesh(m)


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
async def test_a_connect_refused_by_a_peer_going_away_is_opened_again(mesh: Mesh, busy: bool) -> None:
    """The peer's GOAWAY crosses our CONNECT on the wire: it never processed the stream (RFC 9113 §8.7), so the client
    proxy opens it again on a new connection instead of failing the app's connection. Idle: the peer has no stream
    left on the connection, and still keeps it open until its PING comes back, so the CONNECT meets a refusal, not a
    reset connection."""
    if busy:
        reader, writer = await mesh.open_client()  # a stream that stays open
        writer.write(b"held")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"held"
    else:
        await roundtrip(mesh)
    (pooled,) = mesh.pod_a.pool.connections
    (server,) = mesh.pod_b.servers
    assert pooled.transport is not None
    pooled.transport.pause_reading()  # A does not see B's GOAWAY before it sends the CONNECT
    server.goaway()
    refused = asyncio.Event()
    receive = server.h2.receive_data

    def spy(data: bytes) -> list[h2.events.Event]:
        events: list[h2.events.Event] = receive(data)  # B answers a CONNECT above its GOAWAY with REFUSED_STREAM
        if any(isinstance(event, h2.events.RequestReceived) for event in events):
            refused.set()
        return events

    server.h2.receive_data = spy
    client = asyncio.ensure_future(roundtrip(mesh, b"sent across a GOAWAY"))
    await asyncio.wait_for(refused.wait(), 10)
    pooled.transport.resume_reading()
    await asyncio.wait_for(client, 10)  # the echo went through, on a second connection
    assert mesh.pod_a.pool.opened == 2
    if busy:
        writer.write(b"still")  # and the held stream goes on, on the first
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"still"
        writer.close()
    else:
        await asyncio.wait_for(server.lost, 5)  # the idle one closed after the PING round trip


async def test_a_connection_accepted_as_the_drain_begins_still_gets_its_stream(mesh: Mesh) -> None:
    """The e2e 502 (test_rolling_upgrade_with_migrate_req_only_loses_nothing): the old proxy accepted the gateway's
    upstream connection just before its drain began, and its outbound then met a closed pool ("connect: pool
    closed"): the app's connection was reset. Draining, the pool still serves; its connections go once unused."""
    reader, writer = await mesh.open_client()  # a stream that stays open across the drain
    writer.write(b"held")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"held"
    (busy,) = mesh.pod_a.pool.connections
    mesh.pod_a.goaway()  # the drain of A (its listener is still open here: a connection accepted meanwhile)
    await roundtrip(mesh, b"accepted as the drain began")
    writer.close()
    # No pooled connection outlives its streams while draining.
    await asyncio.wait_for(busy.lost, 10)
    await asyncio.wait_for(asyncio.gather(*(c.lost for c in mesh.pod_a.pool.connections)), 10)

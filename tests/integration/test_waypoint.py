"""The waypoint app on loopback: HBONE in (a gateway-like client with its own identity), its config over XDS from
our server, its L7 rule and response header, and HBONE out to a destination served by a real pyztunnel proxy."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from hyperframe.frame import GoAwayFrame

from pyztunnel.aio import spawn
from pyztunnel.apps.hbone_streams import H2Endpoint, Tunnel, TunnelClosed
from pyztunnel.apps.waypoint import WAYPOINT_HEADER, Waypoint, WaypointSettings
from pyztunnel.identity import tls
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.identity.spiffe import Identity
from pyztunnel.protocols import hbone
from pyztunnel.workloads import local
from pyztunnel.xds.config import XdsSettings
from pyztunnel.xds.server import XdsServer
from tests.integration.proxy.harness import Mesh, free_port, start_mesh, stop_mesh

WAYPOINT_ID = Identity("cluster.local", "b", "waypoint")
GATEWAY_ID = Identity("cluster.local", "a", "client")
VIP = "10.96.0.50"


async def http_backend(ip: str, port: int) -> asyncio.Server:
    """Answers every request with its path, keep-alive, Content-Length."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                body = b"you asked for " + path
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-app: yes\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, ip, port)


@contextlib.asynccontextmanager
async def waypoint(tmp: Path, mesh: Mesh, deny: str = "/deny") -> AsyncIterator[tuple[Waypoint, str, int]]:
    ca = mesh.ca
    (tmp / "root.pem").write_text(ca.root_pem)
    cert, key = ca.issue_server(["localhost"], ["127.0.0.1"], timedelta(hours=1))
    server = XdsServer()
    config = f"""
workloads:
- {{uid: b-1, name: server-1, namespace: b, serviceAccount: server, trustDomain: cluster.local,
   workloadIps: ['{mesh.b_ip}'], protocol: HBONE, services: {{"b/web.b.svc.cluster.local": {{8000: {mesh.app_port}}}}}}}
services:
- {{name: web, namespace: b, hostname: web.b.svc.cluster.local, vips: ["/{VIP}"], ports: {{8000: {mesh.app_port}}}}}
"""
    server.set_config(local.parse(config, "t.yaml"))
    port = await server.start("127.0.0.1:0", key, cert + ca.root_pem)
    ip = mesh.a_ip.rsplit(".", 1)[0] + ".30"
    listen_port = free_port(ip)

    async def fetch(identity: Identity) -> object:
        return ca.issue(identity, timedelta(hours=1))

    app = Waypoint(
        WaypointSettings(
            listen=f"{ip}:{listen_port}",
            ready_addr=f"{ip}:{free_port(ip)}",
            deny_path_prefix=deny,
            name="waypoint-0",
            namespace="b",
            service_account="waypoint",
            pod_ip=ip,
        ),
        XdsSettings(xds_address=f"https://127.0.0.1:{port}", xds_root_ca=str(tmp / "root.pem")),
        CaClientSettings(auth_token="t", key_dir=tmp / "wp-keys"),
        {},
        fetch=fetch,  # type: ignore[arg-type]
    )
    stop = asyncio.Event()
    task = spawn(app.run(stop), "test-waypoint")
    try:
        await asyncio.wait_for(app.readiness.wait_ready(), 20)
        yield app, ip, listen_port
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await server.close()


async def connect(mesh: Mesh, ip: str, port: int, authority: str, tmp: Path) -> Tunnel:
    """A gateway's proxy's side: HBONE to the waypoint with the client's identity, the waypoint's identity checked."""
    contexts = tls.ContextCache(tmp / "client-keys")
    cert = await mesh.certs.get(GATEWAY_ID)
    loop = asyncio.get_running_loop()

    def verify(transport: asyncio.Transport) -> Identity:
        return tls.check_server_peer(transport.get_extra_info("ssl_object"), [WAYPOINT_ID])

    context: ssl.SSLContext = contexts.client(cert)
    _, conn = await loop.create_connection(
        lambda: H2Endpoint(True, verify=verify), ip, port, ssl=context, server_hostname=""
    )
    headers = hbone.connect_headers(
        authority, forwarded_for='for="127.0.0.1:1"', baggage_value="", traceparent_value="00-0-0-00"
    )
    return await conn.open(headers)


async def exchange(tunnel: Tunnel, path: str) -> tuple[bytes, bytes]:
    tunnel.write(f"GET {path} HTTP/1.1\r\nhost: web\r\n\r\n".encode())
    head = await asyncio.wait_for(tunnel.reader.readuntil(b"\r\n\r\n"), 20)
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    return head, await asyncio.wait_for(tunnel.reader.readexactly(length), 20)


async def test_requests_pass_the_waypoint_marked_and_the_rule_denies(tmp_path: Path) -> None:
    mesh = await start_mesh(tmp_path)
    backend = await http_backend(mesh.b_ip, mesh.app_port)
    try:
        async with waypoint(tmp_path, mesh) as (app, ip, port):
            tunnel = await connect(mesh, ip, port, f"{VIP}:8000", tmp_path)
            for path in ("/status/418", "/anything"):  # two requests on one stream: keep-alive through the hop
                head, body = await exchange(tunnel, path)
                assert head.startswith(b"HTTP/1.1 200") and body == f"you asked for {path}".encode()
                assert f"{WAYPOINT_HEADER}: waypoint-0".encode() in head and b"x-app: yes" in head
            head, body = await exchange(tunnel, "/deny/this")
            assert head.startswith(b"HTTP/1.1 403") and f"{WAYPOINT_HEADER}: waypoint-0".encode() in head
            assert app.requests == 3 and app.denied == 1
            # the destination's proxy saw the waypoint's identity, one stream for the whole downstream stream
            records = mesh.node_b.telemetry
            await asyncio.wait_for(records.wait_for(lambda t: t.opened_total >= 1), 10)
            tunnel.reset()
            # a CONNECT to a destination the waypoint does not know: the stream is reset, the waypoint serves on
            other = await connect(mesh, ip, port, "10.96.9.9:80", tmp_path)
            other.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            with pytest.raises((TunnelClosed, asyncio.IncompleteReadError)):
                await asyncio.wait_for(other.reader.readuntil(b"\r\n\r\n"), 20)
    finally:
        backend.close()
        await backend.wait_closed()
        await stop_mesh(mesh)


async def test_draining_proxies_on_either_side_lose_no_request(tmp_path: Path) -> None:
    """A GOAWAY from the client's proxy: the next response says Connection: close and the stream ends after it. A
    GOAWAY from the destination's proxy: the next request goes on a new upstream connection."""
    mesh = await start_mesh(tmp_path)
    backend = await http_backend(mesh.b_ip, mesh.app_port)
    try:
        async with waypoint(tmp_path, mesh) as (_app, ip, port):
            tunnel = await connect(mesh, ip, port, f"{VIP}:8000", tmp_path)
            head, _ = await exchange(tunnel, "/one")
            assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
            first_upstreams = len(mesh.pod_b.servers)
            mesh.pod_b.goaway()  # the destination's proxy starts draining
            mesh.pod_b.going_away = False  # ...and a new instance serves (here: the same pod, taking streams again)
            head, body = await exchange(tunnel, "/two")
            assert head.startswith(b"HTTP/1.1 200") and body == b"you asked for /two"
            assert len(mesh.pod_b.servers) >= first_upstreams  # a new upstream connection carried it
            goaway = GoAwayFrame(0)  # the client's proxy starts draining: GOAWAY (its streams go on)
            goaway.last_stream_id = 0
            assert tunnel.conn.transport is not None
            tunnel.conn.transport.write(goaway.serialize())
            head, body = await exchange(tunnel, "/three")
            assert b"connection: close" in head.lower() and body == b"you asked for /three"
            assert await asyncio.wait_for(tunnel.reader.read(), 10) == b""  # the stream ended after the response
    finally:
        backend.close()
        await backend.wait_closed()
        await stop_mesh(mesh)

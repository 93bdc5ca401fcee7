"""`pyztunnel waypoint`: a minimal waypoint (Envoy's role in Istio ambient) for the local cluster.

- HBONE in: mutual TLS with its own identity (spiffe://TD/ns/POD_NAMESPACE/sa/SERVICE_ACCOUNT, its certificate from
  the cluster's CA like the proxies' own), HTTP/2 CONNECT on :15008, `:authority` = the original destination (a
  service VIP:port, or a pod IP:port), answered 200.
- An HTTP/1.1-aware hop on each stream: every request whose path starts with the deny prefix is answered 403 by the
  waypoint itself (one L7 rule); every other request goes to the destination, and every response gets an
  `x-pyztunnel-waypoint: <pod>` header.
- HBONE out, as a ztunnel-compatible HBONE client with its own identity: to a healthy endpoint of the destination
  service (pod IP:15008, `:authority` pod IP:target port, the endpoint's identity verified), one upstream stream per
  downstream stream. The destination's proxy admits it by the implicit policy the control plane sends (Istio's
  `istio_allow_waypoint_*`).
- Its config (services, endpoints) over XDS from the control plane, as Envoy takes it from istiod; readiness on
  15021 once it has its certificate and its config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import click

from pyztunnel import settings
from pyztunnel.aio import TaskGroup, install_uvloop
from pyztunnel.apps import http_hop
from pyztunnel.apps.hbone_streams import H2Endpoint, Headers, Tunnel, TunnelClosed
from pyztunnel.identity import tls
from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.identity.client import CaClient
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.identity.spiffe import Identity
from pyztunnel.identity.store import CertificateStore
from pyztunnel.observe.servers import Readiness, listening_socket, readiness_server
from pyztunnel.protocols import hbone, xds
from pyztunnel.settings import setting
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.workloads.model import Workload
from pyztunnel.xds import apply
from pyztunnel.xds.client import XdsClient
from pyztunnel.xds.config import XdsSettings, node_metadata

_log = logging.getLogger("pyztunnel.apps.waypoint")

WAYPOINT_HEADER = "x-pyztunnel-waypoint"
CERTIFICATE, CONFIG = "certificate", "config"


@settings.group("waypoint")
@dataclasses.dataclass(frozen=True)
class WaypointSettings:
    listen: str = setting("0.0.0.0:15008", "HBONE listen address", env="PYZTUNNEL_WAYPOINT_LISTEN")
    ready_addr: str = setting("0.0.0.0:15021", "readiness address (/healthz/ready)", env="PYZTUNNEL_WAYPOINT_READY")
    deny_path_prefix: str = setting(
        "",
        "the L7 rule: requests whose path starts with this are answered 403 (empty: none)",
        env="PYZTUNNEL_WAYPOINT_DENY",
    )
    name: str = setting("", "this waypoint's name in the response header (default: POD_NAME)", env="POD_NAME")
    namespace: str = setting("default", "this waypoint's namespace (its identity)", env="POD_NAMESPACE")
    service_account: str = setting("default", "this waypoint's service account (its identity)", env="SERVICE_ACCOUNT")
    trust_domain: str = setting("cluster.local", "the mesh's trust domain", env="TRUST_DOMAIN")
    pod_ip: str = setting("", "this waypoint's IP (its XDS node id)", env="POD_IP")


class Waypoint:
    def __init__(
        self,
        cfg: WaypointSettings,
        xds_settings: XdsSettings,
        ca: CaClientSettings,
        environ: dict[str, str],
        fetch: Callable[[Identity], Awaitable[WorkloadCert]] | None = None,  # tests: certificates without a CA
    ) -> None:
        self.cfg = cfg
        self.identity = Identity(cfg.trust_domain, cfg.namespace, cfg.service_account)
        self.readiness = Readiness(CERTIFICATE, CONFIG)
        self.index = WorkloadIndex()
        self.ca = CaClient(ca, environ=environ)
        self.store = CertificateStore(fetch or self.ca.fetch)
        self.contexts = tls.ContextCache(ca.key_dir)
        node_id = f"router~{cfg.pod_ip}~{cfg.name}.{cfg.namespace}~{cfg.namespace}.svc.cluster.local"
        metadata = node_metadata(environ, cfg.pod_ip, cfg.name, cfg.namespace, environ.get("NODE_NAME", ""))
        self.xds = XdsClient(
            xds_settings, ca, xds.node(node_id, metadata), self._apply, lambda: self.readiness.unblock(CONFIG), environ
        )
        self.requests = self.denied = 0
        self.tasks = TaskGroup("waypoint")  # XDS, the certificate wait, one task per HBONE stream

    async def _apply(self, update: xds.Update) -> list[tuple[str, str]]:
        return apply.apply(self.index, update)[1]

    async def run(self, stop: asyncio.Event) -> None:
        self.store.start()
        self.store.prefetch(self.identity)
        self.tasks.spawn(self.xds.run(), "waypoint-xds")
        self.tasks.spawn(self._certificate(), "waypoint-cert")
        ready = readiness_server(self.readiness, [listening_socket(*_host_port(self.cfg.ready_addr))], lambda: None)
        await ready.start()
        host, port = _host_port(self.cfg.listen)
        context = tls.switching_server_context(
            lambda: self.contexts.server(c) if (c := self.store.current(self.identity)) else None
        )
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._inbound, host, port, ssl=context, ssl_handshake_timeout=10)
        _log.info("waypoint listening", extra={"fields": {"address": self.cfg.listen, "identity": self.identity.uri}})
        try:
            await stop.wait()
        finally:
            server.close()
            await ready.close()
            await self.tasks.close()
            await self.store.close()
            await self.xds.close()
            await self.ca.close()
            self.contexts.close()

    async def _certificate(self) -> None:
        await self.store.wait_available(self.identity)
        self.readiness.unblock(CERTIFICATE)

    # ------------------------------------------------------------------ HBONE in
    def _inbound(self) -> H2Endpoint:
        def verify(transport: asyncio.Transport) -> Identity:
            return tls.check_client_peer(transport.get_extra_info("ssl_object"), self.identity.trust_domain)

        endpoint = H2Endpoint(False, verify=verify)
        endpoint.on_connect = lambda tunnel, headers: self.tasks.spawn(
            self._serve(endpoint, tunnel, headers), "waypoint-stream"
        )
        return endpoint

    async def _serve(self, conn: H2Endpoint, down: Tunnel, headers: Headers) -> None:
        request = hbone.parse_connect(headers, None)
        if isinstance(request, hbone.Reject):
            conn.respond(down, hbone.response_headers(request.status), end=True)
            return
        conn.respond(down, hbone.response_headers(200))
        forwarded = dict((k.decode(), v.decode()) for k, v in headers).get("forwarded", "")
        hop = _Hop(self, conn, down, request.ip, request.port, forwarded)
        try:
            await hop.run()
        except (TunnelClosed, http_hop.HttpError, OSError, TimeoutError) as exc:
            _log.debug("waypoint stream ended", extra={"fields": {"error": str(exc)}})
            down.reset()
        finally:
            hop.close()
            conn.done(down)

    # ------------------------------------------------------------------ HBONE out
    def upstream_of(self, ip: str, port: int) -> tuple[Workload, int]:
        """The endpoint a request for ip:port goes to: a healthy endpoint of the service at that VIP, or the pod."""
        service = self.index.service_by_vip(ip)
        if service is not None:
            endpoints = self.index.endpoints(service, port)
            if not endpoints:
                raise TunnelClosed(f"no healthy endpoint for {service.hostname}:{port}")
            chosen = random.choice(endpoints)
            return chosen.workload, chosen.target_port
        workload = self.index.workload_by_ip(ip)
        if workload is None:
            raise TunnelClosed(f"unknown destination {ip}")
        return workload, port

    async def connect(self, workload: Workload, port: int, forwarded: str) -> tuple[H2Endpoint, Tunnel]:
        cert = await self.store.get(self.identity)
        ip = workload.workload_ips[0]
        expected = [Identity.parse(workload.identity)]

        def verify(transport: asyncio.Transport) -> Identity:
            return tls.check_server_peer(transport.get_extra_info("ssl_object"), expected)

        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: H2Endpoint(True, verify=verify),
                ip,
                hbone.HBONE_PORT,
                ssl=self.contexts.client(cert),
                server_hostname="",
                ssl_handshake_timeout=10,
            ),
            10,
        )
        headers = hbone.connect_headers(
            hbone.format_authority(ip, port),
            forwarded_for=forwarded,
            baggage_value="",
            traceparent_value=hbone.traceparent(os.urandom(16), os.urandom(8)),
        )
        return conn, await asyncio.wait_for(conn.open(headers), 10)


class _Hop:
    """One downstream stream: read each request, answer it (the rule) or forward it, relay and mark the response.

    Draining, HTTP-aware (as Envoy drains): when the client's proxy sends GOAWAY (it is being upgraded), the next
    response says `Connection: close` and the stream ends after it, so the client opens a new connection (through
    the new proxy) between requests instead of losing one; when the destination's proxy sends GOAWAY, the next
    request goes on a new upstream connection."""

    def __init__(self, app: Waypoint, conn: H2Endpoint, down: Tunnel, ip: str, port: int, forwarded: str) -> None:
        self.app, self.conn, self.down, self.ip, self.port, self.forwarded = app, conn, down, ip, port, forwarded
        self.up: tuple[H2Endpoint, Tunnel] | None = None

    async def run(self) -> None:
        while True:
            try:
                raw = await self.down.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise http_hop.HttpError("request cut short") from None
                self.down.write_eof()
                return
            head = http_hop.parse_head(raw)
            self.app.requests += 1
            path = http_hop.request_path(head)
            method = head.start.split(" ", 1)[0]
            body = http_hop.Body(head, response=False)
            if self.app.cfg.deny_path_prefix and path.startswith(self.app.cfg.deny_path_prefix):
                await self._skip(body)
                self.app.denied += 1
                closing = self.conn.going_away or not head.keep_alive
                self._answer_403(closing)
                if closing:
                    self.down.write_eof()
                    return
                continue
            if self.up is not None and self.up[0].going_away:  # the destination's proxy drains: a new connection
                self.close()
                self.up = None
            up = await self._upstream()
            up.write(raw)
            await self._copy(self.down, up, body)
            response_raw = await up.reader.readuntil(b"\r\n\r\n")
            response = http_hop.parse_head(response_raw)
            response.headers.append((WAYPOINT_HEADER, self.app.cfg.name))
            closing = self.conn.going_away or not head.keep_alive
            if closing:
                response.headers = [(k, v) for k, v in response.headers if k.lower() != "connection"]
                response.headers.append(("connection", "close"))
            self.down.write(response.encode())
            response_body = http_hop.Body(response, response=True, request_method=method)
            await self._copy(up, self.down, response_body)
            if closing or response_body.until_close or not response.keep_alive:
                self.down.write_eof()
                return

    async def _upstream(self) -> Tunnel:
        if self.up is None:
            workload, port = self.app.upstream_of(self.ip, self.port)
            self.up = await self.app.connect(workload, port, self.forwarded)
        return self.up[1]

    async def _copy(self, src: Tunnel, dst: Tunnel, body: http_hop.Body) -> None:
        while not body.done:
            data = await src.reader.read(65536)
            if not data:
                if body.until_close:
                    return
                raise http_hop.HttpError("message body cut short")
            used = body.feed(data)
            if used < len(data):
                raise http_hop.HttpError("bytes after a message before its answer (pipelining is not supported)")
            dst.write(data)
            await dst.drain()

    async def _skip(self, body: http_hop.Body) -> None:
        while not body.done:
            data = await self.down.reader.read(65536)
            if not data:
                raise http_hop.HttpError("request body cut short")
            body.feed(data)

    def _answer_403(self, closing: bool) -> None:
        text = b"denied by the waypoint\n"
        head = http_hop.Head(
            "HTTP/1.1 403 Forbidden",
            [("content-type", "text/plain"), ("content-length", str(len(text))), (WAYPOINT_HEADER, self.app.cfg.name)],
        )
        if closing:
            head.headers.append(("connection", "close"))
        self.down.write(head.encode() + text)

    def close(self) -> None:
        if self.up is not None:
            self.up[0].close()


def _host_port(address: str) -> tuple[str, int]:
    parsed = hbone.parse_authority(address)
    if parsed is None:
        raise click.UsageError(f"{address!r} is not HOST:PORT")
    return parsed


@click.command("waypoint")
@settings.cli_options(WaypointSettings)
@settings.cli_options(XdsSettings)
@settings.cli_options(CaClientSettings)
def waypoint(**cli: Any) -> None:
    """A minimal waypoint for the local cluster: HBONE in, one L7 rule and a response header, HBONE out."""
    from pyztunnel.apps._lifecycle import Shutdown
    from pyztunnel.observe import logging as zlog

    cfg = settings.load(WaypointSettings, cli=cli)
    xds_settings = settings.load(XdsSettings, cli=cli)
    ca = settings.load(CaClientSettings, cli=cli)
    zlog.setup()
    install_uvloop()

    async def main() -> None:
        shutdown = Shutdown()
        shutdown.install()
        app = Waypoint(cfg, xds_settings, ca, dict(os.environ))
        await app.run(shutdown.stop)

    asyncio.run(main())

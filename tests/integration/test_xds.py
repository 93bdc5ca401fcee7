"""The XDS client against the XDS server: real gRPC over TLS on 127.0.0.1, the CA's certificates and tokens."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.ca_server import authenticate
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.protocols import xds, xds_server
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.xds import apply
from pyztunnel.xds.client import XdsClient
from pyztunnel.xds.config import XdsSettings, node_id, node_metadata
from pyztunnel.xds.server import XdsServer

CONFIG = """
workloads:
- {uid: Kubernetes//v1/Pod/default/web-0, name: web-0, namespace: default, serviceAccount: web,
   workloadIps: [10.244.1.2], node: node-a, protocol: HBONE,
   services: {"default/web.default.svc.cluster.local": {80: 8080}}}
services:
- {name: web, namespace: default, hostname: web.default.svc.cluster.local, vips: ["/10.96.0.10"], ports: {80: 8080}}
policies:
- {name: deny-client, namespace: default, scope: Namespace, action: Deny,
   rules: [[[{principals: [!Exact cluster.local/ns/default/sa/client]}]]]}
"""
TOKEN = "token-of-node-a"


@dataclasses.dataclass
class Plane:
    server: XdsServer
    port: int
    root: Path
    seen_metadata: list[Mapping[str, str]]
    events: list[tuple[str, str, float | None]]
    ca: CertificateAuthority


async def start_plane(
    tmp_path: Path, port: int = 0, server: XdsServer | None = None, ca: CertificateAuthority | None = None
) -> Plane:
    ca = ca or CertificateAuthority.create("cluster.local")
    root = tmp_path / "root-cert.pem"
    root.write_text(ca.root_pem)
    cert, key = ca.issue_server(["localhost"], ["127.0.0.1"], timedelta(hours=1))
    seen: list[Mapping[str, str]] = []
    events: list[tuple[str, str, float | None]] = []

    def auth(metadata: Mapping[str, str]) -> Any:
        seen.append(dict(metadata))
        return authenticate({TOKEN: "node-a"}, metadata)

    if server is None:
        server = XdsServer(
            authenticate=auth, on_event=lambda s, e, latency: events.append((e.kind, e.type_url, latency))
        )
    bound = await server.start(f"127.0.0.1:{port}", key, cert + ca.root_pem)
    return Plane(server, bound, root, seen, events, ca)


class Proxy:
    """What the proxy does with the client: apply each response to an index."""

    def __init__(
        self, plane: Plane, token: str = TOKEN, environ: Mapping[str, str] | None = None, **xds_fields: Any
    ) -> None:
        self.index = WorkloadIndex()
        self.ready = asyncio.Event()
        self.applied = asyncio.Event()
        env = dict(environ or {})
        settings = XdsSettings(xds_address=f"https://127.0.0.1:{plane.port}", xds_root_ca=str(plane.root), **xds_fields)
        auth = CaClientSettings(auth_token=token, cluster_id="Kubernetes")
        node = xds.node(
            node_id("10.244.1.9", "ztunnel-abc", "istio-system"),
            node_metadata(env, "10.244.1.9", "ztunnel-abc", "istio-system", "node-a"),
        )
        self.client = XdsClient(settings, auth, node, self.handle, self.ready.set, environ=env)
        self.task = spawn(self.client.run(), "test-xds-client")

    async def handle(self, update: xds.Update) -> list[tuple[str, str]]:
        _, rejects = apply.apply(self.index, update)
        self.applied.set()
        return rejects

    async def until(self, check: Callable[[], bool], within: float = 20.0) -> None:
        """Wait until `check()` holds, re-checked after each answer and stream end of the client."""
        try:
            async with asyncio.timeout(within):
                while True:
                    self.client.changed.clear()
                    if check():
                        return
                    await self.client.changed.wait()
        except TimeoutError:
            raise AssertionError(f"not reached; the client: {self.client.dump()}") from None

    async def close(self) -> None:
        await cancel_and_wait(self.task)
        await self.client.close()


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    p = await start_plane(tmp_path)
    p.server.set_config(local.parse(CONFIG, "t.yaml"))
    yield p
    await p.server.close()


async def test_the_proxy_syncs_with_the_node_and_headers_ztunnel_sends(plane: Plane) -> None:
    proxy = Proxy(plane, environ={"ISTIO_META_CLUSTER_ID": "Kubernetes", "XDS_HEADER_X_EXTRA": "1"})
    try:
        await asyncio.wait_for(proxy.ready.wait(), 20)
        assert proxy.index.workload_by_ip("10.244.1.2") is not None
        assert proxy.index.service_by_vip("10.96.0.10") is not None
        assert [p.key for p in proxy.index.policies()] == ["default/deny-client"]
        assert await plane.server.wait(lambda: plane.server.current(lambda s: True), 20)
        (stream,) = plane.server.streams()
        assert stream.node_id == "ztunnel~10.244.1.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        assert stream.metadata["NODE_NAME"] == "node-a" and stream.metadata["CLUSTER_ID"] == "Kubernetes"
        assert stream.peer == "node-a"
        metadata = plane.seen_metadata[-1]
        assert metadata["authorization"] == f"Bearer {TOKEN}" and metadata["clusterid"] == "Kubernetes"
        assert metadata["x-extra"] == "1"
        assert {kind for kind, _, _ in plane.events} == {"subscribe", "ack"}
        assert all(latency is not None for kind, _, latency in plane.events if kind == "ack")
        assert proxy.client.state.stats.messages == {xds.ADDRESS_TYPE: 1, xds.AUTHORIZATION_TYPE: 1}
    finally:
        await proxy.close()


async def test_changes_and_removals_reach_the_proxy(plane: Plane) -> None:
    proxy = Proxy(plane)
    try:
        await asyncio.wait_for(proxy.ready.wait(), 20)
        moved = CONFIG.replace("10.244.1.2", "10.244.1.3").replace("action: Deny", "action: Allow")
        plane.server.set_config(local.parse(moved, "t.yaml"))
        await proxy.until(lambda: proxy.index.workload_by_ip("10.244.1.3") is not None)
        assert proxy.index.workload_by_ip("10.244.1.2") is None
        plane.server.set_config(local.parse("workloads: []", "t.yaml"))
        await proxy.until(lambda: not list(proxy.index.workloads()) and not list(proxy.index.policies()))
        assert await plane.server.wait(lambda: plane.server.current(lambda s: True), 20)
    finally:
        await proxy.close()


async def test_a_bad_resource_is_nacked_by_name_and_the_last_good_one_kept(plane: Plane) -> None:
    proxy = Proxy(plane)
    try:
        await asyncio.wait_for(proxy.ready.wait(), 20)
        uid = "Kubernetes//v1/Pod/default/web-0"
        plane.server.catalog.put(xds.ADDRESS_TYPE, uid, xds_server.Entry.of(b"\xff\xfe garbage"))
        plane.server.publish()
        assert await plane.server.wait(lambda: any(k == "nack" for k, _, _ in plane.events), 20)
        (stream,) = plane.server.streams()
        nack = stream.subscriptions[xds.ADDRESS_TYPE].last_nack
        assert nack.startswith(f"{uid}: decode:")
        assert proxy.index.workload_by_ip("10.244.1.2") is not None  # the last good version serves on
        assert proxy.client.dump()["types"][xds.ADDRESS_TYPE]["lastNack"] == nack  # type: ignore[index]
        assert not stream.current()
    finally:
        await proxy.close()


async def test_a_server_down_at_start_is_retried_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unused_tcp_port: int
) -> None:
    ca = CertificateAuthority.create("cluster.local")
    root = tmp_path / "root-cert.pem"
    root.write_text(ca.root_pem)
    with caplog.at_level(logging.INFO, logger="pyztunnel.xds"):
        proxy = Proxy(Plane(XdsServer(), unused_tcp_port, root, [], [], ca))
        try:
            await proxy.until(lambda: proxy.client.state.stats.terminations.get("ConnectionError", 0) >= 3)
            ended = [r for r in caplog.records if r.getMessage() == "XDS stream ended, retrying"]
            assert len(ended) == 1  # the same failure again and again: one line
            plane = await start_plane(tmp_path, unused_tcp_port, ca=ca)
            try:
                plane.server.set_config(local.parse(CONFIG, "t.yaml"))
                await asyncio.wait_for(proxy.ready.wait(), 30)
                assert any(r.getMessage() == "XDS stream established" for r in caplog.records)
                assert proxy.index.workload_by_ip("10.244.1.2") is not None
            finally:
                await plane.server.close()
        finally:
            await proxy.close()


async def test_a_reconnect_sends_versions_and_keeps_serving(plane: Plane, tmp_path: Path) -> None:
    proxy = Proxy(plane)
    try:
        await asyncio.wait_for(proxy.ready.wait(), 20)
        held = dict(proxy.client.state.versions[xds.ADDRESS_TYPE])
        await plane.server.close()
        await proxy.until(lambda: proxy.client.status.startswith("disconnected"))
        assert proxy.index.workload_by_ip("10.244.1.2") is not None  # still served while the server is away
        subscribed: list[dict[str, str]] = []

        def record(stream: xds_server.Stream, event: xds_server.Event, latency: float | None) -> None:
            if event.kind == "subscribe" and event.type_url == xds.ADDRESS_TYPE:
                subscribed.append(dict(stream.subscriptions[xds.ADDRESS_TYPE].held))

        again = await start_plane(tmp_path, plane.port, XdsServer(plane.server.catalog, on_event=record), plane.ca)
        try:
            await proxy.until(lambda: bool(subscribed) and proxy.client.status == "connected")
            assert subscribed[0] == held  # initial_resource_versions: what the proxy held
            assert sum(proxy.client.state.stats.terminations.values()) >= 1
            assert proxy.index.workload_by_ip("10.244.1.2") is not None
        finally:
            await again.server.close()
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def broken_server(tmp: Path, method: grpc.RpcMethodHandler) -> AsyncIterator[Plane]:
    """A gRPC server at the ADS path whose handler misbehaves, with a CA root the proxy trusts."""
    ca = CertificateAuthority.create("cluster.local")
    root = tmp / "root-cert.pem"
    root.write_text(ca.root_pem)
    cert, key = ca.issue_server(["localhost"], ["127.0.0.1"], timedelta(hours=1))
    server = grpc.aio.server()
    service = "envoy.service.discovery.v3.AggregatedDiscoveryService"
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"DeltaAggregatedResources": method}),)
    )
    credentials = grpc.ssl_server_credentials([(key.encode(), (cert + ca.root_pem).encode())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield Plane(XdsServer(), port, root, [], [], ca)
    finally:
        await server.stop(0)


async def test_garbage_from_the_server_ends_the_stream_and_keeps_the_state(tmp_path: Path) -> None:
    """A server answering with bytes that are no DeltaDiscoveryResponse."""

    async def garbage(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield b"\xff\xff\xff\xff not protobuf"

    async with broken_server(tmp_path, grpc.stream_stream_rpc_method_handler(garbage)) as plane:
        proxy = Proxy(plane)
        try:
            await proxy.until(lambda: proxy.client.state.stats.terminations.get("Error", 0) >= 2)
            assert "protocol error" in proxy.client.last_error
            assert not proxy.client.state.ready
        finally:
            await proxy.close()


async def test_a_wrong_token_is_refused(plane: Plane) -> None:
    proxy = Proxy(plane, token="not-a-token")
    try:
        await proxy.until(lambda: proxy.client.state.stats.terminations.get("Error", 0) >= 1)
        assert plane.server.streams() == [] and not proxy.client.state.ready
        # gRPC reports the server's UNAUTHENTICATED, or INTERNAL when our first send lost the race with it
        assert proxy.client.last_error.split(":")[0] in ("UNAUTHENTICATED", "INTERNAL")
    finally:
        await proxy.close()


async def test_a_response_above_the_size_bound_is_refused_and_retried(plane: Plane) -> None:
    proxy = Proxy(plane, xds_max_message_size=64)
    try:
        await proxy.until(lambda: proxy.client.state.stats.terminations.get("Error", 0) >= 1)
        assert "RESOURCE_EXHAUSTED" in proxy.client.last_error
        assert not list(proxy.index.workloads())
    finally:
        await proxy.close()


async def test_a_server_that_never_answers_is_dropped_and_retried(tmp_path: Path) -> None:
    async def silent(requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for _ in requests:  # reads everything, answers nothing
            pass
        return b""

    async with broken_server(tmp_path, grpc.stream_unary_rpc_method_handler(silent)) as plane:
        proxy = Proxy(plane, xds_first_response_timeout=0.2)
        try:
            await proxy.until(lambda: proxy.client.state.stats.terminations.get("ConnectionError", 0) >= 2)
            assert proxy.client.last_error == "no response from the server in time"
        finally:
            await proxy.close()

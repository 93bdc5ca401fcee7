"""Two pyztunnel proxies on loopback in direct mode, with real certificates from the CA core, for integration tests.

Pod A (client side) at 127.x.y.10 has an outbound listener whose fixed target is pod B's app; pod B at 127.x.y.20
serves HBONE on :15008 and its app listens on B:APP_PORT. Each proxy has its own Shared (as two nodes would).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from pyztunnel.aio import cancel_and_wait
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.spiffe import Identity
from pyztunnel.proxy.certs import StaticCerts
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.proxy.netsock import DirectNet
from pyztunnel.proxy.pod import PodProxy, Ports
from pyztunnel.proxy.podset import DATA_PATH
from pyztunnel.proxy.shared import IndexHolder, Shared
from pyztunnel.settings import load
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex

CLIENT_ID = Identity("cluster.local", "a", "client")
SERVER_ID = Identity("cluster.local", "b", "server")


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def config_text(a_ip: str, b_ip: str, policies: str = "") -> str:
    return f"""\
workloads:
- {{uid: a-1, name: client-1, namespace: a, serviceAccount: client, trustDomain: cluster.local,
   workloadIps: ['{a_ip}'], protocol: HBONE}}
- {{uid: b-1, name: server-1, namespace: b, serviceAccount: server, trustDomain: cluster.local,
   workloadIps: ['{b_ip}'], protocol: HBONE}}
policies:
{policies}
"""


@dataclasses.dataclass
class Mesh:
    a_ip: str
    b_ip: str
    app_port: int
    out_port: int
    ca: CertificateAuthority
    node_a: Shared
    node_b: Shared
    pod_a: PodProxy
    pod_b: PodProxy
    certs: StaticCerts

    def set_config(self, text: str) -> None:
        index = WorkloadIndex(local.parse(text, "test.yaml"))
        self.node_a.indexes.set(index)
        self.node_b.indexes.set(index)

    async def open_client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.a_ip, self.out_port)


# Settings every mesh of a test gets unless it overrides them (the `tls_transport` fixture sets the TLS transport).
DEFAULTS: dict[str, str] = {}


def settings(**overrides: str) -> ProxySettings:
    return load(ProxySettings, environ={**DEFAULTS, **overrides})


def loopback_ips() -> tuple[str, str]:
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    return f"{net}.10", f"{net}.20"


async def start_mesh(tmp: Path, policies: str = "", **overrides: str) -> Mesh:
    a_ip, b_ip = loopback_ips()
    app_port = free_port(b_ip)
    out_port = free_port(a_ip)
    ca = CertificateAuthority.create("cluster.local")
    certs = StaticCerts()
    for identity in (CLIENT_ID, SERVER_ID):
        certs.add(ca.issue(identity, timedelta(hours=1)))
    index = WorkloadIndex(local.parse(config_text(a_ip, b_ip, policies), "test.yaml"))
    node_a = Shared(settings(**overrides), certs, IndexHolder(index), key_dir=tmp / "keys-a")
    node_b = Shared(settings(**overrides), certs, IndexHolder(index), key_dir=tmp / "keys-b")
    pod_a = PodProxy(
        node_a,
        "a-1",
        DirectNet(a_ip, {out_port: (b_ip, app_port)}),
        lambda idx: idx.workload_by_ip(a_ip),
        DATA_PATH,
        Ports(outbound=out_port, plaintext=None, hbone=None),
    )
    pod_b = PodProxy(
        node_b,
        "b-1",
        DirectNet(b_ip),
        lambda idx: idx.workload_by_ip(b_ip),
        DATA_PATH,
        Ports(outbound=None, plaintext=None),
    )
    await pod_a.start()
    await pod_b.start()
    return Mesh(a_ip, b_ip, app_port, out_port, ca, node_a, node_b, pod_a, pod_b, certs)


async def stop_mesh(mesh: Mesh) -> None:
    for pod in (mesh.pod_a, mesh.pod_b):
        await pod.drain_immediate()
    for node in (mesh.node_a, mesh.node_b):
        node.tls.close()


async def echo_server(ip: str, port: int) -> AsyncIterator[asyncio.Server]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 18):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, ip, port)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


class RecordingApp:
    """An echo app that counts the connections it accepted (a proxy under attack must open none for it)."""

    def __init__(self) -> None:
        self.accepted = 0

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


__all__ = ["cancel_and_wait"]


async def roundtrip(mesh: Mesh, payload: bytes = b"still serving") -> None:
    """One echo exchange through both proxies: proves the proxies still serve everyone else."""
    reader, writer = await mesh.open_client()
    try:
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert got == payload
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

"""The proxy in in-pod mode, in namespaces we create (`pzt-tpx-…`): two pod netns joined by a veth, the agent's
redirection rules in each, the agent's ZDS server handing over the netns fds. A's app connects to B's IP; the
connection is captured to A's 15001 (SO_ORIGINAL_DST), carried as HBONE to B's 15008 and delivered to B's app by a
marked socket inside B's netns. DelWorkload closes B's listeners at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from pyztunnel.agent import rules
from pyztunnel.agent.zds_server import ZdsServer
from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.spiffe import Identity
from pyztunnel.netns import netns_path, socket_in_netns
from pyztunnel.protocols import zds
from pyztunnel.proxy.certs import StaticCerts
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.proxy.netsock import INPOD_MARK
from pyztunnel.proxy.podset import PodSet
from pyztunnel.proxy.shared import IndexHolder, Shared
from pyztunnel.proxy.zds_client import ZdsClient
from pyztunnel.settings import load
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex

A_IP, B_IP, APP_PORT = "10.77.0.1", "10.77.0.2", 8080


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def two_pods() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"pzt-tpx-{tag}-a", f"pzt-tpx-{tag}-b"
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, addr in ((a, A_IP), (b, B_IP)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            rules.install(ns)
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


CONFIG = f"""\
workloads:
- {{uid: k//v1/Pod/a/client-1, name: client-1, namespace: a, serviceAccount: client, trustDomain: cluster.local,
   workloadIps: ['{A_IP}'], protocol: HBONE}}
- {{uid: k//v1/Pod/b/server-1, name: server-1, namespace: b, serviceAccount: server, trustDomain: cluster.local,
   workloadIps: ['{B_IP}'], protocol: HBONE}}
"""


@contextlib.asynccontextmanager
async def echo_in(ns: str) -> AsyncIterator[list[tuple[str, int]]]:
    """An echo app listening on B_IP:APP_PORT inside `ns`; yields the peers it saw."""
    peers: list[tuple[str, int]] = []
    sock = socket_in_netns(ns)
    sock.bind((B_IP, APP_PORT))
    sock.listen(16)
    sock.setblocking(False)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, sock=sock)
    try:
        yield peers
    finally:
        server.close()
        await server.wait_closed()


async def connect_from(ns: str, addr: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket_in_netns(ns)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, addr)
    return await asyncio.open_connection(sock=sock)


@pytest.mark.system
async def test_inpod_capture_hbone_and_delete(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("cluster.local")
    certs = StaticCerts()
    for identity in (Identity("cluster.local", "a", "client"), Identity("cluster.local", "b", "server")):
        certs.add(ca.issue(identity, timedelta(hours=1)))
    shared = Shared(
        load(ProxySettings, environ={}),
        certs,
        IndexHolder(WorkloadIndex(local.parse(CONFIG, "t.yaml"))),
        key_dir=tmp_path / "keys",
    )
    with two_pods() as (a, b):
        fds = {ns: os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC) for ns in (a, b)}
        snapshot = [
            (zds.AddWorkload("uid-a", zds.WorkloadInfo("client-1", "a", "client")), fds[a]),
            (zds.AddWorkload("uid-b", zds.WorkloadInfo("server-1", "b", "server")), fds[b]),
        ]
        server = ZdsServer(tmp_path / "ztunnel.sock", lambda: snapshot)
        await server.start()
        pods = PodSet(shared)
        ready = asyncio.Event()
        client = ZdsClient(tmp_path / "ztunnel.sock", pods, lambda ok: ready.set() if ok else ready.clear())
        task = spawn(client.run(), "zds-test")
        try:
            await asyncio.wait_for(ready.wait(), 10)
            assert set(pods.pods) == {"uid-a", "uid-b"}
            for pod in pods.pods.values():
                assert {acc.port for acc in pod.acceptors} == {15001, 15006, 15008}
                for acc in pod.acceptors:
                    assert acc.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == INPOD_MARK
                    assert acc.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            async with echo_in(b) as peers:
                reader, writer = await connect_from(a, (B_IP, APP_PORT))
                writer.write(b"through the mesh")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(16), 10) == b"through the mesh"
                writer.close()
                await writer.wait_closed()
                # B's proxy connected to the app from inside B with A's address as source (ztunnel's
                # original-source preservation through the agent's connmark/route rules), not captured again
                assert peers and peers[0][0] == A_IP
            # outbound in A and inbound in B both complete (before B goes away, which would reset what is left)
            await asyncio.wait_for(shared.telemetry.wait_for(lambda t: t.closed_total >= 2), 10)
            # DelWorkload B: its listeners close at once
            acks = await asyncio.wait_for(server.delete("uid-b"), 10)
            assert [ack.ok for ack in acks] == [True]
            assert set(pods.pods) == {"uid-a"}
            with pytest.raises(ConnectionRefusedError):
                await connect_from(b, ("127.0.0.1", 15008))
            assert not shared.telemetry.errors, shared.telemetry.errors
        finally:
            client.stop()
            await cancel_and_wait(task)
            await pods.close()
            await server.close()
            shared.tls.close()
            for fd in fds.values():
                os.close(fd)


@pytest.mark.system
async def test_new_instance_adopts_the_old_listeners(tmp_path: Path) -> None:
    """Old and new proxy instances for one pod netns: the new one takes the old one's listening sockets over the
    handoff socket (same socket, same accept queue) and the old one stops accepting once the new one confirms."""
    from pyztunnel.aio import poll_until
    from pyztunnel.lifecycle import handoff_key
    from pyztunnel.lifecycle.handoff_io import HandoffService
    from pyztunnel.proxy.handoff import Adopter, PodSetListeners

    def shared() -> Shared:
        return Shared(load(ProxySettings, environ={}), StaticCerts(), key_dir=tmp_path / "keys")

    old_shared, new_shared = shared(), shared()
    with two_pods() as (a, _b):
        fd = os.open(netns_path(a), os.O_RDONLY | os.O_CLOEXEC)
        old, new = PodSet(old_shared), PodSet(new_shared)
        service = HandoffService(tmp_path / "handoff.sock", PodSetListeners(old))
        try:
            info = zds.WorkloadInfo("client-1", "a", "client")
            assert await old.start("uid-a", info, os.dup(fd)) is None
            await service.start()
            key = handoff_key.load_or_create(handoff_key.beside(tmp_path / "handoff.sock"))
            adopter = Adopter(tmp_path / "handoff.sock", key)
            new_shared.listeners.adopter = adopter
            assert await new.start("uid-a", info, os.dup(fd)) is None
            assert adopter.adopted == 3

            def inodes(pods: PodSet) -> set[int]:
                return {os.fstat(acc.sock.fileno()).st_ino for acc in pods.pods["uid-a"].acceptors}

            assert inodes(old) == inodes(new)
            old_acceptors = old.pods["uid-a"].acceptors
            assert not any(acc.accepting for acc in old_acceptors), "old instance stopped accepting"
            assert all(acc.accepting for acc in new.pods["uid-a"].acceptors)
            # The new instance goes away (its leases end, as they do when it dies): the old one accepts again.
            adopter.end_leases()
            assert await poll_until(lambda: all(acc.accepting for acc in old_acceptors), 10)
        finally:
            await service.close()
            await new.close()
            await old.close()
            os.close(fd)
            for s in (old_shared, new_shared):
                s.tls.close()


@pytest.mark.system
async def test_pod_whose_listener_cannot_bind_is_nacked_pending_then_retried(tmp_path: Path) -> None:
    """ztunnel's pending set: a busy port NACKs the Add ("failure to start proxy"), keeps readiness blocked, and the
    pod starts on a later retry once the port is free."""
    shared = Shared(load(ProxySettings, environ={}), StaticCerts(), key_dir=tmp_path / "keys")
    with two_pods() as (a, _b):
        fd = os.open(netns_path(a), os.O_RDONLY | os.O_CLOEXEC)
        squatter = socket_in_netns(a)  # no SO_REUSEPORT: the proxy's bind of 15001 fails
        squatter.bind(("0.0.0.0", 15001))
        squatter.listen(1)
        server = ZdsServer(tmp_path / "ztunnel.sock", lambda: [])
        await server.start()
        pods = PodSet(shared, retry_interval=0.2)
        states: list[bool] = []
        client = ZdsClient(tmp_path / "ztunnel.sock", pods, states.append)
        pods.on_change = client.check_ready
        task = spawn(client.run(), "zds-test")
        try:
            await asyncio.wait_for(client.snapshot_done.wait(), 10)
            ack = await asyncio.wait_for(
                server.add(zds.AddWorkload("uid-a", zds.WorkloadInfo("client-1", "a", "client")), fd), 10
            )
            assert ack.error.startswith("failure to start proxy")
            assert "uid-a" in pods.pending and states[-1] is False
            squatter.close()

            async def started() -> None:
                while "uid-a" not in pods.pods:
                    await pods.changed.wait()

            await asyncio.wait_for(started(), 10)
            assert states[-1] is True
        finally:
            squatter.close()
            client.stop()
            await cancel_and_wait(task)
            await pods.close()
            await server.close()
            shared.tls.close()
            os.close(fd)

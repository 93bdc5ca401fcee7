"""The agent as a process in a node netns, plumbing real pod netns (root): addresses, bridge traffic, the nft
redirection with real connections, the policy route, the sysctl, DELETE, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyztunnel.agent.pods import veth_name
from pyztunnel.agent.zds_probe import ZdsProbe
from pyztunnel.netns import netns_inode, run_in_netns, socket_in_netns
from pyztunnel.protocols import zds

NODE = "pzt-tagent-node"
PODS = ("pzt-tagent-pod1", "pzt-tagent-pod2", "pzt-tagent-pod3")
IPS = {"pzt-tagent-pod1": "10.244.9.2", "pzt-tagent-pod2": "10.244.9.3", "pzt-tagent-pod3": "10.244.9.4"}
TIMEOUT = 10.0


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def in_ns(ns: str, *args: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def remove_namespaces() -> None:
    for ns in (NODE, *PODS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[None]:
    remove_namespaces()  # leftovers of a crashed run
    try:
        for ns in (NODE, *PODS):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", NODE, "link", "add", "cbr0", "type", "bridge")
        sh("ip", "-n", NODE, "addr", "add", "10.244.9.1/24", "dev", "cbr0")
        sh("ip", "-n", NODE, "link", "set", "cbr0", "up")
        yield
    finally:
        remove_namespaces()


@pytest.fixture
async def agent(namespaces: None, tmp_path: Path) -> AsyncIterator[tuple[aiohttp.ClientSession, Path]]:
    run_dir = tmp_path / "run"
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            *("ip", "netns", "exec", NODE, sys.executable, "-m", "pyztunnel", "agent", "--run-dir", str(run_dir)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(run_dir / "cni.sock")))
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                async with session.get("http://agent/v1/status") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert proc.returncode is None, log_path.read_text()
            assert time.monotonic() < deadline, "agent did not become ready"
            await asyncio.sleep(0.02)  # polling readiness with a deadline [noqa: sleep-ok]
        yield session, run_dir
        # Clean shutdown: SIGTERM ends it with status 0 and removes its sockets.
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0, log_path.read_text()
        assert not (run_dir / "cni.sock").exists() and not (run_dir / "ztunnel.sock").exists()
    finally:
        await session.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def pod_doc(ns: str, uid: str, mesh: bool) -> dict[str, Any]:
    return {
        "uid": uid,
        "name": ns.removeprefix("pzt-tagent-"),
        "namespace": "default",
        "serviceAccount": "sa",
        "netns": ns,
        "ip": IPS[ns],
        "prefixLen": 24,
        "gateway": "10.244.9.1",
        "mesh": mesh,
    }


async def call(session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with session.request(method, f"http://agent{path}", **kw) as resp:
        return resp.status, await resp.json()


def listen(ns: str, port: int) -> socket.socket:
    sock = socket_in_netns(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(8)
    sock.settimeout(TIMEOUT)
    return sock


def connect_from(ns: str, ip: str, port: int) -> socket.socket:
    sock = socket_in_netns(ns)
    sock.settimeout(TIMEOUT)
    sock.connect((ip, port))
    return sock


def original_dst(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def last_event(probe: ZdsProbe) -> zds.ClientEvent:
    return probe.received[-1].event


def sysctl(ns: str, name: str) -> str:
    return run_in_netns(ns, lambda: Path("/proc/sys/" + name.replace(".", "/")).read_text().strip())


async def test_plain_pods_are_plumbed_and_reach_each_other(agent: tuple[aiohttp.ClientSession, Path]) -> None:
    session, _ = agent
    for i, ns in enumerate(PODS[:2]):
        assert await call(session, "POST", "/v1/pods", json=pod_doc(ns, f"uid-{i}", mesh=False)) == (200, {"ok": True})
    # Idempotent: the same POST again changes nothing.
    assert await call(session, "POST", "/v1/pods", json=pod_doc(PODS[0], "uid-0", mesh=False)) == (200, {"ok": True})
    for ns in PODS[:2]:
        assert f"inet {IPS[ns]}/24" in sh("ip", "-n", ns, "addr", "show", "dev", "eth0")
        assert "default via 10.244.9.1" in sh("ip", "-n", ns, "route")
        assert "UP" in sh("ip", "-n", ns, "link", "show", "lo")
        assert sysctl(ns, "net.ipv4.tcp_migrate_req") == "1"
        assert "pyztunnel" not in in_ns(ns, "nft", "list", "tables")  # no rules for non-mesh pods
        assert "32764" not in sh("ip", "-n", ns, "rule")
    assert "master cbr0" in sh("ip", "-n", NODE, "link", "show", veth_name("uid-0"))
    server = listen(PODS[1], 8080)
    try:
        client = await asyncio.to_thread(connect_from, PODS[0], IPS[PODS[1]], 8080)
        conn, peer = await asyncio.to_thread(server.accept)
        assert peer[0] == IPS[PODS[0]]
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()
        client.close()
    finally:
        server.close()
    # DELETE removes the veth, both ends.
    assert await call(session, "DELETE", "/v1/pods/uid-0") == (200, {"ok": True, "known": True})
    assert veth_name("uid-0") not in sh("ip", "-n", NODE, "link")
    assert "eth0" not in sh("ip", "-n", PODS[0], "link")


async def test_mesh_pod_gets_redirection_and_its_add_reaches_the_proxy(
    agent: tuple[aiohttp.ClientSession, Path],
) -> None:
    session, run_dir = agent
    mesh, other = PODS[0], PODS[1]
    assert await call(session, "POST", "/v1/pods", json=pod_doc(other, "uid-plain", mesh=False)) == (200, {"ok": True})
    # No proxy yet: a mesh pod is refused as istio-cni refuses it.
    doc = pod_doc(mesh, "uid-mesh", mesh=True)
    assert await call(session, "POST", "/v1/pods", json=doc) == (503, {"error": "no ztunnel connection"})
    probe = ZdsProbe()
    await probe.connect(run_dir / "ztunnel.sock")
    try:
        got = await asyncio.wait_for(probe.sync(), TIMEOUT)  # the pod is already in the snapshot
        assert got[0].netns == netns_inode(f"/run/netns/{mesh}")
        serving = asyncio.ensure_future(probe.serve())
        assert await call(session, "POST", "/v1/pods", json=doc) == (200, {"ok": True})
        assert last_event(probe) == zds.Unchanged("uid-mesh")  # same uid, same netns
        assert probe.received[-1].netns == netns_inode(f"/run/netns/{mesh}")

        table = in_ns(mesh, "nft", "list", "table", "inet", "pyztunnel")
        assert "redirect to :15001" in table and "redirect to :15006" in table
        assert "fwmark 0x111/0xfff lookup 100" in sh("ip", "-n", mesh, "rule")
        assert "local default dev lo" in sh("ip", "-n", mesh, "route", "show", "table", "100")
        assert sysctl(mesh, "net.ipv4.tcp_migrate_req") == "1"

        # Outbound: the mesh pod's connection to the other pod lands on :15001, original destination intact.
        outbound = listen(mesh, 15001)
        try:
            client = await asyncio.to_thread(connect_from, mesh, IPS[other], 80)
            conn, _ = await asyncio.to_thread(outbound.accept)
            assert original_dst(conn) == (IPS[other], 80)
            conn.close()
            client.close()
        finally:
            outbound.close()
        # Inbound: the other pod's connection to the mesh pod's 8080 lands on :15006; 15008 is not redirected.
        inbound, hbone = listen(mesh, 15006), listen(mesh, 15008)
        try:
            client = await asyncio.to_thread(connect_from, other, IPS[mesh], 8080)
            conn, _ = await asyncio.to_thread(inbound.accept)
            assert original_dst(conn) == (IPS[mesh], 8080)
            conn.close()
            client.close()
            client = await asyncio.to_thread(connect_from, other, IPS[mesh], 15008)
            conn, _ = await asyncio.to_thread(hbone.accept)
            assert conn.getsockname() == (IPS[mesh], 15008)
            conn.close()
            client.close()
        finally:
            inbound.close()
            hbone.close()

        assert await call(session, "DELETE", "/v1/pods/uid-mesh") == (200, {"ok": True, "known": True})
        assert last_event(probe) == zds.DrainWorkload("uid-mesh")
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    finally:
        probe.close()


def test_fd_count_of_agent_is_stable(namespaces: None, tmp_path: Path) -> None:
    """In-process: 20 add/delete cycles of a mesh pod leak no fd (netns fds, netlink sockets, pyroute2 loops)."""
    from pyztunnel.agent.config import AgentSettings
    from pyztunnel.agent.pods import PodSpec
    from pyztunnel.agent.service import Agent

    async def cycle() -> tuple[int, int]:
        settings = AgentSettings(run_dir=tmp_path / "run")
        node = Agent(settings)
        await node.start()
        probe = ZdsProbe()
        await probe.connect(settings.zds_socket)
        await asyncio.wait_for(probe.sync(), TIMEOUT)
        serving = asyncio.ensure_future(probe.serve())
        spec = PodSpec.from_json(pod_doc(PODS[2], "uid-cycle", mesh=True))
        try:
            await node.add_pod(spec)  # warm-up (thread pool, imports)
            await node.delete_pod(spec.uid)
            before = len(os.listdir("/proc/self/fd"))
            for _ in range(20):
                await node.add_pod(spec)
                await node.delete_pod(spec.uid)
            return before, len(os.listdir("/proc/self/fd"))
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            probe.close()
            await node.close()

    def in_node() -> tuple[int, int]:
        return asyncio.run(cycle())

    before, after = run_in_netns(NODE, in_node)
    assert after == before


def test_tcp_migrate_req_can_be_switched_off(namespaces: None, tmp_path: Path) -> None:
    """--no-tcp-migrate-req reproduces ztunnel's environment: the sysctl stays 0 in the pod netns."""
    from pyztunnel.agent.config import AgentSettings
    from pyztunnel.agent.pods import PodSpec
    from pyztunnel.agent.service import Agent

    async def add() -> None:
        node = Agent(AgentSettings(run_dir=tmp_path / "run", tcp_migrate_req=False))
        await node.start()
        try:
            await node.add_pod(PodSpec.from_json(pod_doc(PODS[2], "uid-off", mesh=False)))
        finally:
            await node.close()

    run_in_netns(NODE, lambda: asyncio.run(add()))
    assert sysctl(PODS[2], "net.ipv4.tcp_migrate_req") == "0"
    assert f"inet {IPS[PODS[2]]}/24" in sh("ip", "-n", PODS[2], "addr", "show", "dev", "eth0")

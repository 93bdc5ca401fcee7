"""Pod network plumbing, as the kubelet calls the CNI plugin: through the node agent's API (`nodes/<n>/cni.sock`).

`AgentPodNetwork` is the real path (the agent creates the veth, addresses, routes, sysctls and, for mesh pods, the
redirection rules and the ZDS AddWorkload). `DirectPodNetwork` is the stand-in used only when the spec runs without
agents (`agent.enabled: false`): plain veth plumbing for pods outside the mesh, kept in this one place.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from pyztunnel.cluster import topology
from pyztunnel.netns import NETNS_RUN_DIR


@dataclass(frozen=True)
class PodNet:
    uid: str
    name: str
    namespace: str
    service_account: str
    netns: str  # name under /run/netns
    ip: str
    node: str
    node_index: int
    node_netns: str
    mesh: bool


class NotReady(Exception):
    """The plumbing cannot be done yet (e.g. a mesh pod and no proxy connected): retry later."""


class PlumbingFailed(Exception):
    """The plumbing was refused for good (bad input)."""


class PodNetwork(Protocol):
    async def add(self, pod: PodNet) -> None: ...

    async def remove(self, pod: PodNet) -> None: ...

    async def close(self) -> None: ...


class AgentPodNetwork:
    """The CNI role over HTTP/1.1+JSON on the node agent's unix socket (docs/architecture.md, Agent API)."""

    def __init__(self, sockets: dict[str, Path]) -> None:
        self._sockets = sockets
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, node: str) -> aiohttp.ClientSession:
        session = self._sessions.get(node)
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(path=str(self._sockets[node]))
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
            self._sessions[node] = session
        return session

    async def add(self, pod: PodNet) -> None:
        body = {
            "uid": pod.uid,
            "name": pod.name,
            "namespace": pod.namespace,
            "serviceAccount": pod.service_account,
            "netns": str(NETNS_RUN_DIR / pod.netns),
            "ip": pod.ip,
            "prefixLen": topology.POD_PREFIX,
            "gateway": topology.pod_gateway(pod.node_index),
            "mesh": pod.mesh,
        }
        status, answer = await self._call(pod.node, "POST", "/v1/pods", body)
        if status == 200:
            return
        if status == 503 or status >= 500 or status == 0:
            raise NotReady(f"agent on {pod.node}: {answer}")
        raise PlumbingFailed(f"agent on {pod.node} refused pod {pod.name}: {status} {answer}")

    async def remove(self, pod: PodNet) -> None:
        status, answer = await self._call(pod.node, "DELETE", f"/v1/pods/{pod.uid}", None)
        if status not in (200, 404):
            raise NotReady(f"agent on {pod.node}: {status} {answer}")

    async def ready(self, node: str) -> bool:
        status, _ = await self._call(node, "GET", "/v1/pods", None)
        return status == 200

    async def _call(self, node: str, method: str, path: str, body: Any) -> tuple[int, str]:
        try:
            async with self._session(node).request(method, f"http://agent{path}", json=body) as resp:
                return resp.status, (await resp.text()).strip()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return 0, f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


class DirectPodNetwork:
    """Stand-in for the agent when none runs: veth into the node bridge, address, default route. No mesh."""

    async def add(self, pod: PodNet) -> None:
        if pod.mesh:
            raise PlumbingFailed(f"pod {pod.name} is in the mesh, which needs the node agent (agent.enabled)")
        veth = topology.pod_veth(pod.uid)
        node_ns = pod.node_netns
        await topology.ip_batch(None, [f"link add {veth} netns {node_ns} type veth peer name eth0 netns {pod.netns}"])
        await asyncio.gather(
            topology.ip_batch(node_ns, [f"link set {veth} master {topology.NODE_BRIDGE}", f"link set {veth} up"]),
            topology.ip_batch(
                pod.netns,
                [
                    "link set lo up",
                    f"addr add {pod.ip}/{topology.POD_PREFIX} dev eth0",
                    "link set eth0 up",
                    f"route add default via {topology.pod_gateway(pod.node_index)}",
                ],
            ),
        )

    async def remove(self, pod: PodNet) -> None:
        try:
            await topology.ip_batch(pod.node_netns, [f"link del {topology.pod_veth(pod.uid)}"])
        except topology.CommandFailed:
            pass  # already gone with its namespace

    async def close(self) -> None:
        return None

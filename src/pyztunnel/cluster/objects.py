"""The objects the controller keeps — nodes, pods and the desired state — in one store that each of its parts reads.

This is the API server's store of the local cluster: the parts of the controller (bootstrap, kubelet, reconciler,
publisher) share it and never each other's internals. A pod owns its own record (the JSON of `GET /v1/state`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyztunnel.cluster import podnet, render, topology, waypoints
from pyztunnel.cluster.control_plane import ControlPlane
from pyztunnel.cluster.ipam import NodeIpam
from pyztunnel.cluster.layout import Layout
from pyztunnel.cluster.process import Supervised
from pyztunnel.cluster.spec import ClusterSpec, Labels, ProxySpec, ReadinessProbe

DEPLOYMENT = "Deployment"
DAEMONSET = "DaemonSet"


@dataclass(eq=False)
class Node:
    name: str
    index: int
    labels: Labels
    netns: str
    run_dir: Path
    ipam: NodeIpam
    cordoned: bool = False
    fd: int = -1  # the node netns, open while the cluster runs (probes and the CA check connect from inside it)
    agent: Supervised | None = None
    agent_ready: bool = False

    @property
    def ip(self) -> str:
        return topology.node_ip(self.index)


@dataclass(eq=False)
class Pod:
    name: str
    uid: str
    namespace: str
    owner_kind: str  # DEPLOYMENT | DAEMONSET
    owner: str
    node: Node
    ip: str
    netns: str
    mesh: bool
    service_account: str
    labels: Labels
    grace: int
    probe: ReadinessProbe | None
    command: list[str]
    env: dict[str, str]
    files: dict[str, str]
    version: str | None = None
    phase: str = "Pending"  # Pending → Running → Terminating
    ready: bool = False
    message: str = ""
    generation: int = 0  # the change that added it; its files are published once this generation is
    created_at: float = field(default_factory=time.time)
    proc: Supervised | None = None
    task: asyncio.Task[None] | None = None
    terminating: asyncio.Task[None] | None = None
    deleted: asyncio.Event = field(default_factory=asyncio.Event)
    config_version: str | None = None  # a proxy's: the workloads.yaml version it has loaded (its readiness header)
    stage: str = ""  # the termination step under way (for the 504 of a stuck `?wait=1`)
    stage_since: float = 0.0

    @property
    def is_proxy(self) -> bool:
        return self.owner_kind == DAEMONSET

    @property
    def live(self) -> bool:
        return self.phase != "Terminating"

    def at_stage(self, stage: str) -> None:
        self.stage, self.stage_since = stage, time.monotonic()

    def where(self) -> str:
        if not self.stage:
            return "its termination has not started"
        return f"stuck in {self.stage} for {time.monotonic() - self.stage_since:.1f}s"

    @property
    def net(self) -> podnet.PodNet:
        return podnet.PodNet(
            uid=self.uid,
            name=self.name,
            namespace=self.namespace,
            service_account=self.service_account,
            netns=self.netns,
            ip=self.ip,
            node=self.node.name,
            node_index=self.node.index,
            node_netns=self.node.netns,
            mesh=self.mesh,
        )

    def record(self) -> dict[str, Any]:
        proc = self.proc
        return {
            "name": self.name,
            "uid": self.uid,
            "namespace": self.namespace,
            "owner": {"kind": self.owner_kind, "name": self.owner},
            "node": self.node.name,
            "ip": self.ip,
            "netns": self.netns,
            "mesh": self.mesh,
            "serviceAccount": self.service_account,
            "labels": self.labels,
            "phase": self.phase,
            "ready": self.ready,
            "restarts": proc.restarts if proc else 0,
            "pid": proc.pid if proc and proc.running else None,
            "version": self.version,
            "terminationGracePeriodSeconds": self.grace,
            "createdAt": self.created_at,
            "message": self.message,
            **({"configVersion": self.config_version} if self.is_proxy else {}),
        }


class TerminationStuck(Exception):
    """A pod's termination had a step that did not finish in its bound (the pod is removed all the same)."""


class PublishStuck(Exception):
    """The cluster files were not rewritten in time (the publisher is stuck or gone)."""


class Store:
    """The cluster as the controller knows it: what the spec asks for (replicas, the DaemonSet template) and what
    runs (nodes, pods, the CA). `phase` is starting → running (or failed) → stopping."""

    def __init__(self, name: str, layout: Layout, spec: ClusterSpec) -> None:
        self.name = name
        self.layout = layout
        self.spec = spec
        self.daemonset: ProxySpec = spec.proxy.model_copy(deep=True)
        self.replicas = {d.name: d.replicas for d in spec.deployments}
        self.nodes = {
            n.name: Node(
                name=n.name,
                index=i,
                labels=dict(n.labels),
                netns=topology.node_ns(name, n.name),
                run_dir=layout.node_dir(n.name),
                ipam=NodeIpam(i),
            )
            for i, n in enumerate(spec.nodes, start=1)
        }
        self.services = [
            render.ServiceView(
                name=s.name,
                namespace=s.namespace,
                vip=topology.vip(i),
                ports=tuple((p.port, p.target) for p in s.ports),
                selector=dict(s.selector),
                **waypoints.view_fields(spec, s),
            )
            for i, s in enumerate(spec.services)
        ]
        self.pods: dict[str, Pod] = {}
        self.phase = "starting"
        self.error: str | None = None
        self.ca: Supervised | None = None
        self.ca_ready = False
        self.control_plane: ControlPlane | None = None  # the proxies' delta ADS (cluster/control_plane.py)
        self.stop_requested = asyncio.Event()

    @property
    def active(self) -> bool:
        """Pods may still be created (not failed, not shutting down)."""
        return self.phase in ("starting", "running") and not self.stop_requested.is_set()

    def proxies(self, node: Node | None = None) -> list[Pod]:
        return [p for p in self.pods.values() if p.is_proxy and (node is None or p.node is node)]

    def app_pods(self, deployment: str | None = None) -> list[Pod]:
        return [p for p in self.pods.values() if not p.is_proxy and (deployment is None or p.owner == deployment)]

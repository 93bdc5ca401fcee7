"""The state publisher: on every change, the cluster's files — each node's service DNAT (`ip pzt-svc`),
`workloads.yaml` (the CA's node authorization; LOCAL_XDS_PATH form) and `state.json` — and whether the cluster is `ready`.

Every part of the controller notes a change with `changed()`, which returns its generation; `published(generation)`
waits until the files reflect it (a mesh pod is published before it is plumbed; a deleted pod leaves the endpoints
before it is signalled). One writer task does the writing, so an older nft ruleset never lands after a newer one.

The same document goes to the control plane (`store.control_plane`, the proxies' delta ADS), which pushes what changed.

Ready means the proxies route what the cluster reports: the last document published says of every pod what the store
says now (a pod that just became ready is not an endpoint anywhere until it says Healthy), and every ready proxy holds
it: its XDS stream ACKed the control plane's current generation; a proxy on the file instead names the version it
loaded in its readiness answer (`X-Pyztunnel-Config`), and one that does not (ztunnel on the file) is given its poll
interval plus a margin after the last write (docs/cluster.md, "How it works").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.cluster import render, topology
from pyztunnel.cluster.objects import Pod, PublishStuck, Store
from pyztunnel.settings import Duration
from pyztunnel.workloads.watch import config_version

_log = logging.getLogger("pyztunnel.cluster")

PROXY_CONFIG_POLL_ENV = "PYZTUNNEL_CONFIG_POLL"
PROXY_CONFIG_POLL_DEFAULT = "0.5s"
SETTLE_MARGIN = 0.25


class Publisher:
    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock  # for the timer of proxies that do not report their config version
        self._dirty = asyncio.Event()
        self._generation = 0
        self._published = 0
        self._published_cond = asyncio.Condition()
        self._write_lock = asyncio.Lock()
        self._published_nft: dict[str, str] = {}
        self._published_workloads = ""
        self._workloads_version = ""
        self._workloads_written_at = 0.0
        self._written_views: list[render.WorkloadView] | None = None  # what the workloads.yaml last written says
        self._task: asyncio.Task[None] | None = None

    @property
    def workloads_version(self) -> str:
        """The version of the workloads.yaml last written (what every proxy must report before `ready`)."""
        return self._workloads_version

    @property
    def workloads_written_at(self) -> float:
        return self._workloads_written_at

    # ----- changes and their publication -----------------------------------------------------------------------

    def changed(self) -> int:
        """Note a change; returns its generation (see `published`)."""
        self._generation += 1
        self._dirty.set()
        return self._generation

    def start(self) -> None:
        self._task = spawn(self.run(), "cluster-publish")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            generation = self._generation
            try:
                await self.write_files()
            except Exception:
                _log.exception("cannot publish the cluster state")
            async with self._published_cond:
                self._published = generation
                self._published_cond.notify_all()

    async def published(self, generation: int, within: float | None = None) -> None:
        """Wait until the files reflect at least this generation of changes; PublishStuck after `within` seconds
        or when the publisher is gone."""
        task = self._task
        if task is not None and task.done() and self._published < generation:
            raise PublishStuck(f"the cluster files are not written any more (publisher ended: {task!r})")
        try:
            async with asyncio.timeout(within):
                async with self._published_cond:
                    await self._published_cond.wait_for(lambda: self._published >= generation)
        except TimeoutError:
            raise PublishStuck(f"the cluster files were not rewritten within {within:g}s") from None

    async def write_files(self) -> None:
        # One writer at a time: an nft apply awaits, and an older ruleset must never land after a newer one.
        async with self._write_lock:
            await self._write_files_locked()

    async def _write_files_locked(self) -> None:
        store = self.store
        views = self.workload_views()
        rules = [
            topology.ServiceRule(s.namespace, s.name, s.vip, port, target, render.endpoints(s, views))
            for s in store.services
            for port, target in s.ports
        ]
        if store.phase != "stopping" and store.nodes and all(n.fd >= 0 for n in store.nodes.values()):
            for node in store.nodes.values():
                ruleset = topology.render_services(rules, node.index)
                if self._published_nft.get(node.name) != ruleset:
                    await topology.apply_nft(node.netns, ruleset)
                    self._published_nft[node.name] = ruleset
        document = render.render_workloads(views, store.services, store.spec.ca.trustDomain, store.spec.policies)
        if store.control_plane is not None:
            store.control_plane.publish(document)  # pushes what changed to every proxy
        workloads = yaml.safe_dump(document, sort_keys=False)
        if workloads != self._published_workloads:
            atomic_write(store.layout.workloads, workloads)
            self._published_workloads = workloads
            self._workloads_version = config_version(workloads.encode())
            self._workloads_written_at = self.clock()
            asyncio.get_running_loop().call_later(self.settle, self.changed)  # `ready` may flip then
        self._written_views = views
        atomic_write(store.layout.state, json.dumps(self.snapshot(), indent=2) + "\n")

    def workload_views(self) -> list[render.WorkloadView]:
        return [
            render.WorkloadView(p.name, p.namespace, p.service_account, p.ip, p.node.name, p.mesh, p.ready, p.labels)
            for p in self.store.app_pods()
        ]

    # ----- the state document ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """`GET /v1/state` and state.json (docs/cluster.md, "State")."""
        store = self.store
        views = self.workload_views()
        nodes = []
        for n in store.nodes.values():
            mine = [p for p in store.proxies(n) if p.live]
            nodes.append(
                {
                    "name": n.name,
                    "index": n.index,
                    "ip": n.ip,
                    "podCidr": topology.pod_cidr(n.index),
                    "netns": n.netns,
                    "runDir": str(n.run_dir),
                    "cordoned": n.cordoned,
                    "labels": n.labels,
                    "agent": {
                        "enabled": n.agent is not None,
                        "pid": n.agent.pid if n.agent and n.agent.running else None,
                        "ready": n.agent_ready,
                        "restarts": n.agent.restarts if n.agent else 0,
                    },
                    "proxies": [p.name for p in mine],
                    "proxyVersion": ",".join(sorted({p.version or "" for p in mine})) or None,
                }
            )
        deployments = []
        for dep in store.spec.deployments:
            mine = [p for p in store.app_pods(dep.name) if p.live]
            deployments.append(
                {
                    "name": dep.name,
                    "namespace": dep.namespace,
                    "replicas": store.replicas[dep.name],
                    "readyReplicas": sum(p.ready for p in mine),
                    "mesh": dep.mesh,
                }
            )
        services = [
            {
                "name": s.name,
                "namespace": s.namespace,
                "hostname": s.hostname,
                "vip": s.vip,
                "ports": [{"port": port, "targetPort": target} for port, target in s.ports],
                "selector": s.selector,
                "endpoints": list(render.endpoints(s, views)),
            }
            for s in store.services
        ]
        ca = store.ca
        return {
            "name": store.name,
            "stateDir": str(store.layout.root),
            "phase": store.phase,
            "error": store.error,
            "ready": self.is_ready(),
            "workloadsVersion": self._workloads_version,
            "controlPlane": store.control_plane.status() if store.control_plane is not None else None,
            "controllerPid": os.getpid(),
            "ca": {
                "enabled": ca is not None,
                "address": f"{topology.FABRIC_IP}:{topology.CA_PORT}",
                "pid": ca.pid if ca and ca.running else None,
                "ready": store.ca_ready,
            },
            "nodes": nodes,
            "deployments": deployments,
            "pods": [p.record() for p in store.app_pods()],
            "proxies": [self._proxy_record(p) for p in store.proxies()],
            "services": services,
            "daemonset": store.daemonset.model_dump(),
        }

    def _proxy_record(self, proxy: Pod) -> dict[str, Any]:
        record = proxy.record()
        plane = self.store.control_plane
        stream = plane.stream_of(proxy.name, proxy.node.name) if plane is not None else None
        if stream is not None:  # what it ACKed over XDS (cluster/control_plane.py)
            record["xds"] = {"current": stream.current(), "acked": min(stream.synced(t) for t in stream.catalog.types)}
        return record

    # ----- readiness -------------------------------------------------------------------------------------------

    @property
    def settle(self) -> float:
        """How long a proxy that does not report its config version is given to have loaded a new file."""
        try:
            poll = Duration.parse(self.store.daemonset.env.get(PROXY_CONFIG_POLL_ENV, PROXY_CONFIG_POLL_DEFAULT))
        except ValueError:
            poll = Duration.parse(PROXY_CONFIG_POLL_DEFAULT)
        return float(poll) + SETTLE_MARGIN

    def has_current_config(self, proxy: Pod) -> bool:
        """The proxy holds the latest config: it ACKed the control plane's current generation over XDS; or, a proxy
        configured with workloads.yaml instead, it says it loaded the last one in its readiness header; a proxy without
        that header (ztunnel itself on the file) is given its poll interval plus a margin to have seen the change."""
        plane = self.store.control_plane
        acked = plane.proxy_current(proxy.name, proxy.node.name) if plane is not None else None
        if acked is not None:
            return acked
        if proxy.config_version is not None:
            return proxy.config_version == self._workloads_version
        return self.clock() - self._workloads_written_at >= self.settle

    def is_ready(self) -> bool:
        store = self.store
        if store.phase != "running":
            return False
        if self.workload_views() != self._written_views:
            return False  # a change (a pod ready, gone) the file does not say yet: no proxy can route by it
        if store.spec.agent.enabled and not all(n.agent_ready for n in store.nodes.values()):
            return False
        if store.daemonset.enabled:
            for n in store.nodes.values():
                proxies = [p for p in store.proxies(n) if p.ready]
                if not proxies or not all(self.has_current_config(p) for p in proxies):
                    return False
        for dep in store.spec.deployments:
            if sum(p.ready for p in store.app_pods(dep.name)) < store.replicas[dep.name]:
                return False
        return True


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file so readers see the old or the new content, never a mix (rename over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)

"""The cluster controller: kube-apiserver, scheduler, kubelets, kube-proxy and the DaemonSet controller of one machine.

A thin composition of its parts, which share one store (`objects.Store`) and never each other's internals:

- `bootstrap.Bootstrap`: the fabric and node namespaces, the CA, one agent per node;
- `kubelet.Kubelet`: runs a pod (plumbing through the agent, its process, readiness probes), terminates it;
- `reconciler.Reconciler`: deployments → pods, scheduling, one proxy per node from the DaemonSet template;
- `publisher.Publisher`: service DNAT, `workloads.yaml`, `state.json`, and `ready`;
- `api`: the controller API on `controller.sock`, served over the operations below (`api.ClusterOps`).

`run()` tells the story of a cluster's life: serve, bootstrap (fabric, CA and agents, then pods, then proxies), run
until asked to stop, terminate every pod with its grace period, stop the components.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from pyztunnel.aio import cancel_and_wait
from pyztunnel.cluster import api, podnet, topology
from pyztunnel.cluster.bootstrap import Bootstrap
from pyztunnel.cluster.control_plane import ControlPlane
from pyztunnel.cluster.kubelet import PUBLISH_TIMEOUT, Kubelet
from pyztunnel.cluster.layout import Layout
from pyztunnel.cluster.objects import Node, Pod, Store
from pyztunnel.cluster.publisher import Publisher
from pyztunnel.cluster.reconciler import Reconciler
from pyztunnel.cluster.spec import ClusterSpec
from pyztunnel.cluster.spec import parse as parse_spec

_log = logging.getLogger("pyztunnel.cluster")


class Controller:
    """Implements `api.ClusterOps`; each operation is one call into the part that owns it."""

    def __init__(self, name: str, layout: Layout, spec: ClusterSpec, network: podnet.PodNetwork | None = None) -> None:
        self.store = Store(name, layout, spec)
        agents = None
        if spec.agent.enabled:
            agents = podnet.AgentPodNetwork({n.name: n.run_dir / "cni.sock" for n in self.store.nodes.values()})
        self.network: podnet.PodNetwork = network or agents or podnet.DirectPodNetwork()
        self.publisher = Publisher(self.store)
        self.bootstrap = Bootstrap(self.store, self.publisher, agents)
        self.kubelet = Kubelet(self.store, self.publisher, self.network, on_gone=self._pod_gone)
        self.reconciler = Reconciler(self.store, self.publisher, self.kubelet)

    # ----- a cluster's life ------------------------------------------------------------------------------------

    async def run(self) -> None:
        store = self.store
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, store.stop_requested.set)
        store.layout.pid_file.write_text(f"{os.getpid()}\n")
        runner = await api.serve(self, store.layout.socket)
        self.publisher.start()
        try:
            await self._bootstrap()
            store.phase = "running"
            _log.info("cluster %s: bootstrap done", store.name)
        except Exception as exc:
            store.phase = "failed"
            store.error = str(exc) or type(exc).__name__
            _log.exception("cluster %s failed to start", store.name)
        self.publisher.changed()
        try:
            await store.stop_requested.wait()
        finally:
            store.phase = "stopping"
            await self._shutdown()
            await runner.cleanup()
            await self.publisher.stop()
            await self.publisher.write_files()

    async def _bootstrap(self) -> None:
        await self.bootstrap.build_fabric()
        await self.publisher.write_files()
        # Pods start as soon as the agents serve; proxies also wait for the CA (their first CSR must not fail).
        ca_ready = self.bootstrap.start_ca()
        try:
            await self.bootstrap.start_agents()
            self.reconciler.allow_pods()
            if ca_ready is not None:
                await ca_ready
        finally:
            if ca_ready is not None:
                await cancel_and_wait(ca_ready)
        await self._start_control_plane()
        self.reconciler.allow_proxies()

    async def _start_control_plane(self) -> None:
        """After the CA (the ADS's certificate comes from its root), before any proxy (they take their config here)."""
        store = self.store
        if not store.daemonset.enabled:
            return
        plane = ControlPlane(
            store.layout.ca_dir,
            store.spec.ca.trustDomain,
            topology.FABRIC_IP,
            topology.fabric_ns(store.name),
            self.publisher.changed,
        )
        await plane.start()
        store.control_plane = plane
        await self.publisher.published(self.publisher.changed(), PUBLISH_TIMEOUT)

    async def _shutdown(self) -> None:
        pods = list(self.store.pods.values())
        await asyncio.gather(*(self.kubelet.terminate(p, p.grace) for p in pods), return_exceptions=True)
        await self.bootstrap.stop()
        await self.network.close()
        if self.store.control_plane is not None:
            await self.store.control_plane.close()

    def _pod_gone(self) -> None:
        self.reconciler.reconcile()  # a deleted pod's owner replaces it

    # ----- api.ClusterOps --------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return self.publisher.snapshot()

    def pod(self, name: str) -> Pod | None:
        return self.store.pods.get(name)

    def node(self, name: str) -> Node | None:
        return self.store.nodes.get(name)

    def has_deployment(self, name: str) -> bool:
        return name in self.store.replicas

    def scale(self, deployment: str, replicas: int) -> None:
        self.reconciler.scale(deployment, replicas)

    def cordon(self, node: Node, cordoned: bool) -> None:
        self.reconciler.cordon(node, cordoned)

    def delete(self, pod: Pod, grace: float) -> asyncio.Task[None]:
        return self.reconciler.delete(pod, grace)

    def termination_limit(self, grace: float) -> float:
        return self.kubelet.termination_limit(grace)

    def daemonset(self) -> dict[str, Any]:
        return self.store.daemonset.model_dump()

    def create_proxy(self, node: Node, version: str | None) -> Pod:
        return self.reconciler.create_proxy(node, version or self.store.daemonset.version)

    def update_daemonset(self, patch: dict[str, Any], replace: bool) -> dict[str, Any]:
        return self.reconciler.update_daemonset(patch, replace=replace).model_dump()

    async def set_policies(self, policies: list[dict[str, Any]]) -> None:
        self.store.spec.policies[:] = policies
        await self.publisher.published(self.publisher.changed(), PUBLISH_TIMEOUT)

    def request_stop(self) -> None:
        self.store.stop_requested.set()


def load_spec(layout: Layout) -> ClusterSpec:
    return parse_spec(layout.spec.read_text(), str(layout.spec)).spec

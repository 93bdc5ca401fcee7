"""An in-memory `ClusterBackend` for testing strategies: deployments reschedule evicted pods, proxies of a "broken"
version never become ready, every call is logged, the number of ready proxies per node is tracked after every change,
and the run can be interrupted (as by kill -9) at any call, before or after its effect. Like the local cluster it
does not roll by itself: proxies are replaced through the same client-side primitives (surge.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from typing import Any

from pyztunnel.rollout.backend import (
    BackendError,
    EvictionBlocked,
    Node,
    Pod,
    ProxyPod,
    RolloutView,
    StateStore,
    Template,
    TemplateChange,
)
from pyztunnel.rollout.store import MemoryState
from pyztunnel.rollout.surge import replace_on_node


class Interrupted(BaseException):
    """The rollout process died here (BaseException: no strategy code may catch it)."""


@dataclasses.dataclass
class _Proxy:
    name: str
    node: str
    version: str
    ready: bool = False
    created: int = 0
    restarts: int = 0
    metrics: str = ""


class FakeCluster:
    rolls_itself = False

    def __init__(self, nodes: list[str], pods: dict[str, int] | None = None, version: str = "v1") -> None:
        self.schedulable = dict.fromkeys(nodes, True)
        self.proxy_pods: dict[str, _Proxy] = {}
        self.pods: dict[str, Pod] = {}
        self.calls: list[tuple[str, str]] = []
        self.min_ready: dict[str, int] = {}
        self.broken_versions: set[str] = set()
        self.failing_evictions: set[str] = set()
        self.blocked_evictions: dict[str, int] = {}  # pod name → how many attempts answer 429 first
        self.current = Template(version, "RollingUpdate", 30, {"version": version, "env": {}})
        self.pinned: set[str] = set()  # deployments whose pods are pinned to their node
        self.unscheduled: list[Pod] = []
        self.interrupt_at: int | None = None  # interrupt the call with this index…
        self.interrupt_after_effect = False  # …before (False) or after (True) it took effect
        self.auto_replace = False  # as the local controller: a node left without a proxy gets one from the template
        self.state: StateStore = MemoryState()
        self.metrics_for: dict[str, str] = {}  # version → the metrics text its proxies expose
        self._seq = itertools.count(1)
        self.max_surging = 0  # most nodes with two proxies at the same time
        self.max_unavailable = 0  # most nodes without a ready proxy at the same time
        for node in nodes:
            self._add_proxy(node, version, ready=True)
        for deployment, replicas in (pods or {}).items():
            for i in range(replicas):
                self._schedule(deployment, nodes[i % len(nodes)])
        self._track()

    # Helpers for tests --------------------------------------------------------------------------------------------

    def ready_proxies(self, node: str) -> list[_Proxy]:
        return [p for p in self.proxy_pods.values() if p.node == node and p.ready]

    def versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.schedulable}
        for p in self.proxy_pods.values():
            out[p.node].append(p.version)
        return out

    def _add_proxy(self, node: str, version: str, ready: bool = False) -> _Proxy:
        seq = next(self._seq)
        proxy = _Proxy(f"ztunnel-{node}-{seq}", node, version, ready, seq)
        self.proxy_pods[proxy.name] = proxy
        return proxy

    def _schedule(self, deployment: str, node: str, grace: float = 30.0) -> Pod:
        assert self.schedulable[node], f"scheduled onto cordoned node {node}"
        pod = Pod(f"{deployment}-{next(self._seq)}", node, grace, f"Deployment/{deployment}")
        self.pods[pod.name] = pod
        return pod

    def _track(self) -> None:
        for node in self.schedulable:
            n = len(self.ready_proxies(node))
            self.min_ready[node] = min(self.min_ready.get(node, n), n)
        surging = sum(1 for node in self.schedulable if sum(p.node == node for p in self.proxy_pods.values()) > 1)
        missing = sum(1 for node in self.schedulable if not self.ready_proxies(node))
        self.max_surging = max(self.max_surging, surging)
        self.max_unavailable = max(self.max_unavailable, missing)

    async def _call(self, op: str, arg: str) -> bool:
        """Log the call; interrupt before it if asked. Returns whether to interrupt after the effect."""
        await asyncio.sleep(0)  # let concurrent node tasks interleave, as real calls would
        index = len(self.calls)
        self.calls.append((op, arg))
        if self.interrupt_at == index and not self.interrupt_after_effect:
            raise Interrupted(f"{op} {arg}")
        return self.interrupt_at == index

    def _after(self, interrupt: bool, what: str) -> None:
        self._track()
        if interrupt:
            raise Interrupted(what)

    def _view(self, p: _Proxy) -> ProxyPod:
        current = p.version == self.current.version
        return ProxyPod(p.name, p.node, p.version, p.ready, p.version, current, p.restarts, created=float(p.created))

    # ClusterBackend -----------------------------------------------------------------------------------------------

    async def nodes(self) -> list[Node]:
        return [Node(n, s) for n, s in self.schedulable.items()]

    async def cordon(self, node: str) -> None:
        after = await self._call("cordon", node)
        self.schedulable[node] = False
        self._after(after, "cordon")

    async def uncordon(self, node: str) -> None:
        after = await self._call("uncordon", node)
        self.schedulable[node] = True
        for pod in [p for p in self.unscheduled if p.node == node]:
            self.unscheduled.remove(pod)
            self._schedule((pod.owner or pod.name).split("/")[-1], node, pod.grace_seconds)
        self._after(after, "uncordon")

    async def pods_on(self, node: str) -> list[Pod]:
        return sorted((p for p in self.pods.values() if p.node == node), key=lambda p: p.name)

    async def evict(self, pod: Pod, grace_seconds: int | None = None) -> None:
        after = await self._call("evict", pod.name)
        if pod.name in self.failing_evictions:
            raise BackendError(f"pod {pod.name} refused eviction")
        if self.blocked_evictions.get(pod.name, 0) > 0:
            self.blocked_evictions[pod.name] -= 1
            raise EvictionBlocked("Cannot evict pod as it would violate the pod's disruption budget.")
        if pod.name in self.pods:
            del self.pods[pod.name]
            deployment = (pod.owner or pod.name).split("/")[-1]
            if deployment in self.pinned:
                # Pinned to its node (nodeName): it can only come back there, once the node is uncordoned.
                self.unscheduled.append(pod)
                self._after(after, "evict")
                return
            targets = [n for n, ok in self.schedulable.items() if ok]
            if not targets:
                raise BackendError(f"no schedulable node for {deployment}")
            load = {n: sum(p.node == n for p in self.pods.values()) for n in targets}
            self._schedule(deployment, min(targets, key=lambda n: (load[n], n)), pod.grace_seconds)
        self._after(after, "evict")

    async def wait_gone(self, pod: Pod, within: float) -> None:
        if pod.name in self.pods:
            raise BackendError(f"pod {pod.name} is not gone")

    async def proxies(self, node: str | None = None) -> list[ProxyPod]:
        return [self._view(p) for p in self.proxy_pods.values() if node is None or p.node == node]

    async def replace_proxy(self, node: str, *, surge: bool, within: float) -> ProxyPod:
        return await replace_on_node(self, node, surge=surge, within=within, describe=self.describe)

    async def describe(self, proxy: ProxyPod) -> str:
        return f"{proxy.restarts} restarts, never ready"

    async def scrape(self, proxy: ProxyPod) -> str:
        if proxy.name not in self.proxy_pods:
            raise BackendError(f"no proxy {proxy.name}")
        return self.metrics_for.get(proxy.version, "")

    async def template(self) -> Template:
        return self.current

    async def set_template(self, change: TemplateChange) -> Template:
        version = change.version or self.current.version
        body: dict[str, Any] = {**self.current.body, "version": version}
        grace = self.current.grace_seconds if change.grace_seconds is None else change.grace_seconds
        self.current = Template(version, change.strategy or self.current.strategy, grace, body)
        return self.current

    async def restore_template(self, template: Template) -> Template:
        self.current = template
        return template

    async def history(self) -> list[Template]:
        return []

    def watch_rollout(self) -> AsyncIterator[RolloutView]:
        raise BackendError("the fake cluster does not roll by itself")

    # The client-side DaemonSet's primitives (surge.py) ------------------------------------------------------------

    async def create_proxy(self, node: str) -> ProxyPod:
        after = await self._call("create_proxy", f"{node}:{self.current.version}")
        proxy = self._add_proxy(node, self.current.version)
        self._after(after, "create_proxy")
        return self._view(proxy)

    async def delete_proxy(self, name: str) -> None:
        after = await self._call("delete_proxy", name)
        gone = self.proxy_pods.pop(name, None)
        if self.auto_replace and gone is not None and not any(p.node == gone.node for p in self.proxy_pods.values()):
            self._add_proxy(gone.node, self.current.version)
        self._after(after, "delete_proxy")

    async def wait_proxy_ready(self, name: str, within: float) -> bool:
        after = await self._call("wait_proxy_ready", name)
        proxy = self.proxy_pods.get(name)
        ok = proxy is not None and proxy.version not in self.broken_versions
        if proxy is not None and ok:
            proxy.ready = True
        self._after(after, "wait_proxy_ready")
        return ok


# A stand-in proxy for rollouts on the real local cluster: it answers readiness (:15021) and metrics (:15020), exits on
# SIGTERM; with PYZTUNNEL_VERSION=broken it never becomes ready; with a version starting with "failing" (or
# STANDIN_FAILING_CONNECTIONS=N) its metrics count 5 (N) more failed connections at every scrape: a proxy whose
# connections fail, which a canary must halt on. Used by the rollout
# benchmark and system tests, so the rollout logic is measured and checked apart from the proxy itself.
STAND_IN_PROXY = """
import http.server, os, signal, sys, threading, time
if os.environ.get("PYZTUNNEL_VERSION") == "broken":
    while True:
        time.sleep(3600)
FAILING = int(os.environ.get("STANDIN_FAILING_CONNECTIONS", "0"))
if os.environ.get("PYZTUNNEL_VERSION", "").startswith("failing"):
    FAILING = 5
scrapes = 0
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global scrapes
        if self.server.server_port == 15020 and self.path == "/metrics":
            scrapes += 1
            body = (
                "# TYPE istio_tcp_connections_failed counter\\n"
                f'istio_tcp_connections_failed_total{{reporter="source"}} {FAILING * scrapes}\\n'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200 if self.path == "/healthz/ready" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
metrics = http.server.HTTPServer(("0.0.0.0", 15020), Handler)
threading.Thread(target=metrics.serve_forever, daemon=True).start()
http.server.HTTPServer(("0.0.0.0", 15021), Handler).serve_forever()
"""

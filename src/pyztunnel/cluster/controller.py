"""The cluster controller: kube-apiserver, scheduler, kubelets, kube-proxy and the DaemonSet controller of one machine.

It builds the fabric, runs the CA and one agent per node, supervises every pod (own netns, own log, restart with
backoff, readiness probes from the node netns), keeps deployments at their replica count, renders service DNAT,
`workloads.yaml` and `state.json` whenever something changes, and serves the controller API on `controller.sock`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.cluster import podnet, probe, render, topology
from pyztunnel.cluster.ipam import NodeIpam
from pyztunnel.cluster.layout import Layout
from pyztunnel.cluster.process import CRASH_LOOP_RESTARTS, Supervised, pyztunnel_argv, tail
from pyztunnel.cluster.scheduling import Candidate, pick_node
from pyztunnel.cluster.spec import ClusterSpec, DeploymentSpec, Labels, ProxySpec, ReadinessProbe
from pyztunnel.cluster.spec import parse as parse_spec
from pyztunnel.netns import NETNS_RUN_DIR
from pyztunnel.observe.servers import CONFIG_VERSION_HEADER
from pyztunnel.settings import Duration
from pyztunnel.workloads.watch import config_version

_log = logging.getLogger("pyztunnel.cluster")

PROXY_NAMESPACE = "istio-system"
PROXY_APP = "ztunnel"
PROXY_READY_PORT = 15021
PROXY_READY_PATH = "/healthz/ready"
PLUMB_RETRY_FIRST = 0.05
PLUMB_RETRY_MAX = 1.0
COMPONENT_READY_TIMEOUT = 30.0
# The cluster is `ready` only once every proxy has loaded the last workloads.yaml (its readiness answer names the
# version it loaded), so a client sent through the gateway right after `cluster up` finds httpbin's endpoints healthy
# in every proxy. A proxy that does not name it (ztunnel) is given its poll interval plus this margin instead.
PROXY_CONFIG_POLL_ENV = "PYZTUNNEL_CONFIG_POLL"
PROXY_CONFIG_POLL_DEFAULT = "0.5s"
SETTLE_MARGIN = 0.25
# Bounds on each step of a pod's termination (docs/cluster.md, "Bounded waits"). A step that overruns is logged by
# name, the rest of the cleanup still runs, and `DELETE/evict ?wait=1` answers 504 naming the step.
TASK_STOP_TIMEOUT = 5.0  # the pod's supervising task (probe loop, plumbing retries) ends once cancelled
PUBLISH_TIMEOUT = 10.0  # workloads.yaml, nft DNAT and state.json rewritten
KILL_TIMEOUT = 5.0  # after SIGKILL, the process gone
UNPLUMB_TIMEOUT = 15.0  # the agent's DELETE (a pending Add's ZDS Ack, then a Del broadcast: 5 s each at most)
NETNS_DELETE_TIMEOUT = 10.0
# What a termination may take beyond the grace period: the sum of the bounds (KILL_TIMEOUT twice: after SIGKILL and
# for leftovers in the netns) and 2 s for the rest. Below rollout/local.py's EXTRA_S, so a rollout gets the 504.
TERMINATION_MARGIN = TASK_STOP_TIMEOUT + PUBLISH_TIMEOUT + 2 * KILL_TIMEOUT + UNPLUMB_TIMEOUT + NETNS_DELETE_TIMEOUT + 2


def random_suffix() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' pod-name alphabet
    return "".join(secrets.choice(alphabet) for _ in range(5))


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        filled = arg
        for key, value in values.items():
            filled = filled.replace("{" + key + "}", value)
        out.append(filled)
    return out


@dataclass(eq=False)
class Node:
    name: str
    index: int
    labels: Labels
    netns: str
    run_dir: Path
    ipam: NodeIpam
    cordoned: bool = False
    fd: int = -1
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
    owner_kind: str  # Deployment | DaemonSet
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
            **({"configVersion": self.config_version} if self.owner_kind == "DaemonSet" else {}),
        }


class TerminationStuck(Exception):
    """A pod's termination had a step that did not finish in its bound (the pod is removed all the same)."""


class PublishStuck(Exception):
    """The cluster files were not rewritten in time (the publisher is stuck or gone)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Controller:
    def __init__(self, name: str, layout: Layout, spec: ClusterSpec) -> None:
        self.name = name
        self.layout = layout
        self.spec = spec
        self.daemonset: ProxySpec = spec.proxy.model_copy(deep=True)
        self.replicas = {d.name: d.replicas for d in spec.deployments}
        self.nodes: dict[str, Node] = {}
        for i, n in enumerate(spec.nodes, start=1):
            self.nodes[n.name] = Node(
                name=n.name,
                index=i,
                labels=dict(n.labels),
                netns=topology.node_ns(name, n.name),
                run_dir=layout.node_dir(n.name),
                ipam=NodeIpam(i),
            )
        self.services = [
            render.ServiceView(
                name=s.name,
                namespace=s.namespace,
                vip=topology.vip(i),
                ports=tuple((p.port, p.target) for p in s.ports),
                selector=dict(s.selector),
            )
            for i, s in enumerate(spec.services)
        ]
        self.pods: dict[str, Pod] = {}
        self.phase = "starting"
        self.error: str | None = None
        self.ca: Supervised | None = None
        self.ca_ready = False
        self.fabric_fd = -1
        self.podnet: podnet.PodNetwork
        self.agent_api: podnet.AgentPodNetwork | None = None
        if spec.agent.enabled:
            self.agent_api = podnet.AgentPodNetwork({n.name: n.run_dir / "cni.sock" for n in self.nodes.values()})
            self.podnet = self.agent_api
        else:
            self.podnet = podnet.DirectPodNetwork()
        self.stop_requested = asyncio.Event()
        self._dirty = asyncio.Event()
        self._generation = 0
        self._published = 0
        self._published_cond = asyncio.Condition()
        self._write_lock = asyncio.Lock()
        self._published_nft: dict[str, str] = {}
        self._published_workloads = ""
        self._workloads_version = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._pods_allowed = False
        self._workloads_written_at = 0.0
        self._proxies_allowed = False
        self._publisher_task: asyncio.Task[None] | None = None

    # ----- lifecycle -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        self.layout.pid_file.write_text(f"{os.getpid()}\n")
        from pyztunnel.cluster.api import serve

        runner = await serve(self, self.layout.socket)
        self._publisher_task = spawn(self._publisher(), "cluster-publish")
        self._tasks.append(self._publisher_task)
        try:
            await self._bootstrap()
            self.phase = "running"
            _log.info("cluster %s: bootstrap done", self.name)
        except Exception as exc:
            self.phase = "failed"
            self.error = str(exc) or type(exc).__name__
            _log.exception("cluster %s failed to start", self.name)
        self.changed()
        try:
            await self.stop_requested.wait()
        finally:
            self.phase = "stopping"
            await self._shutdown()
            await runner.cleanup()
            await cancel_and_wait(*self._tasks)
            await self._write_files()

    async def _bootstrap(self) -> None:
        started = time.monotonic()
        nodes = [topology.NodeAddr(n.name, n.index) for n in self.nodes.values()]
        await topology.build_fabric(self.name, nodes)
        self.fabric_fd = os.open(NETNS_RUN_DIR / topology.fabric_ns(self.name), os.O_RDONLY | os.O_CLOEXEC)
        for node in self.nodes.values():
            node.fd = os.open(NETNS_RUN_DIR / node.netns, os.O_RDONLY | os.O_CLOEXEC)
            node.run_dir.mkdir(parents=True, exist_ok=True)
        _log.info("fabric and %d nodes built in %.2fs", len(nodes), time.monotonic() - started)
        await self._write_files()
        # Pods start as soon as the agents serve; proxies also wait for the CA (their first CSR must not fail).
        ca_ready: asyncio.Task[None] | None = None
        if self.spec.ca.enabled:
            self._write_tokens()
            self._start_ca()
            ca_ready = spawn(self._wait_ca(), "cluster-wait-ca")
        try:
            if self.spec.agent.enabled:
                for node in self.nodes.values():
                    self._start_agent(node)
                await asyncio.gather(*(self._wait_agent(node) for node in self.nodes.values()))
            self._pods_allowed = True
            self.reconcile()
            if ca_ready is not None:
                await ca_ready
        finally:
            if ca_ready is not None:
                await cancel_and_wait(ca_ready)
        self._proxies_allowed = True
        self.reconcile()

    async def _shutdown(self) -> None:
        deletions = [self.start_delete(p, p.grace) for p in list(self.pods.values())]
        await asyncio.gather(*deletions, return_exceptions=True)
        stops = [n.agent.stop(5) for n in self.nodes.values() if n.agent is not None]
        if self.ca is not None:
            stops.append(self.ca.stop(5))
        await asyncio.gather(*stops, return_exceptions=True)
        await self.podnet.close()
        for fd in [self.fabric_fd, *(n.fd for n in self.nodes.values())]:
            if fd >= 0:
                os.close(fd)

    # ----- CA and agents ---------------------------------------------------------------------------------------

    def _placeholders(self, node: Node | None = None) -> dict[str, str]:
        values = {
            "cluster": self.name,
            "state_dir": str(self.layout.root),
            "ca_dir": str(self.layout.ca_dir),
            "workloads": str(self.layout.workloads),
            "ca_address": f"{topology.FABRIC_IP}:{topology.CA_PORT}",
            "trust_domain": self.spec.ca.trustDomain,
        }
        if node is not None:
            values |= {"node": node.name, "run_dir": str(node.run_dir), "node_ip": node.ip}
            values["tcp_migrate_req"] = str(self.spec.agent.tcpMigrateReq)
        return values

    def _write_tokens(self) -> None:
        self.layout.ca_dir.mkdir(parents=True, exist_ok=True)
        tokens = {}
        for node in self.nodes.values():
            token = secrets.token_urlsafe(32)
            tokens[token] = node.name
            atomic_write(node.run_dir / "token", token + "\n", mode=0o600)
        atomic_write(self.layout.ca_dir / "tokens.json", json.dumps(tokens, indent=2) + "\n", mode=0o600)

    def _start_ca(self) -> None:
        argv = pyztunnel_argv(fill(list(self.spec.ca.command), self._placeholders()))
        env = {**os.environ, **self.spec.ca.env, "PYZTUNNEL_CLUSTER": self.name}
        self.ca = Supervised(
            "ca",
            argv,
            netns=topology.fabric_ns(self.name),
            env=env,
            log_path=self.layout.log("ca"),
            on_change=self.changed,
        )
        self.ca.start()

    async def _wait_ca(self) -> None:
        async def up() -> bool:
            self.ca_ready = await probe.tcp(self.fabric_fd, topology.FABRIC_IP, topology.CA_PORT, 1.0, source=None)
            return self.ca_ready

        assert self.ca is not None
        await self._wait_component("the CA", up, self.ca, self.layout.log("ca"))

    def _start_agent(self, node: Node) -> None:
        argv = pyztunnel_argv(fill(list(self.spec.agent.command), self._placeholders(node)))
        env = {
            **os.environ,
            **self.spec.agent.env,
            "PYZTUNNEL_CLUSTER": self.name,
            "NODE_NAME": node.name,
            "PYZTUNNEL_TCP_MIGRATE_REQ": "true" if self.spec.agent.tcpMigrateReq else "false",
        }
        node.agent = Supervised(
            f"agent-{node.name}",
            argv,
            netns=node.netns,
            env=env,
            log_path=self.layout.log(f"agent-{node.name}"),
            on_change=self.changed,
        )
        node.agent.start()

    async def _wait_agent(self, node: Node) -> None:
        async def up() -> bool:
            assert self.agent_api is not None
            node.agent_ready = await self.agent_api.ready(node.name)
            return node.agent_ready

        assert node.agent is not None
        await self._wait_component(f"the agent of {node.name}", up, node.agent, self.layout.log(f"agent-{node.name}"))

    async def _wait_component(self, what: str, check: Any, proc: Supervised, log_path: Path) -> None:
        deadline = time.monotonic() + COMPONENT_READY_TIMEOUT
        delay = 0.02
        while not await check():
            if proc.restarts >= CRASH_LOOP_RESTARTS or proc.failed_to_start:
                why = proc.failed_to_start or f"exited {proc.restarts} times"
                raise RuntimeError(f"{what} does not start ({why}); {tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not become ready in {COMPONENT_READY_TIMEOUT:.0f}s; {tail(log_path)}")
            await asyncio.sleep(delay)  # polling a condition with a deadline
            delay = min(delay * 2, 0.2)
        self.changed()

    # ----- reconciliation --------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring pods to the desired state: one proxy per node, each deployment at its replica count."""
        if self.phase not in ("starting", "running") or self.stop_requested.is_set():
            return
        if self.daemonset.enabled and self._proxies_allowed:
            for node in self.nodes.values():
                if not any(
                    p.owner_kind == "DaemonSet" and p.node is node and p.phase != "Terminating"
                    for p in self.pods.values()
                ):
                    self.create_proxy(node, self.daemonset.version)
        for dep in self.spec.deployments if self._pods_allowed else []:
            live = [
                p
                for p in self.pods.values()
                if p.owner_kind == "Deployment" and p.owner == dep.name and p.phase != "Terminating"
            ]
            want = self.replicas[dep.name]
            for _ in range(want - len(live)):
                if self._create_app_pod(dep) is None:
                    break
            if len(live) > want:
                # Scale down: not-ready pods first, then the newest (as the ReplicaSet controller ranks them).
                live.sort(key=lambda p: (p.ready, -p.created_at))
                for pod in live[: len(live) - want]:
                    self.start_delete(pod, pod.grace, replace=False)

    def _create_app_pod(self, dep: DeploymentSpec) -> Pod | None:
        same: dict[str, int] = {}
        total: dict[str, int] = {}
        for p in self.pods.values():
            if p.owner_kind != "Deployment" or p.phase == "Terminating":
                continue
            total[p.node.name] = total.get(p.node.name, 0) + 1
            if p.owner == dep.name:
                same[p.node.name] = same.get(p.node.name, 0) + 1
        candidates = [Candidate(n.name, not n.cordoned, n.labels) for n in self.nodes.values()]
        chosen = pick_node(
            candidates, same_deployment=same, total=total, node_selector=dep.nodeSelector, node_name=dep.nodeName
        )
        if chosen is None:
            _log.warning("deployment %s: no schedulable node fits; pod stays unscheduled", dep.name)
            return None
        name = f"{dep.name}-{random_suffix()}"
        while name in self.pods:
            name = f"{dep.name}-{random_suffix()}"
        return self._add_pod(
            name=name,
            namespace=dep.namespace,
            owner_kind="Deployment",
            owner=dep.name,
            node=self.nodes[chosen],
            mesh=dep.mesh,
            service_account=dep.serviceAccount,
            labels=dep.pod_labels,
            grace=dep.terminationGracePeriodSeconds,
            probe=dep.readinessProbe,
            command=list(dep.command),
            env=dict(dep.env),
            files=dict(dep.files),
        )

    def create_proxy(self, node: Node, version: str) -> Pod:
        ds = self.daemonset
        name = f"{PROXY_APP}-{random_suffix()}"
        while name in self.pods:
            name = f"{PROXY_APP}-{random_suffix()}"
        nd = node.run_dir
        env = {
            "INPOD_UDS": str(nd / "ztunnel.sock"),
            "LOCAL_XDS_PATH": str(self.layout.workloads),
            "CA_ADDRESS": f"https://{topology.FABRIC_IP}:{topology.CA_PORT}",
            "CA_ROOT_CA": str(self.layout.ca_dir / "root-cert.pem"),
            "AUTH_TOKEN": str(nd / "token"),
            "NODE_NAME": node.name,
            "TRUST_DOMAIN": self.spec.ca.trustDomain,
            "TERMINATION_GRACE_PERIOD_SECONDS": str(ds.terminationGracePeriodSeconds),
            "PYZTUNNEL_HANDOFF_SOCKET": str(nd / "handoff.sock"),
            "PYZTUNNEL_VERSION": version,
            **ds.env,
        }
        probe_spec = ReadinessProbe.model_validate(
            {"httpGet": {"path": PROXY_READY_PATH, "port": PROXY_READY_PORT}, "periodSeconds": 0.5}
        )
        return self._add_pod(
            name=name,
            namespace=PROXY_NAMESPACE,
            owner_kind="DaemonSet",
            owner=PROXY_APP,
            node=node,
            mesh=False,
            service_account=PROXY_APP,
            labels={"app": PROXY_APP},
            grace=ds.terminationGracePeriodSeconds,
            probe=probe_spec,
            command=list(ds.command),
            env=env,
            files={},
            version=version,
        )

    def _add_pod(self, **kw: Any) -> Pod:
        node: Node = kw["node"]
        uid = str(uuid.uuid4())
        pod = Pod(uid=uid, ip=node.ipam.allocate(), netns=topology.pod_ns(self.name, kw["name"]), **kw)
        self.pods[pod.name] = pod
        pod.generation = self.changed()
        pod.task = spawn(self._run_pod(pod), f"pod-{pod.name}")
        _log.info("pod %s scheduled on %s with IP %s", pod.name, node.name, pod.ip)
        return pod

    # ----- one pod ---------------------------------------------------------------------------------------------

    def _pod_env(self, pod: Pod) -> dict[str, str]:
        base = {
            **os.environ,
            **render.service_env(self.services),
            "POD_NAME": pod.name,
            "POD_NAMESPACE": pod.namespace,
            "POD_IP": pod.ip,
            "NODE_NAME": pod.node.name,
            "SERVICE_ACCOUNT": pod.service_account,
            "POD_DIR": str(self.layout.pod_dir(pod.name)),
            "PYZTUNNEL_CLUSTER": self.name,
            "PYZTUNNEL_CLUSTER_DIR": str(self.layout.root),
        }
        for key, value in pod.env.items():
            base[key] = render.expand(value, base)
        return base

    async def _run_pod(self, pod: Pod) -> None:
        try:
            # A mesh pod's proxy looks its workload up (and the CA checks its node) in workloads.yaml as soon as the
            # agent announces it: publish the pod before plumbing it.
            await self.published(pod.generation)
            await self._plumb(pod)
            env = self._pod_env(pod)
            pod_dir = self.layout.pod_dir(pod.name)
            pod_dir.mkdir(parents=True, exist_ok=True)
            for file_name, content in pod.files.items():
                atomic_write(pod_dir / file_name, render.expand(content, env))
            argv = pyztunnel_argv([render.expand(a, env) for a in pod.command])
            pod.proc = Supervised(
                pod.name,
                argv,
                netns=pod.netns,
                env=env,
                log_path=self.layout.log(pod.name),
                cwd=pod_dir,
                on_change=lambda: self._proc_changed(pod),
            )
            pod.phase = "Running"
            pod.proc.start()
            await self._probe_loop(pod)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            pod.message = str(exc)
            _log.error("pod %s: %s", pod.name, exc)
            self.changed()

    async def _plumb(self, pod: Pod) -> None:
        await topology.ip_batch(None, [f"netns add {pod.netns}"])
        delay = PLUMB_RETRY_FIRST
        while True:
            try:
                await self.podnet.add(pod.net)
                pod.message = ""
                return
            except podnet.NotReady as exc:
                if pod.message != str(exc):
                    pod.message = str(exc)
                    self.changed()
            await asyncio.sleep(delay)  # CNI-style retry with backoff, not synchronisation
            delay = min(delay * 2, PLUMB_RETRY_MAX)

    def _proc_changed(self, pod: Pod) -> None:
        if pod.proc is not None and not pod.proc.running and pod.ready:
            pod.ready = False
        if pod.probe is None and pod.proc is not None:
            pod.ready = pod.proc.running and pod.phase != "Terminating"
        if pod.proc is not None and pod.proc.failed_to_start:
            pod.message = pod.proc.failed_to_start
        self.changed()

    async def _probe_loop(self, pod: Pod) -> None:
        assert pod.proc is not None
        spec = pod.probe
        if spec is None:
            await asyncio.Future()  # readiness follows the process (see _proc_changed); wait for cancellation
            return
        failures = 0
        while True:
            if not pod.proc.running:
                await pod.proc.started.wait()
            if spec.tcpSocket is not None:
                ok = await probe.tcp(pod.node.fd, pod.ip, spec.tcpSocket.port, spec.timeoutSeconds)
            else:
                assert spec.httpGet is not None
                answer = await probe.http_answer(
                    pod.node.fd, pod.ip, spec.httpGet.port, spec.httpGet.path, spec.timeoutSeconds
                )
                ok = answer is not None and answer.ok
                if answer is not None and pod.owner_kind == "DaemonSet":
                    version = answer.headers.get(CONFIG_VERSION_HEADER.lower())
                    if version != pod.config_version:
                        pod.config_version = version
                        self.changed()  # `ready` may flip
            if ok:
                failures = 0
                if not pod.ready and pod.proc.running and pod.phase != "Terminating":
                    pod.ready = True
                    _log.info("pod %s is ready", pod.name)
                    self.changed()
            else:
                failures += 1
                if pod.ready and (failures >= spec.failureThreshold or not pod.proc.running):
                    pod.ready = False
                    _log.info("pod %s is not ready", pod.name)
                    self.changed()
            # Until ready (a proxy: with the current workloads.yaml loaded), probe often so `cluster up` returns
            # quickly; then at the configured period.
            settled = pod.ready and (pod.config_version is None or pod.config_version == self._workloads_version)
            await asyncio.sleep(spec.periodSeconds if settled else min(0.05, spec.periodSeconds))

    def start_delete(self, pod: Pod, grace: float, *, replace: bool = True) -> asyncio.Task[None]:
        """Mark the pod Terminating and terminate it; with `replace`, its owner replaces it at once (as the ReplicaSet
        does). Scale-down passes replace=False, being the reconciliation itself."""
        if pod.terminating is None:
            pod.phase = "Terminating"
            pod.ready = False
            self.changed()
            pod.terminating = spawn(self._terminate(pod, grace), f"delete-{pod.name}")
            if replace:
                self.reconcile()
        return pod.terminating

    def termination_limit(self, grace: float) -> float:
        """How long a pod's termination may take at most: its grace period plus the bounds of the other steps."""
        return grace + TERMINATION_MARGIN

    async def _terminate(self, pod: Pod, grace: float) -> None:
        """SIGTERM, wait the grace period, SIGKILL; then unplumb, delete the netns and free the IP. Each step is
        bounded; a step that overruns is named in the TerminationStuck raised once the cleanup is done."""
        stuck: list[str] = []

        async def step(what: str, limit: float, work: Any) -> None:
            pod.at_stage(what)
            started = time.monotonic()
            try:
                async with asyncio.timeout(limit):
                    await work
            except TimeoutError:
                stuck.append(f"{what} did not finish within {limit:g}s")
                _log.error("pod %s: %s; going on with its cleanup", pod.name, stuck[-1])
            except PublishStuck as exc:
                stuck.append(f"{what}: {exc}")
                _log.error("pod %s: %s; going on with its cleanup", pod.name, stuck[-1])
            except Exception as exc:  # e.g. the agent answered 500: the cleanup is idempotent, go on with it
                _log.warning("pod %s: %s failed: %s: %s", pod.name, what, type(exc).__name__, exc)
            else:
                if time.monotonic() - started > 1.0 + (grace if what == "stopping the process" else 0):
                    _log.info("pod %s: %s took %.1fs", pod.name, what, time.monotonic() - started)

        try:
            if pod.task is not None:
                pod.at_stage("stopping its supervising task")
                if not await stop_task(pod.task, TASK_STOP_TIMEOUT):
                    stuck.append(f"its supervising task {pod.task.get_name()} ignored cancellation")
                    _log.error("pod %s: %s", pod.name, stuck[-1])
            pod.ready = False
            # The pod leaves the services' endpoints (nft DNAT, workloads.yaml) before it is signalled, so no new
            # connection is sent to a process that is going away.
            await step("publishing its removal from the endpoints", PUBLISH_TIMEOUT, self.published(self.changed()))
            if pod.proc is not None:
                await step("stopping the process", grace + KILL_TIMEOUT, self._stop_proc(pod, grace))
            await step("killing what is left in its netns", KILL_TIMEOUT, kill_netns_processes(pod.netns))
            await step("unplumbing it through the node agent", UNPLUMB_TIMEOUT, self.podnet.remove(pod.net))
            await step("deleting its netns", NETNS_DELETE_TIMEOUT, topology.delete_namespaces([pod.netns]))
        finally:
            pod.at_stage("removed")
            pod.node.ipam.release(pod.ip)
            self.pods.pop(pod.name, None)
            pod.deleted.set()
            self.changed()
            self.reconcile()
        if stuck:
            raise TerminationStuck(f"pod {pod.name} was removed, but " + "; ".join(stuck))

    async def _stop_proc(self, pod: Pod, grace: float) -> None:
        assert pod.proc is not None
        code = await pod.proc.stop(grace)
        _log.info("pod %s stopped (exit %s)", pod.name, code)

    # ----- publishing ------------------------------------------------------------------------------------------

    def changed(self) -> int:
        """Note a change; returns its generation (see `published`)."""
        self._generation += 1
        self._dirty.set()
        return self._generation

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            generation = self._generation
            try:
                await self._write_files()
            except Exception:
                _log.exception("cannot publish the cluster state")
            async with self._published_cond:
                self._published = generation
                self._published_cond.notify_all()

    async def published(self, generation: int, within: float | None = None) -> None:
        """Wait until the files reflect at least this generation of changes; PublishStuck after `within` seconds
        or when the publisher is gone."""
        task = self._publisher_task
        if task is not None and task.done() and self._published < generation:
            raise PublishStuck(f"the cluster files are not written any more (publisher ended: {task!r})")
        try:
            async with asyncio.timeout(within):
                async with self._published_cond:
                    await self._published_cond.wait_for(lambda: self._published >= generation)
        except TimeoutError:
            raise PublishStuck(f"the cluster files were not rewritten within {within:g}s") from None

    def workload_views(self) -> list[render.WorkloadView]:
        return [
            render.WorkloadView(p.name, p.namespace, p.service_account, p.ip, p.node.name, p.mesh, p.ready, p.labels)
            for p in self.pods.values()
            if p.owner_kind == "Deployment"
        ]

    async def _write_files(self) -> None:
        # One writer at a time: an nft apply awaits, and an older ruleset must never land after a newer one.
        async with self._write_lock:
            await self._write_files_locked()

    async def _write_files_locked(self) -> None:
        views = self.workload_views()
        rules = [
            topology.ServiceRule(s.namespace, s.name, s.vip, port, target, render.endpoints(s, views))
            for s in self.services
            for port, target in s.ports
        ]
        if self.phase != "stopping" and self.nodes and all(n.fd >= 0 for n in self.nodes.values()):
            for node in self.nodes.values():
                ruleset = topology.render_services(rules, node.index)
                if self._published_nft.get(node.name) != ruleset:
                    await topology.apply_nft(node.netns, ruleset)
                    self._published_nft[node.name] = ruleset
        workloads = yaml.safe_dump(
            render.render_workloads(views, self.services, self.spec.ca.trustDomain, self.spec.policies), sort_keys=False
        )
        if workloads != self._published_workloads:
            atomic_write(self.layout.workloads, workloads)
            self._published_workloads = workloads
            self._workloads_version = config_version(workloads.encode())
            self._workloads_written_at = time.monotonic()
            asyncio.get_running_loop().call_later(self.settle, self.changed)  # `ready` may flip then
        atomic_write(self.layout.state, json.dumps(self.snapshot(), indent=2) + "\n")

    def snapshot(self) -> dict[str, Any]:
        proxies = [p for p in self.pods.values() if p.owner_kind == "DaemonSet"]
        apps = [p for p in self.pods.values() if p.owner_kind == "Deployment"]
        views = self.workload_views()
        nodes = []
        for n in self.nodes.values():
            mine = [p for p in proxies if p.node is n and p.phase != "Terminating"]
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
        for dep in self.spec.deployments:
            mine = [p for p in apps if p.owner == dep.name and p.phase != "Terminating"]
            deployments.append(
                {
                    "name": dep.name,
                    "namespace": dep.namespace,
                    "replicas": self.replicas[dep.name],
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
            for s in self.services
        ]
        return {
            "name": self.name,
            "stateDir": str(self.layout.root),
            "phase": self.phase,
            "error": self.error,
            "ready": self.is_ready(),
            "workloadsVersion": self._workloads_version,
            "controllerPid": os.getpid(),
            "ca": {
                "enabled": self.ca is not None,
                "address": f"{topology.FABRIC_IP}:{topology.CA_PORT}",
                "pid": self.ca.pid if self.ca and self.ca.running else None,
                "ready": self.ca_ready,
            },
            "nodes": nodes,
            "deployments": deployments,
            "pods": [p.record() for p in apps],
            "proxies": [p.record() for p in proxies],
            "services": services,
            "daemonset": self.daemonset.model_dump(),
        }

    @property
    def settle(self) -> float:
        try:
            poll = Duration.parse(self.daemonset.env.get(PROXY_CONFIG_POLL_ENV, PROXY_CONFIG_POLL_DEFAULT))
        except ValueError:
            poll = Duration.parse(PROXY_CONFIG_POLL_DEFAULT)
        return float(poll) + SETTLE_MARGIN

    def _has_current_config(self, proxy: Pod) -> bool:
        """The proxy has loaded the last workloads.yaml: it says so in its readiness header; a proxy without that
        header (ztunnel itself) is given its poll interval plus a margin to have seen the last change."""
        if proxy.config_version is not None:
            return proxy.config_version == self._workloads_version
        return time.monotonic() - self._workloads_written_at >= self.settle

    def is_ready(self) -> bool:
        if self.phase != "running":
            return False
        if self.agent_api is not None and not all(n.agent_ready for n in self.nodes.values()):
            return False
        if self.daemonset.enabled:
            for n in self.nodes.values():
                proxies = [p for p in self.pods.values() if p.owner_kind == "DaemonSet" and p.node is n and p.ready]
                if not proxies or not all(self._has_current_config(p) for p in proxies):
                    return False
        for dep in self.spec.deployments:
            ready = [p for p in self.pods.values() if p.owner == dep.name and p.owner_kind == "Deployment" and p.ready]
            if len(ready) < self.replicas[dep.name]:
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


async def stop_task(task: asyncio.Task[Any], limit: float) -> bool:
    """Cancel a task and wait until it has ended, cancelling again while it goes on (a cancellation can be lost:
    `asyncio.wait_for` on Python 3.11 drops one that races with its inner result). False if it still runs after
    `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.5, remaining))
    return True


async def kill_netns_processes(netns: str) -> None:
    """SIGKILL every process still inside a namespace (what a pod leaves behind when its leader is gone)."""
    from pyztunnel.cluster.reaper import netns_ids, processes_in, sigkill_all

    ids = netns_ids([NETNS_RUN_DIR / netns])
    if ids:
        await sigkill_all(processes_in(ids))


def load_spec(layout: Layout) -> ClusterSpec:
    return parse_spec(layout.spec.read_text(), str(layout.spec)).spec

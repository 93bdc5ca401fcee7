"""The kubelet: runs one pod — plumbs it through the node agent (the CNI role), starts its process in its netns,
probes its readiness from the node netns — and terminates it with its grace period, every step bounded.

It works on the pods the reconciler put in the store and tells the publisher what changed; when a pod is gone it
calls `on_gone` (the controller lets the reconciler replace it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyztunnel.aio import spawn
from pyztunnel.cluster import podnet, probe, render, topology, waypoints
from pyztunnel.cluster.objects import Pod, PublishStuck, Store, TerminationStuck
from pyztunnel.cluster.process import Supervised, pyztunnel_argv
from pyztunnel.cluster.publisher import Publisher, atomic_write
from pyztunnel.cluster.reaper import netns_ids, processes_in, sigkill_all
from pyztunnel.netns import NETNS_RUN_DIR
from pyztunnel.observe.servers import CONFIG_VERSION_HEADER

_log = logging.getLogger("pyztunnel.cluster")

PLUMB_RETRY_FIRST = 0.05
PLUMB_RETRY_MAX = 1.0
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


class Kubelet:
    def __init__(
        self, store: Store, publisher: Publisher, network: podnet.PodNetwork, on_gone: Callable[[], object]
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.network = network
        self.on_gone = on_gone

    # ----- running a pod ---------------------------------------------------------------------------------------

    def start(self, pod: Pod) -> None:
        pod.task = spawn(self._run(pod), f"pod-{pod.name}")

    def pod_env(self, pod: Pod) -> dict[str, str]:
        layout = self.store.layout
        base = {
            **os.environ,
            **render.service_env(self.store.services),
            "POD_NAME": pod.name,
            "POD_NAMESPACE": pod.namespace,
            "POD_IP": pod.ip,
            "NODE_NAME": pod.node.name,
            "SERVICE_ACCOUNT": pod.service_account,
            "POD_DIR": str(layout.pod_dir(pod.name)),
            "PYZTUNNEL_CLUSTER": self.store.name,
            "PYZTUNNEL_CLUSTER_DIR": str(layout.root),
        }
        spec = self.store.spec
        dep = next((d for d in spec.deployments if d.name == pod.owner and pod.owner_kind == "Deployment"), None)
        plane = self.store.control_plane
        if dep is not None and plane is not None and waypoints.is_waypoint(spec, dep):
            ca = f"https://{topology.FABRIC_IP}:{topology.CA_PORT}"
            base |= waypoints.pod_env(plane.proxy_env(), ca, layout.ca_dir, pod.node.run_dir)
        for key, value in pod.env.items():
            base[key] = render.expand(value, base)
        return base

    async def _run(self, pod: Pod) -> None:
        layout = self.store.layout
        try:
            # A mesh pod's proxy looks its workload up (and the CA checks its node) in workloads.yaml as soon as the
            # agent announces it: publish the pod before plumbing it.
            await self.publisher.published(pod.generation)
            await self._plumb(pod)
            env = self.pod_env(pod)
            pod_dir = layout.pod_dir(pod.name)
            pod_dir.mkdir(parents=True, exist_ok=True)
            for file_name, content in pod.files.items():
                atomic_write(pod_dir / file_name, render.expand(content, env))
            argv = pyztunnel_argv([render.expand(a, env) for a in pod.command])
            pod.proc = Supervised(
                pod.name,
                argv,
                netns=pod.netns,
                env=env,
                log_path=layout.log(pod.name),
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
            self.publisher.changed()

    async def _plumb(self, pod: Pod) -> None:
        await topology.ip_batch(None, [f"netns add {pod.netns}"])
        delay = PLUMB_RETRY_FIRST
        while True:
            try:
                await self.network.add(pod.net)
                pod.message = ""
                return
            except podnet.NotReady as exc:
                if pod.message != str(exc):
                    pod.message = str(exc)
                    self.publisher.changed()
            await asyncio.sleep(delay)  # CNI-style retry with backoff, not synchronisation
            delay = min(delay * 2, PLUMB_RETRY_MAX)

    def _proc_changed(self, pod: Pod) -> None:
        if pod.proc is not None and not pod.proc.running and pod.ready:
            pod.ready = False
        if pod.probe is None and pod.proc is not None:
            pod.ready = pod.proc.running and pod.live
        if pod.proc is not None and pod.proc.failed_to_start:
            pod.message = pod.proc.failed_to_start
        self.publisher.changed()

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
                if answer is not None and pod.is_proxy:
                    version = answer.headers.get(CONFIG_VERSION_HEADER.lower())
                    if version != pod.config_version:
                        pod.config_version = version
                        self.publisher.changed()  # `ready` may flip
            if ok:
                failures = 0
                if not pod.ready and pod.proc.running and pod.live:
                    pod.ready = True
                    _log.info("pod %s is ready", pod.name)
                    self.publisher.changed()
            else:
                failures += 1
                if pod.ready and (failures >= spec.failureThreshold or not pod.proc.running):
                    pod.ready = False
                    _log.info("pod %s is not ready", pod.name)
                    self.publisher.changed()
            # Until ready (a proxy: with the current workloads.yaml loaded), probe often so `cluster up` returns
            # quickly; then at the configured period.
            current = self.publisher.workloads_version
            settled = pod.ready and (pod.config_version is None or pod.config_version == current)
            await asyncio.sleep(spec.periodSeconds if settled else min(0.05, spec.periodSeconds))

    # ----- terminating a pod -----------------------------------------------------------------------------------

    def terminate(self, pod: Pod, grace: float) -> asyncio.Task[None]:
        """Mark the pod Terminating and terminate it (once; a second call returns the termination under way)."""
        if pod.terminating is None:
            pod.phase = "Terminating"
            pod.ready = False
            self.publisher.changed()
            pod.terminating = spawn(self._terminate(pod, grace), f"delete-{pod.name}")
        return pod.terminating

    @staticmethod
    def termination_limit(grace: float) -> float:
        """How long a pod's termination may take at most: its grace period plus the bounds of the other steps."""
        return grace + TERMINATION_MARGIN

    async def _terminate(self, pod: Pod, grace: float) -> None:
        """SIGTERM, wait the grace period, SIGKILL; then unplumb, delete the netns and free the IP. Each step is
        bounded; a step that overruns is named in the TerminationStuck raised once the cleanup is done."""
        stuck: list[str] = []

        async def step(what: str, limit: float, work: Awaitable[Any]) -> None:
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

        publisher = self.publisher
        try:
            if pod.task is not None:
                pod.at_stage("stopping its supervising task")
                if not await stop_task(pod.task, TASK_STOP_TIMEOUT):
                    stuck.append(f"its supervising task {pod.task.get_name()} ignored cancellation")
                    _log.error("pod %s: %s", pod.name, stuck[-1])
            pod.ready = False
            # The pod leaves the services' endpoints (nft DNAT, workloads.yaml) before it is signalled, so no new
            # connection is sent to a process that is going away.
            removal = publisher.published(publisher.changed())
            await step("publishing its removal from the endpoints", PUBLISH_TIMEOUT, removal)
            if pod.proc is not None:
                await step("stopping the process", grace + KILL_TIMEOUT, self._stop_proc(pod, grace))
            await step("killing what is left in its netns", KILL_TIMEOUT, kill_netns_processes(pod.netns))
            await step("unplumbing it through the node agent", UNPLUMB_TIMEOUT, self.network.remove(pod.net))
            await step("deleting its netns", NETNS_DELETE_TIMEOUT, topology.delete_namespaces([pod.netns]))
        finally:
            pod.at_stage("removed")
            pod.node.ipam.release(pod.ip)
            self.store.pods.pop(pod.name, None)
            pod.deleted.set()
            publisher.changed()
            self.on_gone()
        if stuck:
            raise TerminationStuck(f"pod {pod.name} was removed, but " + "; ".join(stuck))

    @staticmethod
    async def _stop_proc(pod: Pod, grace: float) -> None:
        assert pod.proc is not None
        code = await pod.proc.stop(grace)
        _log.info("pod %s stopped (exit %s)", pod.name, code)


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
    ids = netns_ids([NETNS_RUN_DIR / netns])
    if ids:
        await sigkill_all(processes_in(ids))

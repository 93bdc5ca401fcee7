"""The simulated node side: a scheduler for pods without a node, a kubelet per node that "runs" containers, the
ReplicaSet controller and the PodDisruptionBudget controller.

A container's behaviour comes from its image tag or env (so a test says what a version does, as a real image would):
- tag `crash…` or env STANDIN_EXIT_CODE=N (with STANDIN_ERROR=message): exits at once, again and again
  (restartCount grows, lastState.terminated.exitCode N, its log says the error) — never Ready;
- tag `notready…` or env STANDIN_NOT_READY=1: runs, never Ready;
- tag `failing…` or env STANDIN_FAILING_CONNECTIONS=N: Ready, but its :15020/metrics count N (5) more failed
  connections at every scrape;
- anything else: Ready once started.
Time passes for real: a pod starts `start_seconds` after it is bound, a Terminating pod is gone
min(grace, `termination_seconds`) after its deletion.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable
from typing import Any

from pyztunnel.kubeapi.daemonset import owned_by, owner_ref, pod_ready, terminating
from pyztunnel.kubeapi.selectors import selector_matcher
from pyztunnel.kubeapi.store import Store, now_rfc3339

LOG_LIMIT = 2000


@dataclasses.dataclass
class SimOptions:
    start_seconds: float = 0.05
    termination_seconds: float = 0.3
    crash_seconds: float = 0.5


@dataclasses.dataclass(frozen=True)
class Behaviour:
    kind: str  # ok | crash | notready | failing
    exit_code: int = 0
    error: str = ""
    failing: int = 0


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}


def behaviour(pod: dict[str, Any]) -> Behaviour:
    for c in (pod.get("spec") or {}).get("containers") or []:
        env, tag = _env(c), str(c.get("image", "")).rsplit(":", 1)[-1]
        if "STANDIN_EXIT_CODE" in env or tag.startswith("crash"):
            code = int(env.get("STANDIN_EXIT_CODE", "1") or 1)
            error = env.get("STANDIN_ERROR") or f"failed to start: the stand-in image {tag!r} exits with {code}"
            return Behaviour("crash", code, error)
        if env.get("STANDIN_NOT_READY") or tag.startswith("notready"):
            return Behaviour("notready")
        if "STANDIN_FAILING_CONNECTIONS" in env or tag.startswith("failing"):
            return Behaviour("failing", failing=int(env.get("STANDIN_FAILING_CONNECTIONS", "5") or 5))
    return Behaviour("ok")


def _ts(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeSide:
    def __init__(self, store: Store, options: SimOptions, wake_at: Callable[[float], None]) -> None:
        self.store = store
        self.options = options
        self.wake_at = wake_at
        self.logs: dict[str, list[str]] = {}  # pod uid → lines
        self.scrapes: dict[str, int] = {}
        self._bound: dict[str, float] = {}  # pod uid → when it was bound to its node
        self._deleted: dict[str, float] = {}  # pod uid → when its deletion was seen
        self._crashed: dict[str, float] = {}
        self._ips: dict[str, str] = {}

    def log(self, pod: dict[str, Any], line: str) -> None:
        lines = self.logs.setdefault(pod["metadata"]["uid"], [])
        lines.append(f"{_ts(time.time())} {line}")
        del lines[:-LOG_LIMIT]

    def reconcile(self) -> None:
        self._replicasets()
        nodes = {n["metadata"]["name"]: n for n in self.store.list("nodes")}
        for pod in self.store.list("pods"):
            if terminating(pod):
                self._terminate(pod)
            elif not pod["spec"].get("nodeName"):
                self._schedule(pod, nodes)
            else:
                self._run(pod)
        self._pdbs()

    # Scheduler ----------------------------------------------------------------------------------------------------

    def _schedule(self, pod: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> None:
        wanted = pod["spec"].get("nodeSelector") or {}
        load: dict[str, int] = {}
        for p in self.store.list("pods"):
            node = p["spec"].get("nodeName")
            if node:
                load[node] = load.get(node, 0) + 1
        fits = [
            name
            for name, n in nodes.items()
            if not (n.get("spec") or {}).get("unschedulable")
            and all(n["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if not fits:
            cond = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": f"0/{len(nodes)} nodes are available: {len(nodes)} node(s) were unschedulable.",
            }
            if (pod.get("status") or {}).get("conditions") != [cond]:
                pod["status"] = {"phase": "Pending", "conditions": [cond]}
                self.store.replace("pods", ns, name, pod, status=True)
            return
        pod["spec"]["nodeName"] = min(fits, key=lambda n: (load.get(n, 0), n))
        self.store.replace("pods", ns, name, pod)

    # Kubelet ------------------------------------------------------------------------------------------------------

    def _ip(self, pod: dict[str, Any]) -> str:
        uid = pod["metadata"]["uid"]
        if uid not in self._ips:
            nodes = sorted(n["metadata"]["name"] for n in self.store.list("nodes"))
            node = pod["spec"]["nodeName"]
            index = nodes.index(node) + 1 if node in nodes else 250
            self._ips[uid] = f"10.244.{index}.{len(self._ips) % 250 + 2}"
        return self._ips[uid]

    def _run(self, pod: dict[str, Any]) -> None:
        uid, now = pod["metadata"]["uid"], time.time()
        bound = self._bound.setdefault(uid, now)
        if now < bound + self.options.start_seconds:
            self.wake_at(bound + self.options.start_seconds - now)
            return
        how = behaviour(pod)
        status = pod.get("status") or {}
        first = status.get("phase") != "Running"
        if first:
            self.log(pod, f"info  ztunnel  pod {pod['metadata']['name']} started")
        restarts = int((status.get("containerStatuses") or [{}])[0].get("restartCount", 0)) if not first else 0
        last: dict[str, Any] = {}
        if how.kind == "crash":
            since = self._crashed.get(uid, 0.0)
            if now >= since + self.options.crash_seconds:
                if not first:
                    restarts += 1
                self._crashed[uid] = now
                self.log(pod, f"error ztunnel  {how.error}")
            last = {"terminated": {"exitCode": how.exit_code, "reason": "Error", "finishedAt": now_rfc3339()}}
            self.wake_at(self.options.crash_seconds)
        elif not first:
            last = (status.get("containerStatuses") or [{}])[0].get("lastState") or {}
        ready = how.kind in ("ok", "failing")
        state: dict[str, Any] = (
            {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}}
            if how.kind == "crash"
            else {"running": {"startedAt": status.get("startTime") or now_rfc3339()}}
        )
        node = self.store.find("nodes", None, pod["spec"]["nodeName"]) or {}
        before = {c["type"]: c for c in status.get("conditions") or []}

        def condition(kind: str, value: bool) -> dict[str, Any]:
            old = before.get(kind)
            if old is not None and old.get("status") == str(value):
                return dict(old)
            return {"type": kind, "status": str(value), "lastTransitionTime": now_rfc3339()}

        conditions = [
            condition("PodScheduled", True),
            condition("Initialized", True),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ]
        containers = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": ready,
                "started": how.kind != "crash",
                "restartCount": restarts,
                "state": state,
                "lastState": last,
            }
            for c in pod["spec"].get("containers") or []
        ]
        new = {
            "phase": "Running",
            "conditions": conditions,
            "containerStatuses": containers,
            "podIP": self._ip(pod),
            "podIPs": [{"ip": self._ip(pod)}],
            "hostIP": ((node.get("status") or {}).get("addresses") or [{"address": ""}])[0]["address"],
            "startTime": status.get("startTime") or now_rfc3339(),
        }
        if new != status:
            pod["status"] = new
            self.store.replace("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], pod, status=True)

    def _terminate(self, pod: dict[str, Any]) -> None:
        uid, now = pod["metadata"]["uid"], time.time()
        seen = self._deleted.setdefault(uid, now)
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds", 0))
        due = seen + min(grace, self.options.termination_seconds)
        if now < due:
            self.wake_at(due - now)
            return
        self.store.remove("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        for table in (self._bound, self._deleted, self._crashed):
            table.pop(uid, None)

    def metrics(self, pod: dict[str, Any]) -> str:
        uid = pod["metadata"]["uid"]
        self.scrapes[uid] = self.scrapes.get(uid, 0) + 1
        how = behaviour(pod)
        failed = how.failing * self.scrapes[uid] if how.kind == "failing" else 0
        return (
            "# HELP istio_tcp_connections_opened The total number of TCP connections opened\n"
            "# TYPE istio_tcp_connections_opened counter\n"
            f'istio_tcp_connections_opened_total{{reporter="destination"}} {10 * self.scrapes[uid]}\n'
            "# HELP istio_tcp_connections_failed The total number of TCP connections that failed\n"
            "# TYPE istio_tcp_connections_failed counter\n"
            f'istio_tcp_connections_failed_total{{reporter="source"}} {failed}\n'
        )

    # ReplicaSets and PodDisruptionBudgets -------------------------------------------------------------------------

    def _replicasets(self) -> None:
        for rs in self.store.list("replicasets"):
            ns = rs["metadata"]["namespace"]
            mine = [p for p in self.store.list("pods", ns) if owned_by(p, rs) and not terminating(p)]
            want = int(rs["spec"].get("replicas", 1))
            template = rs["spec"].get("template") or {}
            for _ in range(want - len(mine)):
                meta = template.get("metadata") or {}
                self.store.create(
                    "pods",
                    ns,
                    {
                        "metadata": {
                            "generateName": f"{rs['metadata']['name']}-",
                            "labels": dict(meta.get("labels") or {}),
                            "ownerReferences": [owner_ref(rs)],
                        },
                        "spec": dict(template.get("spec") or {}),
                    },
                )
            for extra in sorted(mine, key=lambda p: p["metadata"]["creationTimestamp"])[want:]:
                self.store.delete("pods", ns, extra["metadata"]["name"])
            ready = sum(pod_ready(p) for p in mine)
            status = {
                "replicas": len(mine),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "observedGeneration": rs["metadata"]["generation"],
            }
            if rs.get("status") != status:
                rs["status"] = status
                self.store.replace("replicasets", ns, rs["metadata"]["name"], rs, status=True)

    def _pdbs(self) -> None:
        for pdb in self.store.list("poddisruptionbudgets"):
            ns = pdb["metadata"]["namespace"]
            match = selector_matcher(pdb["spec"].get("selector"))
            pods = [p for p in self.store.list("pods", ns) if match(p)]
            names = {p["metadata"]["name"] for p in pods if not terminating(p)}
            disrupted = {k: v for k, v in ((pdb.get("status") or {}).get("disruptedPods") or {}).items() if k in names}
            healthy = sum(
                1 for p in pods if pod_ready(p) and not terminating(p) and p["metadata"]["name"] not in disrupted
            )
            expected = len(names)
            spec = pdb["spec"]
            if "minAvailable" in spec:
                desired = _count(spec["minAvailable"], expected)
            else:
                desired = expected - _count(spec.get("maxUnavailable", 0), expected)
            status = {
                "observedGeneration": pdb["metadata"]["generation"],
                "currentHealthy": healthy,
                "desiredHealthy": desired,
                "expectedPods": expected,
                "disruptionsAllowed": max(0, healthy - desired),
                "disruptedPods": disrupted,
            }
            if pdb.get("status") != status:
                pdb["status"] = status
                self.store.replace("poddisruptionbudgets", ns, pdb["metadata"]["name"], pdb, status=True)


def _count(value: Any, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return -(-int(value[:-1]) * total // 100)
    return int(value)

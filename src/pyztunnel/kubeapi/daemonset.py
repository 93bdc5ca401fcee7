"""The DaemonSet controller, following reference/kubernetes.md §3 (k8s pkg/controller/daemon):

- every template gets a ControllerRevision (`<ds>-<hash>`, label `controller.kubernetes.io/hash`, `.revision`
  counting up; going back to an earlier template bumps that revision to the top) and its pods carry
  `controller-revision-hash`; the current revision is the one with the highest `.revision`;
- a node without a pod gets one — without surge (OnDelete, or RollingUpdate with maxSurge 0) only once the old pod
  object is gone (a Terminating pod still counts), with surge as soon as no pod on the node is live;
- RollingUpdate without surge deletes old pods while at most maxUnavailable nodes are unavailable (unavailable old
  pods first); with surge it starts a new pod beside the old on up to maxSurge nodes at once and deletes the old pod
  once the new one is available; OnDelete replaces nothing by itself;
- status: desired/current/updated/ready/available counted on the oldest live pod of each node, observedGeneration.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from typing import Any

from pyztunnel.kubeapi.store import Store, random_suffix

HASH_LABEL = "controller-revision-hash"
REVISION_HASH_LABEL = "controller.kubernetes.io/hash"
GENERATION_LABEL = "pod-template-generation"
HISTORY_LIMIT = 10


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(
        ref.get("uid") == owner["metadata"]["uid"] and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_ready(pod: dict[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def ready_since(pod: dict[str, Any]) -> float:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("lastTransitionTime"):
            stamp = datetime.datetime.strptime(cond["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
            return stamp.replace(tzinfo=datetime.UTC).timestamp()
    return 0.0


def terminating(obj: dict[str, Any]) -> bool:
    return "deletionTimestamp" in (obj.get("metadata") or {})


def scaled(value: Any, total: int, default: int) -> int:
    """An IntOrString like maxSurge: 1, "25%" (rounded up, as the DaemonSet controller does)."""
    if value is None:
        return default
    if isinstance(value, str) and value.endswith("%"):
        return -(-int(value[:-1]) * total // 100)
    return int(value)


class DaemonSetController:
    def __init__(self, store: Store, wake_at: Any) -> None:
        self.store = store
        self.wake_at = wake_at  # wake_at(seconds): reconcile again then (minReadySeconds)

    def reconcile(self) -> None:
        nodes = [n["metadata"]["name"] for n in self.store.list("nodes")]
        for ds in self.store.list("daemonsets"):
            if not terminating(ds):
                self._one(ds, nodes)

    def _revisions(self, ds: dict[str, Any]) -> str:
        """Make sure the template has a ControllerRevision at the top; returns the current hash."""
        ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        template = ds["spec"]["template"]
        digest = template_hash(template)
        mine = [r for r in self.store.list("controllerrevisions", ns) if owned_by(r, ds)]
        top = max((int(r.get("revision", 0)) for r in mine), default=0)
        match = next((r for r in mine if r["metadata"].get("labels", {}).get(REVISION_HASH_LABEL) == digest), None)
        if match is None:
            labels = dict((template.get("metadata") or {}).get("labels") or {})
            labels[REVISION_HASH_LABEL] = digest
            self.store.create(
                "controllerrevisions",
                ns,
                {
                    "metadata": {"name": f"{name}-{digest}", "labels": labels, "ownerReferences": [owner_ref(ds)]},
                    "data": {"spec": {"template": {**template, "$patch": "replace"}}},
                    "revision": top + 1,
                },
            )
        elif int(match.get("revision", 0)) != top:
            match["revision"] = top + 1
            self.store.replace("controllerrevisions", ns, match["metadata"]["name"], match)
        self._truncate(ds, digest)
        return digest

    def _truncate(self, ds: dict[str, Any], current: str) -> None:
        ns = ds["metadata"]["namespace"]
        limit = int(ds["spec"].get("revisionHistoryLimit", HISTORY_LIMIT))
        live = {p["metadata"].get("labels", {}).get(HASH_LABEL) for p in self.store.list("pods", ns) if owned_by(p, ds)}
        old = sorted(
            (r for r in self.store.list("controllerrevisions", ns) if owned_by(r, ds)),
            key=lambda r: int(r.get("revision", 0)),
        )
        old = [r for r in old if r["metadata"]["labels"].get(REVISION_HASH_LABEL) not in live | {current}]
        for r in old[: max(0, len(old) - limit)]:
            self.store.remove("controllerrevisions", ns, r["metadata"]["name"])

    def _available(self, ds: dict[str, Any], pod: dict[str, Any]) -> bool:
        if not pod_ready(pod) or terminating(pod):
            return False
        wait = float(ds["spec"].get("minReadySeconds", 0))
        if wait <= 0:
            return True
        left = ready_since(pod) + wait - time.time()
        if left > 0:
            self.wake_at(left)
            return False
        return True

    def _create(self, ds: dict[str, Any], node: str, digest: str) -> None:
        ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        template = ds["spec"]["template"]
        meta = dict(template.get("metadata") or {})
        labels = dict(meta.get("labels") or {})
        labels[HASH_LABEL] = digest
        labels[GENERATION_LABEL] = str(ds["metadata"]["generation"])
        spec = json.loads(json.dumps(template.get("spec") or {}))
        spec["nodeName"] = node
        # The DaemonSet controller adds these so its pods also run on cordoned and not-ready nodes.
        tolerations = spec.setdefault("tolerations", [])
        for key in ("node.kubernetes.io/unschedulable", "node.kubernetes.io/not-ready"):
            if not any(t.get("key") == key for t in tolerations):
                tolerations.append({"key": key, "operator": "Exists", "effect": "NoSchedule"})
        pod = {
            "metadata": {
                "name": f"{name}-{random_suffix()}",
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [owner_ref(ds)],
            },
            "spec": spec,
        }
        self.store.create("pods", ns, pod)

    def _one(self, ds: dict[str, Any], nodes: list[str]) -> None:
        ns = ds["metadata"]["namespace"]
        digest = self._revisions(ds)
        strategy = ds["spec"].get("updateStrategy") or {"type": "RollingUpdate"}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        params = strategy.get("rollingUpdate") or {}
        surge = scaled(params.get("maxSurge"), len(nodes), 0) if rolling else 0
        max_unavailable = scaled(params.get("maxUnavailable"), len(nodes), 1) if rolling else 0
        if rolling and surge == 0 and max_unavailable == 0:
            max_unavailable = 1
        by_node: dict[str, list[dict[str, Any]]] = {n: [] for n in nodes}
        for pod in self.store.list("pods", ns):
            node = pod["spec"].get("nodeName")
            if owned_by(pod, ds) and node in by_node:
                by_node[node].append(pod)
        for pods in by_node.values():
            pods.sort(key=lambda p: (p["metadata"]["creationTimestamp"], int(p["metadata"]["resourceVersion"])))

        def updated(p: dict[str, Any]) -> bool:
            return bool(p["metadata"].get("labels", {}).get(HASH_LABEL) == digest)

        surging = sum(1 for pods in by_node.values() if len([p for p in pods if not terminating(p)]) > 1)
        unavailable = sum(
            1 for pods in by_node.values() if not any(self._available(ds, p) for p in pods if not terminating(p))
        )
        for node, pods in sorted(by_node.items()):
            live = [p for p in pods if not terminating(p)]
            if not pods or (surge and not live):
                self._create(ds, node, digest)  # no surge: only once every old pod object is gone
                continue
            if not live:
                continue
            new = [p for p in live if updated(p)]
            old = [p for p in live if not updated(p)]
            if surge:
                if len(new) > 1:
                    self.store.delete("pods", ns, new[-1]["metadata"]["name"])
                if rolling and old:
                    if new and self._available(ds, new[0]):
                        for p in old:
                            self.store.delete("pods", ns, p["metadata"]["name"])
                    elif not new and (surging < surge or not any(self._available(ds, p) for p in old)):
                        surging += 1
                        self._create(ds, node, digest)
                continue
            if len(live) > 1:  # no surge: one pod per node, the oldest stays
                for p in live[1:]:
                    self.store.delete("pods", ns, p["metadata"]["name"])
            if rolling and old:
                pod = live[0]
                if not self._available(ds, pod):
                    self.store.delete("pods", ns, pod["metadata"]["name"])  # unavailable old pods go first, free
                elif unavailable < max_unavailable:
                    unavailable += 1
                    self.store.delete("pods", ns, pod["metadata"]["name"])
        self._status(ds, by_node, updated)

    def _status(self, ds: dict[str, Any], by_node: dict[str, list[dict[str, Any]]], updated: Any) -> None:
        desired = len(by_node)
        current = ready = available = up_to_date = 0
        for pods in by_node.values():
            live = [p for p in pods if not terminating(p)]
            if not live:
                continue
            oldest = live[0]
            current += 1
            ready += pod_ready(oldest)
            available += self._available(ds, oldest)
            up_to_date += bool(updated(oldest))
        fresh = self.store.get("daemonsets", ds["metadata"]["namespace"], ds["metadata"]["name"])
        status = {
            "currentNumberScheduled": current,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": available,
            "numberUnavailable": desired - available,
            "updatedNumberScheduled": up_to_date,
            "observedGeneration": ds["metadata"]["generation"],
        }
        if fresh.get("status") != status:
            fresh["status"] = status
            self.store.replace(
                "daemonsets", fresh["metadata"]["namespace"], fresh["metadata"]["name"], fresh, status=True
            )

"""The DaemonSet controller, following reference/kubernetes.md §3 (k8s pkg/controller/daemon):

- every template gets a ControllerRevision (`<ds>-<hash>`, label `controller.kubernetes.io/hash`, `.revision`
  counting up; going back to an earlier template bumps that revision to the top) and its pods carry
  `controller-revision-hash`; the current revision is the one with the highest `.revision`;
- a node without a pod gets one — without surge (OnDelete, or RollingUpdate with maxSurge 0) only once the old pod
  object is gone (a Terminating pod still counts), with surge as soon as no pod on the node is live;
- RollingUpdate without surge deletes old pods while at most maxUnavailable nodes are unavailable (unavailable old
  pods first); with surge it starts a new pod beside the old on up to maxSurge nodes at once and deletes the old pod
  once the new one is available; OnDelete replaces nothing by itself;
- excess pods on a node (the manage loop): without surge all but the oldest are deleted; with surge the oldest pod of
  the current revision and the oldest other one stay, the other one only while it is Ready and the current one not
  yet available (a template changed again while a node surges leaves two old pods there: the newer goes);
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

        # The manage loop (podsShouldBeOnNode): a pod where there is none, excess pods deleted. What is left live on
        # each node is what the update step then sees.
        live: dict[str, list[dict[str, Any]]] = {}
        for node, pods in sorted(by_node.items()):
            running = [p for p in pods if not terminating(p)]
            if not pods or (surge and not running):
                self._create(ds, node, digest)  # no surge: only once every old pod object is gone
                running = []
            doomed = self._excess(ds, running, updated, surge > 0)
            for p in doomed:
                self.store.delete("pods", ns, p["metadata"]["name"])
            live[node] = [p for p in running if p not in doomed]
        if rolling and surge:
            self._surge_update(ds, live, updated, surge, digest)
        elif rolling:
            self._unavailable_update(ds, live, updated, max_unavailable)
        self._status(ds, by_node, updated)

    def _excess(
        self, ds: dict[str, Any], live: list[dict[str, Any]], updated: Any, surge: bool
    ) -> list[dict[str, Any]]:
        """The live pods of one node (oldest first) the manage loop deletes. Without surge all but the oldest. With
        surge at most two stay, the oldest of the current revision and the oldest other one, and the other one only
        while it is Ready and the current one not yet available: so a node caught mid-surge by yet another template
        (two old pods) keeps the older, and the update step goes on from there."""
        if not surge:
            return live[1:]
        new = [p for p in live if updated(p)]
        old = [p for p in live if not updated(p)]
        doomed = new[1:] + old[1:]
        if new and old and (not pod_ready(old[0]) or self._available(ds, new[0])):
            doomed.append(old[0])
        return doomed

    def _surge_update(
        self, ds: dict[str, Any], live: dict[str, list[dict[str, Any]]], updated: Any, surge: int, digest: str
    ) -> None:
        """rollingUpdate with maxSurge: a new pod beside an old one (at once where the old one is unavailable, else
        on up to maxSurge nodes at a time); the old pod goes once the new one is available (the manage loop)."""
        surging = 0
        allowed: list[str] = []
        candidates: list[str] = []
        for node, pods in sorted(live.items()):
            new = [p for p in pods if updated(p)]
            old = [p for p in pods if not updated(p)]
            if new and old:
                surging += 1  # waiting for the new pod to become available
            elif old:
                (candidates if self._available(ds, old[0]) else allowed).append(node)
        for node in allowed + candidates[: max(0, surge - surging)]:
            self._create(ds, node, digest)

    def _unavailable_update(
        self, ds: dict[str, Any], live: dict[str, list[dict[str, Any]]], updated: Any, max_unavailable: int
    ) -> None:
        """rollingUpdate without surge: old pods deleted (unavailable ones first, for free) while at most
        maxUnavailable nodes are unavailable; the new pod comes once the old pod object is gone (the manage loop)."""
        ns = ds["metadata"]["namespace"]
        unavailable = sum(1 for pods in live.values() if not any(self._available(ds, p) for p in pods))
        for pods in (pods for _, pods in sorted(live.items())):
            if not pods or updated(pods[0]):
                continue
            if not self._available(ds, pods[0]):
                self.store.delete("pods", ns, pods[0]["metadata"]["name"])  # unavailable old pods go first, free
            elif unavailable < max_unavailable:
                unavailable += 1
                self.store.delete("pods", ns, pods[0]["metadata"]["name"])

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

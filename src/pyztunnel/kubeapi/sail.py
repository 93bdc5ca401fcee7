"""The Sail operator's ZTunnel reconcile, as far as a rollout sees it (reference/ztunnel.md §8.2): the cluster-scoped
`ZTunnel` named `default` owns the DaemonSet `<spec.namespace>/ztunnel`; `spec.version` picks the image tag,
`spec.values.ztunnel.{updateStrategy, terminationGracePeriodSeconds, env, hub, image}` the rest. The DaemonSet is
rendered from the resource on every change of either, so a direct edit of the DaemonSet is reverted (as the real
operator does); its metadata (annotations: a rollout's state) is left alone."""

from __future__ import annotations

from typing import Any

from pyztunnel.kubeapi import seed
from pyztunnel.kubeapi.daemonset import owner_ref, terminating
from pyztunnel.kubeapi.store import Store

DEFAULT_HUB = "gcr.io/istio-release"
MANAGED_BY = "sail-operator"


def render(zt: dict[str, Any]) -> dict[str, Any]:
    """The DaemonSet spec the operator renders: Istio's chart (seed.py) with the resource's values."""
    spec = zt.get("spec") or {}
    values = (spec.get("values") or {}).get("ztunnel") or {}
    hub = values.get("hub") or ((spec.get("values") or {}).get("global") or {}).get("hub") or DEFAULT_HUB
    version = str(spec.get("version") or "v1.30.3")
    grace = int(values.get("terminationGracePeriodSeconds", 30))
    rendered: dict[str, Any] = seed.ztunnel_daemonset(
        version.removeprefix("v"), grace=grace, strategy=values.get("updateStrategy"), hub=hub
    )["spec"]
    container = rendered["template"]["spec"]["containers"][0]
    if values.get("image"):
        container["image"] = values["image"]
    container["env"] += [{"name": k, "value": str(v)} for k, v in sorted((values.get("env") or {}).items())]
    return rendered


class SailOperator:
    def __init__(self, store: Store) -> None:
        self.store = store

    def reconcile(self) -> None:
        zt = self.store.find("ztunnels", None, "default")
        if zt is None or terminating(zt):
            return
        ns = (zt.get("spec") or {}).get("namespace") or "ztunnel"
        wanted = render(zt)
        ds = self.store.find("daemonsets", ns, "ztunnel")
        if ds is None:
            self.store.create(
                "daemonsets",
                ns,
                {
                    "metadata": {
                        "name": "ztunnel",
                        "labels": {"app": "ztunnel", "app.kubernetes.io/managed-by": MANAGED_BY},
                        "ownerReferences": [owner_ref(zt)],
                    },
                    "spec": wanted,
                },
            )
        elif ds["spec"] != wanted:
            ds["spec"] = wanted
            ds["metadata"].pop("resourceVersion", None)
            self.store.replace("daemonsets", ns, "ztunnel", ds)
        ds = self.store.get("daemonsets", ns, "ztunnel")
        status = ds.get("status") or {}
        rolled = (
            status.get("observedGeneration") == ds["metadata"]["generation"]
            and status.get("updatedNumberScheduled") == status.get("desiredNumberScheduled")
            and status.get("numberAvailable") == status.get("desiredNumberScheduled")
        )
        new = {
            "observedGeneration": zt["metadata"]["generation"],
            "state": "Healthy" if rolled else "DaemonSetNotReady",
            "conditions": [
                {"type": "Reconciled", "status": "True"},
                {"type": "Ready", "status": str(rolled)},
            ],
        }
        if zt.get("status") != new:
            zt["status"] = new
            self.store.replace("ztunnels", None, "default", zt, status=True)

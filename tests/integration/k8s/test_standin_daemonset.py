"""The stand-in's DaemonSet controller where a rollout depends on it following Kubernetes' rules to the letter (the
manage loop's excess pods with surge: k8s pkg/controller/daemon podsShouldBeOnNode)."""

from __future__ import annotations

from pyztunnel.kubeapi.store import Store
from tests.integration.k8s.conftest import NS, Kube


def set_image(kube: Kube, tag: str) -> None:
    ds = kube.get("daemonsets", "ztunnel")
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = f"gcr.io/istio-release/ztunnel:{tag}"
    kube.api.call(lambda: kube.api.store.replace("daemonsets", NS, "ztunnel", ds))


def test_two_old_pods_on_a_node_keep_the_older_and_the_rollout_goes_on(kube: Kube) -> None:
    set_image(kube, "notready-1.31")  # its pod never becomes Ready: the node it surges onto keeps two pods

    def two_on_a_node(store: Store) -> bool:
        live = [p for p in store.list("pods", NS) if "deletionTimestamp" not in p["metadata"]]
        return len(live) == 4 and all((p.get("status") or {}).get("phase") == "Running" for p in live)

    kube.api.wait(two_on_a_node, what="a node with its 1.30.3 pod and the never-ready one")
    stuck = {name for name, img in kube.proxies().values() if "notready" in img}
    set_image(kube, "1.32.0")  # now both pods of that node are old
    kube.api.settled()
    assert sorted(img for _, img in kube.proxies().values()) == ["gcr.io/istio-release/ztunnel:1.32.0"] * 3
    live = {p["metadata"]["name"] for p in kube.list("pods", NS) if "deletionTimestamp" not in p["metadata"]}
    assert not stuck & live  # deleted (it may still be terminating, within its grace period)

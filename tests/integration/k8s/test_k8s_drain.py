"""`pyztunnel upgrade --kubeconfig --strategy drain` (the seed's six steps) against the stand-in: OnDelete, cordon,
evictions under a PodDisruptionBudget that blocks and then allows (429 retried), kubectl's refusals and flags,
the old pod deleted and the new revision Ready before uncordon, the previous strategy back; resumable from the
annotation."""

from __future__ import annotations

import json
from typing import Any

from pyztunnel.kubeapi import seed
from pyztunnel.kubeapi.store import Event, Store
from tests.integration.k8s.conftest import Kube


def cordon_only(kube: Kube, keep: str) -> None:
    def set_all() -> None:
        for n in kube.api.store.list("nodes"):
            n["spec"]["unschedulable"] = n["metadata"]["name"] != keep or None
            if n["spec"]["unschedulable"] is None:
                del n["spec"]["unschedulable"]
            kube.api.store.replace("nodes", None, n["metadata"]["name"], n)

    kube.api.call(set_all)


def uncordon_all(kube: Kube) -> None:
    def clear() -> None:
        for n in kube.api.store.list("nodes"):
            n["spec"].pop("unschedulable", None)
            kube.api.store.replace("nodes", None, n["metadata"]["name"], n)

    kube.api.call(clear)


def ready_on(node: str, app: str, count: int) -> Any:
    def done(store: Store) -> bool:
        pods = [p for p in store.list("pods", "default") if p["metadata"].get("labels", {}).get("app") == app]
        ready = [
            p
            for p in pods
            if p["spec"].get("nodeName") == node
            and "deletionTimestamp" not in p["metadata"]
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
        ]
        return len(ready) == count

    return done


def web_on_node_1(kube: Kube, replicas: int = 2, *, emptydir: bool = False, min_available: int | None = 1) -> None:
    """A ReplicaSet whose pods all sit on node-1, under a PDB."""
    cordon_only(kube, "node-1")
    kube.api.create("replicasets", seed.replicaset("web", replicas, grace=1, emptydir=emptydir), "default")
    if min_available is not None:
        kube.api.create("poddisruptionbudgets", seed.pdb("web", "web", min_available), "default")
    kube.api.wait(ready_on("node-1", "web", replicas), what="web on node-1")
    uncordon_all(kube)


def test_drain_with_a_pdb_that_blocks_then_allows(kube: Kube) -> None:
    web_on_node_1(kube)
    original = {p["metadata"]["name"] for p in kube.list("pods", "default")}
    order: list[str] = []

    def on(event: Event) -> None:
        o = event.obj
        if event.plural == "nodes" and event.type == "MODIFIED":
            order.append(f"{'cordon' if o['spec'].get('unschedulable') else 'uncordon'} {o['metadata']['name']}")
        if event.plural == "pods" and o["metadata"]["name"].startswith("ztunnel-") and event.type == "DELETED":
            order.append(f"proxy gone {o['spec']['nodeName']}")

    kube.api.call(lambda: kube.api.store.listen(on))
    done = kube.upgrade("--version", "1.31.0", "--strategy", "drain")
    assert done.code == 0, done.err
    # The first eviction was allowed; the second answered 429 until the first pod's replacement was Ready elsewhere.
    assert kube.api.server.evictions["refused"] >= 1 and kube.api.server.evictions["allowed"] >= 2
    web = kube.list("pods", "default")
    assert len(web) == 2 and not original & {p["metadata"]["name"] for p in web}  # moved, both replicas kept
    # Strictly one node after another: cordon, (evict), old proxy gone, uncordon.
    for node in ("node-1", "node-2", "node-3"):
        i = order.index(f"cordon {node}")
        assert order[i + 1 : i + 3] == [f"proxy gone {node}", f"uncordon {node}"], order
    assert kube.image().endswith(":1.31.0")
    strategy = kube.get("daemonsets", "ztunnel")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert not any(n["spec"].get("unschedulable") for n in kube.list("nodes"))


def test_a_pdb_that_never_allows_times_out_with_the_node_uncordoned(kube: Kube) -> None:
    web_on_node_1(kube, replicas=1, min_available=1)
    failed = kube.upgrade("--version", "1.31.0", "--strategy", "drain", "--drain-timeout", "1s")
    assert failed.code == 2
    assert failed.err.strip().count("\n") == 0
    assert (
        "still refused after 1s" in failed.err and "disruption budget" in failed.err and "node uncordoned" in failed.err
    )
    assert "cordoned nodes: none" in failed.out
    assert (
        "resume state (annotation pyztunnel.io/rollout of daemonset istio-system/ztunnel): rollout to 1.31.0 (drain): failed"
        in failed.out
    )
    assert not any(n["spec"].get("unschedulable") for n in kube.list("nodes"))


def test_emptydir_and_unmanaged_pods_are_refused_in_kubectls_words_unless_allowed(kube: Kube) -> None:
    web_on_node_1(kube, replicas=1, emptydir=True, min_available=None)
    kube.api.create("pods", seed.bare_pod("debug", "node-1"), "default")
    kube.api.wait(ready_on("node-1", "debug", 1), what="bare pod")
    refused = kube.upgrade("--version", "1.31.0", "--strategy", "drain")
    assert refused.code == 2
    assert "cannot delete Pods with local storage (use --delete-emptydir-data to override): default/web-" in refused.err
    assert "cannot delete Pods that declare no controller (use --force to override): default/debug" in refused.err
    assert not any(n["spec"].get("unschedulable") for n in kube.list("nodes"))
    assert kube.proxies()["node-1"][1].endswith(":1.30.3")  # nothing replaced on the refused node
    allowed = kube.upgrade(
        "--version", "1.31.0", "--strategy", "drain", "--delete-emptydir-data", "--force", "--restart"
    )
    assert allowed.code == 0, allowed.err
    assert "Warning: deleting Pods with local storage: default/web-" in allowed.out
    assert "Warning: deleting Pods that declare no controller: default/debug" in allowed.out
    assert not [p for p in kube.list("pods", "default") if p["metadata"]["name"] == "debug"]


def test_an_interrupted_drain_resumes_from_the_annotation(kube: Kube) -> None:
    """The first run dies after node-1 (as a killed process: its state is only in the cluster); a second run, with a
    fresh client (any machine), continues with node-2 and does not redo node-1."""
    stop_after = {"n": 0}

    def die_after_first_uncordon(event: Event) -> None:
        if event.plural == "nodes" and event.type == "MODIFIED" and not event.obj["spec"].get("unschedulable"):
            stop_after["n"] += 1

    kube.api.call(lambda: kube.api.store.listen(die_after_first_uncordon))
    import asyncio

    from pyztunnel.k8s.backend import connect
    from pyztunnel.rollout.plan import Plan
    from pyztunnel.rollout.store import RolloutStore
    from pyztunnel.rollout.strategies import Rollout

    class Died(BaseException):
        pass

    async def first_run() -> None:
        async with connect(kube.kubeconfig, None, None) as backend:
            real_uncordon = backend.uncordon

            async def uncordon_then_die(node: str) -> None:
                await real_uncordon(node)
                raise Died(node)

            backend.uncordon = uncordon_then_die  # type: ignore[method-assign]
            await Rollout(backend, Plan("1.31.0", strategy="drain"), RolloutStore(backend.state)).run()

    try:
        asyncio.run(first_run())
    except Died:
        pass
    saved = json.loads(kube.get("daemonsets", "ztunnel")["metadata"]["annotations"]["pyztunnel.io/rollout"])
    assert saved["status"] == "running" and saved["progress"]["node-1"]["phase"] == "uncordon"
    node_1 = kube.proxies()["node-1"]
    assert node_1[1].endswith(":1.31.0")
    mismatch = kube.upgrade("--version", "1.31.0", "--strategy", "drain", "--nodes", "node-9")
    assert mismatch.code == 2 and mismatch.err.strip().count("\n") == 0
    assert "this request differs in --nodes (saved: all nodes, now: node-9)" in mismatch.err
    again = kube.upgrade("--version", "1.31.0", "--strategy", "drain")
    assert again.code == 0, again.err
    assert "resuming the rollout to 1.31.0" in again.out
    assert kube.proxies()["node-1"] == node_1  # node-1's proxy is the one the first run made
    assert all(img.endswith(":1.31.0") for _, img in kube.proxies().values())

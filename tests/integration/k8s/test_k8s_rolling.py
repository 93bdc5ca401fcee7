"""`pyztunnel upgrade --kubeconfig` rolling, rollback and dry run against the stand-in API server, whose DaemonSet
controller (not the test) enforces reference §3: surge replacement once the new pod is available, revision hashes."""

from __future__ import annotations

import copy
from typing import Any

from pyztunnel.kubeapi.store import Event, Store
from tests.integration.k8s.conftest import NS, Kube


def record_pods(kube: Kube) -> list[tuple[str, str, str, bool, bool]]:
    """Every pod event from now on: (type, name, node, ready, terminating)."""
    seen: list[tuple[str, str, str, bool, bool]] = []

    def on(event: Event) -> None:
        if event.plural == "pods":
            o = event.obj
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (o.get("status") or {}).get("conditions") or []
            )
            seen.append(
                (
                    event.type,
                    o["metadata"]["name"],
                    o["spec"].get("nodeName", ""),
                    ready,
                    "deletionTimestamp" in o["metadata"],
                )
            )

    kube.api.call(lambda: kube.api.store.listen(on))
    return seen


def test_rolling_patches_the_image_and_follows_rollout_status(kube: Kube) -> None:
    before = kube.proxies()
    events = record_pods(kube)
    done = kube.upgrade("--version", "1.31.0")
    assert done.code == 0, done.err
    assert "upgrade to 1.31.0 done on 3 node(s)" in done.out
    assert kube.image() == "gcr.io/istio-release/ztunnel:1.31.0"
    status = kube.get("daemonsets", "ztunnel")["status"]
    assert status["updatedNumberScheduled"] == status["numberAvailable"] == status["desiredNumberScheduled"] == 3
    after = kube.proxies()
    assert set(after) == set(before) and all(after[n][0] != before[n][0] for n in before)
    # maxSurge 1 (the chart's default), done by the stand-in's controller: on each node the new pod was Ready before
    # the old one was deleted, and at most one node had two live pods at a time.
    for node, (old, _) in before.items():
        first_delete = next(i for i, e in enumerate(events) if e[1] == old and e[4])
        new_ready = next(i for i, e in enumerate(events) if e[2] == node and e[1] == after[node][0] and e[3])
        assert new_ready < first_delete, node
    # The live view showed the new revision per node.
    revision = kube.proxies()
    assert revision and "revision" in done.out


def test_rollback_restores_the_whole_previous_template(kube: Kube) -> None:
    original = copy.deepcopy(kube.get("daemonsets", "ztunnel")["spec"]["template"])
    assert kube.upgrade("--version", "1.31.0").code == 0
    # Someone also changes the env after our rollout (kubectl set env): a rollback must not keep that either.
    ds = kube.get("daemonsets", "ztunnel")
    ds["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    kube.api.call(lambda: kube.api.store.replace("daemonsets", NS, "ztunnel", ds))
    back = kube.upgrade("--rollback")
    assert back.code == 0, back.err
    assert "rollback to 1.30.3 done" in back.out
    assert kube.get("daemonsets", "ztunnel")["spec"]["template"] == original
    kube.api.settled()
    assert {img for _, img in kube.proxies().values()} == {"gcr.io/istio-release/ztunnel:1.30.3"}


def test_rollback_while_another_template_is_stuck_mid_surge(kube: Kube) -> None:
    """The full suite's hang: a rollback that lands while the controller surges someone else's template change finds
    two old pods on a node; the stand-in's controller left both (no pod of the restored revision could come there,
    the rollback waited for ever). The other change's new pod never becomes Ready here, so the moment lasts."""
    original = copy.deepcopy(kube.get("daemonsets", "ztunnel")["spec"]["template"])
    assert kube.upgrade("--version", "1.31.0").code == 0
    ds = kube.get("daemonsets", "ztunnel")
    ds["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "STANDIN_NOT_READY", "value": "1"})
    kube.api.call(lambda: kube.api.store.replace("daemonsets", NS, "ztunnel", ds))

    def surging(store: Store) -> bool:
        live = [p for p in store.list("pods", NS) if "deletionTimestamp" not in p["metadata"]]
        started = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
        return len(live) == 4 and len(started) == 4  # three 1.31.0 pods and the not-ready one beside one of them

    kube.api.wait(surging, what="a node with its 1.31.0 pod and the never-ready one")
    back = kube.upgrade("--rollback", "--ready-timeout", "30s")
    assert back.code == 0, back.err
    assert kube.get("daemonsets", "ztunnel")["spec"]["template"] == original
    kube.api.settled()
    assert sorted(img for _, img in kube.proxies().values()) == ["gcr.io/istio-release/ztunnel:1.30.3"] * 3


def test_rollback_without_saved_state_uses_the_controllerrevisions(kube: Kube) -> None:
    assert kube.upgrade("--version", "1.31.0").code == 0
    ds = kube.get("daemonsets", "ztunnel")
    ds["metadata"]["annotations"].pop("pyztunnel.io/rollout")  # as if the state were lost
    kube.api.call(lambda: kube.api.store.replace("daemonsets", NS, "ztunnel", ds))
    back = kube.upgrade("--rollback")
    assert back.code == 0, back.err
    assert kube.image().endswith(":1.30.3")


def test_a_new_pod_that_never_becomes_ready_stops_with_its_cause_and_restores(kube: Kube) -> None:
    failed = kube.upgrade("--version", "crash-1.31", "--ready-timeout", "1s", "--grace", "5")
    assert failed.code == 2
    line = failed.err.strip()
    assert line.count("\n") == 0, line
    assert "not ready within 1s" in line and "exit code 1 (Error)" in line and "restart" in line
    assert "its log says:" in line and "exits with 1" in line  # the proxy's own error line
    assert "cordoned nodes: none" in failed.out and "resume state (annotation pyztunnel.io/rollout" in failed.out
    # The whole previous template is back (the grace too, not only the tag) and the controller rolled back.
    template = kube.get("daemonsets", "ztunnel")["spec"]["template"]
    assert template["spec"]["terminationGracePeriodSeconds"] == 30
    assert {"name": "TERMINATION_GRACE_PERIOD_SECONDS", "value": "30"} in template["spec"]["containers"][0]["env"]
    kube.api.settled()
    assert {img for _, img in kube.proxies().values()} == {"gcr.io/istio-release/ztunnel:1.30.3"}


def test_dry_run_prints_the_plan_and_changes_nothing(kube: Kube) -> None:
    before = kube.get("daemonsets", "ztunnel")
    plan = kube.upgrade("--version", "1.31.0", "--strategy", "drain", "--dry-run")
    assert plan.code == 0, plan.err
    assert "dry run: upgrade to 1.31.0 (drain)" in plan.out
    for node in ("node-1", "node-2", "node-3"):
        assert f"{node}: cordon; evict nothing; delete ztunnel-" in plan.out
    assert kube.get("daemonsets", "ztunnel") == before


def spec_of(kube: Kube) -> dict[str, Any]:
    spec: dict[str, Any] = kube.get("daemonsets", "ztunnel")["spec"]
    return spec

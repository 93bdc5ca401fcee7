"""A Sail-operator-owned DaemonSet (the stand-in plays the operator's reconcile) and the canary on Kubernetes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pyztunnel.kubeapi import seed
from pyztunnel.kubeapi.harness import StandIn
from tests.integration.k8s.conftest import FAST, Kube

ZNS = "ztunnel"


@pytest.fixture
def sail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Kube]:
    with StandIn(FAST, sail=True) as api:
        api.seed(3, namespace=ZNS)
        api.create("ztunnels", seed.ztunnel_cr("v1.30.3", ZNS))
        api.settled(ZNS)
        yield Kube(api, api.kubeconfig(tmp_path / "kubeconfig"), capsys)


def test_sail_owned_daemonset_is_upgraded_through_the_ztunnel_resource(sail: Kube) -> None:
    # Why: a direct edit of the DaemonSet is reverted by the operator.
    ds = sail.get("daemonsets", "ztunnel", ZNS)
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = "gcr.io/istio-release/ztunnel:9.9.9"
    sail.api.call(lambda: sail.api.store.replace("daemonsets", ZNS, "ztunnel", ds))
    sail.api.settled(ZNS)
    assert sail.get("daemonsets", "ztunnel", ZNS)["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        ":1.30.3"
    )

    done = sail.upgrade("--version", "v1.31.0", "--strategy", "drain", "--grace", "60")
    assert done.code == 0, done.err
    assert "ztunnel/ztunnel at http" in done.out
    cr = sail.get("ztunnels", "default", None)
    assert cr["spec"]["version"] == "v1.31.0"
    values = cr["spec"]["values"]["ztunnel"]
    assert values["terminationGracePeriodSeconds"] == 60
    # OnDelete during the drain (the seed's step 1, in the resource), the previous strategy back at the end.
    assert values["updateStrategy"]["type"] == "RollingUpdate"
    assert cr["status"]["observedGeneration"] == cr["metadata"]["generation"]
    ds = sail.get("daemonsets", "ztunnel", ZNS)
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "gcr.io/istio-release/ztunnel:1.31.0"
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    pods = [p for p in sail.list("pods", ZNS) if "deletionTimestamp" not in p["metadata"]]
    assert len(pods) == 3 and {p["spec"]["containers"][0]["image"] for p in pods} == {
        ds["spec"]["template"]["spec"]["containers"][0]["image"]
    }


def test_sail_rolling_and_rollback(sail: Kube) -> None:
    assert sail.upgrade("--version", "v1.31.0").code == 0
    assert sail.get("ztunnels", "default", None)["spec"]["version"] == "v1.31.0"
    back = sail.upgrade("--rollback")
    assert back.code == 0, back.err
    assert sail.get("ztunnels", "default", None)["spec"]["version"] == "v1.30.3"
    sail.api.settled(ZNS)
    assert {img for _, img in sail.proxies_in(ZNS).values()} == {"gcr.io/istio-release/ztunnel:1.30.3"}


def test_canary_with_failing_connections_halts_and_rolls_back(kube: Kube) -> None:
    before = kube.proxies()
    result = kube.upgrade(
        "--version", "failing-1.31", "--canary", "1", "--bake", "5s", "--canary-interval", "0.2s", "--auto-rollback"
    )
    assert result.code == 2
    line = result.err.strip()
    assert line.count("\n") == 0
    assert "canary halted after" in line and "on node-1" in line
    assert "connection failures" in line and "istio_tcp_connections_failed_total" in line
    assert "rolled back: node-1 run 1.30.3 again" in line
    after = kube.proxies()
    assert {img for _, img in after.values()} == {"gcr.io/istio-release/ztunnel:1.30.3"}
    assert after["node-2"] == before["node-2"] and after["node-3"] == before["node-3"]  # never touched
    assert kube.image().endswith(":1.30.3")


def test_canary_halt_without_auto_rollback_keeps_the_canary_for_inspection(kube: Kube) -> None:
    result = kube.upgrade("--version", "failing-1.31", "--canary", "1", "--bake", "5s", "--canary-interval", "0.2s")
    assert result.code == 2
    assert "the canary nodes keep failing-1.31 for inspection" in result.err
    assert kube.proxies()["node-1"][1].endswith(":failing-1.31")
    assert kube.image().endswith(":1.30.3")  # the template is back: nothing spreads the canary
    back = kube.upgrade("--rollback")
    assert back.code == 0, back.err
    assert {img for _, img in kube.proxies().values()} == {"gcr.io/istio-release/ztunnel:1.30.3"}


def test_a_good_canary_bakes_then_the_rest_rolls(kube: Kube) -> None:
    result = kube.upgrade("--version", "1.31.0", "--canary", "1", "--bake", "0.5s", "--canary-interval", "0.2s")
    assert result.code == 0, result.err
    assert {img for _, img in kube.proxies().values()} == {"gcr.io/istio-release/ztunnel:1.31.0"}
    assert kube.get("daemonsets", "ztunnel")["spec"]["updateStrategy"]["type"] == "RollingUpdate"

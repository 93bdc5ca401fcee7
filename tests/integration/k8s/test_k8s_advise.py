"""`pyztunnel advise --kubeconfig`: the proxy pods' access logs read through the API server, the recommendation,
and --apply patching terminationGracePeriodSeconds (and its env) into the DaemonSet."""

from __future__ import annotations

import json

from tests.integration.k8s.conftest import NS, Kube


def access_line(seconds: float) -> str:
    return json.dumps(
        {
            "level": "info",
            "time": "2026-01-01T00:00:00.000000Z",
            "scope": "access",
            "message": "connection complete",
            "src.addr": "10.244.2.3:51234",
            "src.workload": "client",
            "src.namespace": "default",
            "dst.addr": "10.244.1.4:8080",
            "dst.workload": "httpbin-0",
            "dst.namespace": "default",
            "dst.service": "httpbin.default.svc.cluster.local",
            "direction": "inbound",
            "bytes_sent": 2000,
            "bytes_recv": 10,
            "duration": f"{int(seconds * 1000)}ms",
        }
    )


def test_advise_reads_the_proxy_logs_and_applies_the_grace(kube: Kube) -> None:
    def inject() -> None:
        for i, pod in enumerate(kube.api.store.list("pods", NS)):
            lines = kube.api.sim.nodes.logs.setdefault(pod["metadata"]["uid"], [])
            lines += [access_line(5 + i), access_line(60 + i), "2026-01-01T00:00:00Z info ztunnel other line"]

    kube.api.call(inject)
    advice = kube.run("advise")
    assert advice.code == 0, advice.err
    assert "Read 6 connections from 3 input(s)" in advice.out  # two per proxy pod, read as kubectl logs would
    assert "terminationGracePeriodSeconds" in advice.out
    applied = kube.run("advise", "--apply")
    assert applied.code == 0, applied.err
    assert "applied to daemonset istio-system/ztunnel" in applied.out
    template = kube.get("daemonsets", "ztunnel")["spec"]["template"]["spec"]
    grace = template["terminationGracePeriodSeconds"]
    assert grace > 60  # covers the 62 s connections
    assert {"name": "TERMINATION_GRACE_PERIOD_SECONDS", "value": str(grace)} in template["containers"][0]["env"]
    assert f"{grace}" in applied.out


def test_advise_without_logs_or_kubeconfig_is_one_line(kube: Kube) -> None:
    result = kube.run("advise", kubeconfig=False)
    assert result.code == 2 and "--kubeconfig to read the proxy pods' logs" in result.err

"""Objects to start a stand-in cluster with: nodes, Istio's ztunnel DaemonSet (the chart's shape: reference §1),
ReplicaSets, PodDisruptionBudgets, a bare pod, a Sail `ZTunnel`."""

from __future__ import annotations

from typing import Any

ISTIO_HUB = "gcr.io/istio-release"


def node(name: str, index: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "addresses": [{"type": "InternalIP", "address": f"10.240.0.{index}"}],
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": f"boot-{index}",
                "containerRuntimeVersion": "stand-in://1",
                "kernelVersion": "6.1.0",
                "kubeProxyVersion": "v1.32.0",
                "kubeletVersion": "v1.32.0-stand-in",
                "machineID": f"machine-{index}",
                "operatingSystem": "linux",
                "osImage": "stand-in",
                "systemUUID": f"uuid-{index}",
            },
        },
    }


def ztunnel_daemonset(
    tag: str = "1.30.3",
    *,
    name: str = "ztunnel",
    grace: int = 30,
    strategy: dict[str, Any] | None = None,
    hub: str = ISTIO_HUB,
) -> dict[str, Any]:
    """Istio's ztunnel DaemonSet as its Helm chart renders it (the parts a rollout touches)."""
    return {
        "metadata": {"name": name, "labels": {"app": "ztunnel", "app.kubernetes.io/name": "ztunnel"}},
        "spec": {
            "selector": {"matchLabels": {"app": "ztunnel"}},
            "updateStrategy": strategy
            or {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": {"app": "ztunnel", "sidecar.istio.io/inject": "false"},
                    "annotations": {"prometheus.io/port": "15020", "prometheus.io/scrape": "true"},
                },
                "spec": {
                    "serviceAccountName": "ztunnel",
                    "priorityClassName": "system-node-critical",
                    "terminationGracePeriodSeconds": grace,
                    "tolerations": [
                        {"effect": "NoSchedule", "operator": "Exists"},
                        {"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"effect": "NoExecute", "operator": "Exists"},
                    ],
                    "containers": [
                        {
                            "name": "istio-proxy",
                            "image": f"{hub}/ztunnel:{tag}",
                            "args": ["proxy", "ztunnel"],
                            "ports": [{"containerPort": 15020, "name": "ztunnel-stats", "protocol": "TCP"}],
                            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                            "env": [
                                {"name": "TERMINATION_GRACE_PERIOD_SECONDS", "value": str(grace)},
                                {"name": "RUST_LOG", "value": "info"},
                            ],
                        }
                    ],
                },
            },
        },
    }


def replicaset(name: str, replicas: int, *, grace: int = 5, emptydir: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace,
        "containers": [{"name": name, "image": "docker.io/kennethreitz/httpbin"}],
    }
    if emptydir:
        spec["volumes"] = [{"name": "cache", "emptyDir": {}}]
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def pdb(name: str, app: str, min_available: int | str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }


def bare_pod(name: str, node_name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node_name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": name, "image": "busybox"}],
        },
    }


def ztunnel_cr(version: str = "v1.30.3", namespace: str = "ztunnel", **values: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sailoperator.io/v1",
        "kind": "ZTunnel",
        "metadata": {"name": "default"},
        "spec": {"version": version, "namespace": namespace, "values": {"ztunnel": dict(values)}},
    }

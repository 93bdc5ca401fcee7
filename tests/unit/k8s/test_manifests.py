"""The DaemonSet is ztunnel's (reference kubernetes.md §1: args, probe, ports, priority, tolerations, capabilities,
the istio-ca token, the ZDS hostPath, the downward-API env) plus pyztunnel's handoff directory and switches."""

from __future__ import annotations

from typing import Any

import pytest

from pyztunnel import settings
from pyztunnel.k8s import manifests
from pyztunnel.k8s.values import effective, proxy_switches
from pyztunnel.proxy import cli as proxy_cli
from pyztunnel.proxy.config import ProxySettings


def render(**user: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    account, daemonset = manifests.render(effective(user), "istio-system")
    return account, daemonset


def pod(daemonset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


def env(daemonset: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod(daemonset)["containers"][0]["env"]}


def test_the_daemonset_is_ztunnels() -> None:
    account, daemonset = render()
    assert account["metadata"]["name"] == pod(daemonset)["serviceAccountName"] == "ztunnel"
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert daemonset["spec"]["selector"] == {"matchLabels": {"app": "ztunnel"}}
    spec = pod(daemonset)
    (container,) = spec["containers"]
    assert container["name"] == "istio-proxy"
    assert container["args"] == ["proxy", "ztunnel"]
    assert container["readinessProbe"] == {"httpGet": {"port": 15021, "path": "/healthz/ready"}}
    assert "livenessProbe" not in container
    assert container["ports"] == [{"containerPort": 15020, "name": "ztunnel-stats", "protocol": "TCP"}]
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "512Mi"}}
    security = container["securityContext"]
    assert security["privileged"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]}
    assert (security["runAsUser"], security["runAsGroup"]) == (0, 1337)
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert {"effect": "NoSchedule", "operator": "Exists"} in spec["tolerations"]
    assert {"effect": "NoExecute", "operator": "Exists"} in spec["tolerations"]
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in spec["tolerations"]
    assert "hostNetwork" not in spec
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "15020" and annotations["prometheus.io/scrape"] == "true"


def test_volumes_token_ca_root_zds_and_handoff() -> None:
    _, daemonset = render()
    volumes = {v["name"]: v for v in pod(daemonset)["volumes"]}
    token = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"path": "istio-token", "expirationSeconds": 43200, "audience": "istio-ca"}
    assert volumes["istiod-ca-cert"]["configMap"] == {"name": "istio-ca-root-cert"}
    assert volumes["cni-ztunnel-sock-dir"]["hostPath"] == {"path": "/var/run/ztunnel", "type": "DirectoryOrCreate"}
    assert volumes["pyztunnel-handoff-dir"]["hostPath"] == {"path": "/var/run/pyztunnel", "type": "DirectoryOrCreate"}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    mounts = {m["name"]: m["mountPath"] for m in pod(daemonset)["containers"][0]["volumeMounts"]}
    assert mounts == {
        "istiod-ca-cert": "/var/run/secrets/istio",
        "istio-token": "/var/run/secrets/tokens",
        "cni-ztunnel-sock-dir": "/var/run/ztunnel",
        "tmp": "/tmp",
        "pyztunnel-handoff-dir": "/var/run/pyztunnel",
    }


def test_environment_matches_ztunnels_and_the_proxys_declarations() -> None:
    _, daemonset = render()
    variables = env(daemonset)
    assert variables["CA_ADDRESS"] == variables["XDS_ADDRESS"] == "istiod.istio-system.svc:15012"
    assert variables["RUST_LOG"] == "info" and "LOG_FORMAT" not in variables
    assert variables["ISTIO_META_CLUSTER_ID"] == "Kubernetes" and variables["INPOD_ENABLED"] == "true"
    assert variables["TERMINATION_GRACE_PERIOD_SECONDS"] == "30"
    downward = {name: variables[name]["fieldRef"]["fieldPath"] for name in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME")}
    assert downward == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "NODE_NAME": "spec.nodeName",
    }
    assert variables["INSTANCE_IP"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert variables["SERVICE_ACCOUNT"]["fieldRef"]["fieldPath"] == "spec.serviceAccountName"
    assert variables["ZTUNNEL_CPU_LIMIT"] == {"resourceFieldRef": {"resource": "limits.cpu"}}
    # The proxy reads what the chart sets: every pyztunnel variable is a declared setting of the proxy.
    loaded = settings.load(ProxySettings, environ={k: v for k, v in variables.items() if isinstance(v, str)})
    assert str(loaded.inpod_uds) == "/var/run/ztunnel/ztunnel.sock"
    assert str(loaded.handoff_socket) == "/var/run/pyztunnel/handoff.sock"
    assert loaded.termination_grace_period_seconds == 30
    for decl in proxy_switches():
        assert variables[str(decl.info.env)] == "true"


def test_switches_and_handoff_dir_come_from_values() -> None:
    _, daemonset = render(pyztunnel={"handoffDir": "/run/pzt", "tcpMigrateReq": False})
    variables = env(daemonset)
    assert variables["PYZTUNNEL_TCP_MIGRATE_REQ"] == "false"
    assert variables["PYZTUNNEL_HANDOFF_SOCKET"] == "/run/pzt/handoff.sock"
    assert {"PYZTUNNEL_LISTENER_HANDOFF", "PYZTUNNEL_CONNECTION_MIGRATION", "PYZTUNNEL_HBONE_RESUME"} <= set(variables)


@pytest.mark.parametrize(
    ("user", "image"),
    [
        ({}, "docker.io/library/pyztunnel:0.1.0"),
        ({"hub": "quay.io/me", "tag": "2.0", "variant": "debug"}, "quay.io/me/pyztunnel:2.0-debug"),
        ({"image": "reg.example/x/pyz@sha256:ab"}, "reg.example/x/pyz@sha256:ab"),
        ({"image": "custom", "hub": "h"}, "h/custom:0.1.0"),
        ({"global": {"hub": "g", "tag": "1"}, "ztunnel": {"tag": "3"}}, "g/pyztunnel:3"),
    ],
)
def test_image_reference(user: dict[str, Any], image: str) -> None:
    _, daemonset = render(**user)
    assert pod(daemonset)["containers"][0]["image"] == image


def test_revision_names_istiod_and_annotates() -> None:
    _, daemonset = render(revision="canary", istioNamespace="mesh")
    assert env(daemonset)["CA_ADDRESS"] == "istiod-canary.mesh.svc:15012"
    assert daemonset["metadata"]["annotations"] == {"istio.io/rev": "canary"}
    assert daemonset["metadata"]["labels"]["istio.io/rev"] == "canary"


def test_user_env_comes_last_and_wins() -> None:
    _, daemonset = render(env={"PYZTUNNEL_HBONE_RESUME": False, "A": 1.5})
    names = [e["name"] for e in pod(daemonset)["containers"][0]["env"]]
    assert names[-2:] == ["A", "PYZTUNNEL_HBONE_RESUME"]
    assert pod(daemonset)["containers"][0]["env"][-1]["value"] == "false"


def test_the_rendered_args_start_the_real_proxy_command() -> None:
    """`proxy ztunnel` parses with the real `pyztunnel proxy` command (its MODE argument)."""
    _, daemonset = render()
    args = pod(daemonset)["containers"][0]["args"]
    assert args[0] == "proxy"
    context = proxy_cli.proxy.make_context("proxy", list(args[1:]))
    assert context.params["mode"] == "ztunnel"


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (1.0, "1"),
        (1.5, "1.5"),
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (1e-05, "1e-05"),
        (-2.5, "-2.5"),
        (100.0, "100"),
        (True, "true"),
        (7, "7"),
        ("x", "x"),
    ],
)
def test_go_string_prints_scalars_as_go_does(value: Any, printed: str) -> None:
    """fmt's %v, which `{{ $value | quote }}` uses; the parity test's `everything` case checks it against helm."""
    assert manifests.go_string(value) == printed

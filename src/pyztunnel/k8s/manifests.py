"""The objects of the chart, rendered without Helm: what `helm template ztunnel deploy/chart` renders, object for
object (tests/unit/k8s/test_helm_parity.py runs both). The one difference: `app.kubernetes.io/managed-by` says who
rendered it (`pyztunnel`, not `Helm`).

The DaemonSet is Istio's ztunnel DaemonSet (reference kubernetes.md §1) plus what pyztunnel's upgrade mechanisms need:
the node directory of the listener-handoff socket (a hostPath both pods of a surge mount), the ZDS socket path
(INPOD_UDS; ztunnel derives it from INPOD_ENABLED) and the proxy's PYZTUNNEL_* switches.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
from collections.abc import Callable
from typing import Any

import yaml

from pyztunnel import __version__, settings
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.k8s.values import Values, proxy_switches
from pyztunnel.proxy.config import ProxySettings

CHART_NAME = "ztunnel"
RELEASE_NAME = "ztunnel"
MANAGED_BY = "pyztunnel"
ZDS_DIR = "/var/run/ztunnel"
ZDS_SOCKET = f"{ZDS_DIR}/ztunnel.sock"
HANDOFF_SOCKET_NAME = "handoff.sock"


def env_of(cls: type[Any], field: str) -> str:
    """The environment variable of a declared setting (settings.py): the chart uses the names the proxy reads."""
    for decl in settings.declared(cls):
        if decl.name == field and decl.info.env:
            return decl.info.env
    raise KeyError(f"{cls.__name__}.{field} declares no environment variable")


def go_string(value: Any) -> str:
    """A scalar as Go's fmt %v prints it (what `"{{ $val }}"` gives in a Helm template)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64) as fmt's %v uses it: the shortest digits; %e when the decimal exponent
    is < -4 or ≥ 6 (1e+06, 1.5e-05), else plain (0.0001, 123456)."""
    if not math.isfinite(value):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    if value == 0:
        return "-0" if repr(value).startswith("-") else "0"
    sign, digit_tuple, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # where the decimal point sits in `digits`
    prefix = "-" if sign else ""
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def release_name(values: Values) -> str:
    return values.resourceName or "ztunnel"


def istiod_address(values: Values) -> str:
    revision = f"-{values.revision}" if values.revision else ""
    return f"istiod{revision}.{values.istioNamespace}.svc:15012"


def image_of(values: Values) -> str:
    if "/" in values.image:
        return values.image
    variant = f"-{values.variant}" if values.variant else ""
    return f"{values.hub}/{values.image or 'pyztunnel'}:{values.tag}{variant}"


def common_labels(values: Values) -> dict[str, str]:
    """Istio's `istio.labels`, with our chart's name and version."""
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/instance": RELEASE_NAME,
        "app.kubernetes.io/part-of": "istio",
        "app.kubernetes.io/version": __version__,
        "istio.io/rev": values.revision or "default",
        "helm.sh/chart": f"{CHART_NAME}-{__version__.replace('+', '_')}",
    }


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


@dataclasses.dataclass(frozen=True)
class SettingEnv:
    """One of pyztunnel's own variables: its value here, and the same as a Helm template expression."""

    name: str
    value: Callable[[Values], str]
    template: str


def settings_env_table() -> list[SettingEnv]:
    """pyztunnel's variables, from the proxy's declarations: rendered here and generated into the chart's
    templates/_settings_env.tpl (chartgen), so the two renderers cannot name or default them differently."""
    table = [
        SettingEnv(env_of(ProxySettings, "inpod_uds"), lambda v: ZDS_SOCKET, f'"{ZDS_SOCKET}"'),
        SettingEnv(
            env_of(ProxySettings, "handoff_socket"),
            lambda v: f"{v.pyztunnel.handoffDir}/{HANDOFF_SOCKET_NAME}",
            f'{{{{ printf "%s/{HANDOFF_SOCKET_NAME}" .Values.pyztunnel.handoffDir | quote }}}}',
        ),
    ]
    for decl in proxy_switches():
        key = decl.yaml_key
        table.append(
            SettingEnv(
                str(decl.info.env),
                lambda v, key=key: go_string(getattr(v.pyztunnel, key)),  # type: ignore[misc]
                f"{{{{ .Values.pyztunnel.{key} | quote }}}}",
            )
        )
    return table


def settings_env(values: Values) -> list[dict[str, Any]]:
    return [{"name": entry.name, "value": entry.value(values)} for entry in settings_env_table()]


def container_env(values: Values) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": env_of(CaClientSettings, "ca_address"), "value": values.caAddress or istiod_address(values)},
        {"name": "XDS_ADDRESS", "value": values.xdsAddress or istiod_address(values)},
    ]
    if values.logAsJson:
        env.append({"name": "LOG_FORMAT", "value": "json"})
    if values.network:
        env.append({"name": "NETWORK", "value": values.network})
    env += [
        {"name": "RUST_LOG", "value": values.logLevel},
        {"name": "RUST_BACKTRACE", "value": "1"},
        {"name": "ISTIO_META_CLUSTER_ID", "value": values.multiCluster.clusterName or "Kubernetes"},
        {"name": "INPOD_ENABLED", "value": "true"},
        {
            "name": env_of(ProxySettings, "termination_grace_period_seconds"),
            "value": str(values.terminationGracePeriodSeconds),
        },
        _field(env_of(ProxySettings, "pod_name"), "metadata.name"),
        _field("POD_NAMESPACE", "metadata.namespace"),
        _field(env_of(ProxySettings, "node_name"), "spec.nodeName"),
        _field("INSTANCE_IP", "status.podIP"),
        _field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
    env += [
        {"name": k, "value": go_string(v)} for k, v in sorted(values.meshConfig.defaultConfig.proxyMetadata.items())
    ]
    env.append({"name": "ZTUNNEL_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}})
    env += settings_env(values)
    env += [{"name": k, "value": go_string(v)} for k, v in sorted(values.env.items())]
    return env


def _security_context(values: Values) -> dict[str, Any]:
    context: dict[str, Any] = {
        # CAP_SYS_ADMIN implies privilege escalation; Istio's chart states it (kubernetes/kubernetes#119568).
        "allowPrivilegeEscalation": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]},
        "readOnlyRootFilesystem": True,
        "runAsGroup": 1337,
        "runAsNonRoot": False,
        "runAsUser": 0,
    }
    if values.seLinuxOptions:
        context["seLinuxOptions"] = values.seLinuxOptions
    return context


def _container(values: Values) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "istio-proxy",
        "image": image_of(values),
        "ports": [{"containerPort": 15020, "name": "ztunnel-stats", "protocol": "TCP"}],
        "resources": values.resources,
    }
    if values.imagePullPolicy:
        container["imagePullPolicy"] = values.imagePullPolicy
    container |= {
        "securityContext": _security_context(values),
        "readinessProbe": {"httpGet": {"port": 15021, "path": "/healthz/ready"}},
        "args": ["proxy", "ztunnel"],
        "env": container_env(values),
        "volumeMounts": [
            {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
            {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
            {"mountPath": ZDS_DIR, "name": "cni-ztunnel-sock-dir"},
            {"mountPath": "/tmp", "name": "tmp"},
            {"mountPath": values.pyztunnel.handoffDir, "name": "pyztunnel-handoff-dir"},
            *values.volumeMounts,
        ],
    }
    return container


def _ca_root_volume(values: Values) -> dict[str, Any]:
    if values.env.get("ENABLE_CLUSTER_TRUST_BUNDLE_API") is True:
        bundle = f"istio.io:istiod-ca:{values.trustBundleName or 'root-cert'}"
        source = {"clusterTrustBundle": {"name": bundle, "path": "root-cert.pem"}}
        return {"name": "istiod-ca-cert", "projected": {"sources": [source]}}
    return {"name": "istiod-ca-cert", "configMap": {"name": values.trustBundleName or "istio-ca-root-cert"}}


def _volumes(values: Values) -> list[dict[str, Any]]:
    token = {"path": "istio-token", "expirationSeconds": 43200, "audience": "istio-ca"}
    return [
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": token}]}},
        _ca_root_volume(values),
        # istio-cni may not have started yet: the directory, not the socket.
        {"name": "cni-ztunnel-sock-dir", "hostPath": {"path": ZDS_DIR, "type": "DirectoryOrCreate"}},
        {"name": "tmp", "emptyDir": {}},
        # Per node, so that the new pod of a surge (or of a drain) finds the old one's handoff socket.
        {
            "name": "pyztunnel-handoff-dir",
            "hostPath": {"path": values.pyztunnel.handoffDir, "type": "DirectoryOrCreate"},
        },
        *values.volumes,
    ]


def _pod_spec(values: Values) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeSelector": {"kubernetes.io/os": "linux", **values.nodeSelector}}
    if values.affinity:
        spec["affinity"] = values.affinity
    spec["serviceAccountName"] = release_name(values)
    if values.tolerations:
        spec["tolerations"] = values.tolerations
    if values.dnsPolicy:
        spec["dnsPolicy"] = values.dnsPolicy
    if values.dnsConfig:
        spec["dnsConfig"] = values.dnsConfig
    spec["containers"] = [_container(values)]
    if values.priorityClassName:
        spec["priorityClassName"] = values.priorityClassName
    spec["terminationGracePeriodSeconds"] = values.terminationGracePeriodSeconds
    spec["volumes"] = _volumes(values)
    return spec


def daemonset(values: Values, namespace: str) -> dict[str, Any]:
    annotations = dict(values.annotations)
    pod_annotations = {"sidecar.istio.io/inject": "false"}
    if values.revision:
        annotations["istio.io/rev"] = values.revision
        pod_annotations["istio.io/rev"] = values.revision
    pod_labels = {
        "sidecar.istio.io/inject": "false",
        "istio.io/dataplane-mode": "none",
        "app": "ztunnel",
        "app.kubernetes.io/name": "ztunnel",
        **common_labels(values),
        **values.podLabels,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": release_name(values),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "ztunnel", **common_labels(values), **values.labels},
            "annotations": annotations,
        },
        "spec": {
            "updateStrategy": values.updateStrategy.model_dump(),  # null kept, as toYaml keeps it
            "selector": {"matchLabels": {"app": "ztunnel"}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {**pod_annotations, **values.podAnnotations}},
                "spec": _pod_spec(values),
            },
        },
    }


def service_account(values: Values, namespace: str) -> dict[str, Any]:
    """istiod's CA trusts the node proxy's impersonation only from `<istio ns>/ztunnel` (CA_TRUSTED_NODE_ACCOUNTS)."""
    account: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount"}
    if values.imagePullSecrets:
        account["imagePullSecrets"] = [{"name": name} for name in values.imagePullSecrets]
    account["metadata"] = {
        "name": release_name(values),
        "namespace": namespace,
        "labels": {"app.kubernetes.io/name": "ztunnel", **common_labels(values), **values.labels},
    }
    return account


def render(values: Values, namespace: str) -> list[dict[str, Any]]:
    if values.resourceScope == "cluster":
        return []
    return [service_account(values, namespace), daemonset(values, namespace)]


def dump(objects: list[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False) for obj in objects)

"""The chart's values, declared once: the names and defaults of Istio's ztunnel chart (reference kubernetes.md §1,
ztunnel.md §8), plus `pyztunnel.*` derived from the proxy's own declared switches.

`Values` is the effective set the templates read. What a user passes may come in three shapes, all accepted, merged
as Istio's chart merges them (its `zzz_profile.yaml`; last wins, maps merged key by key, anything else replaced):
the defaults (`_internal_defaults_do_not_set`, as Istio nests them), then `global.*` (a Sail CR's `values.global`),
then top-level values (`--set tag=…`, as with `helm install ztunnel istio/ztunnel`), then `ztunnel.*` (a Sail CR's
`values.ztunnel`, applied unchanged). From these models come `values.yaml` and `values.schema.json` (chartgen),
and the validation of `pyztunnel k8s manifests`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from pyztunnel import __version__, settings
from pyztunnel.errors import UserError
from pyztunnel.proxy.config import ProxySettings

DEFAULTS_KEY = "_internal_defaults_do_not_set"
Scalar = str | int | float | bool
IntOrString = int | str


class _Strict(BaseModel):
    # As Helm's schema check: unknown keys and wrong types are errors, nothing is coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class RollingUpdate(_Strict):
    maxSurge: IntOrString | None = 1
    maxUnavailable: IntOrString | None = 0


class UpdateStrategy(_Strict):
    """K8s DaemonSetUpdateStrategy, copied verbatim into the DaemonSet (as Istio's chart does)."""

    type: Literal["RollingUpdate", "OnDelete"] = "RollingUpdate"
    rollingUpdate: RollingUpdate | None = Field(default_factory=RollingUpdate)


class MultiCluster(_Strict):
    clusterName: str = Field(default="", description="the cluster's name → ISTIO_META_CLUSTER_ID (default Kubernetes)")


class DefaultConfig(_Strict):
    proxyMetadata: dict[str, Scalar] = Field(default_factory=dict, description="extra environment variables")


class MeshConfig(_Strict):
    defaultConfig: DefaultConfig = Field(default_factory=DefaultConfig)


class ResourceQuotas(_Strict):
    enabled: bool = Field(
        default=False, description="accepted for Istio's chart; ignored (no ResourceQuota is rendered)"
    )
    pods: int = 5000


def _switch_fields() -> dict[str, Any]:
    """Every PYZTUNNEL_* switch the proxy declares (settings.py): one chart value each, same default and help."""
    fields: dict[str, Any] = {}
    for decl in proxy_switches():
        fields[decl.yaml_key] = (bool, Field(default=decl.default, description=f"{decl.info.env}: {decl.info.help}"))
    return fields


def proxy_switches() -> list[settings.Declared]:
    return [
        d
        for d in settings.declared(ProxySettings)
        if d.info.env and d.info.env.startswith("PYZTUNNEL_") and d.type is bool
    ]


class _PyztunnelBase(_Strict):
    handoffDir: str = Field(
        default="/var/run/pyztunnel",
        description="node directory (hostPath) of the listener-handoff socket: an old and a new pod on the same node "
        "meet there",
    )


if TYPE_CHECKING:
    PyztunnelValues = _PyztunnelBase
else:
    PyztunnelValues = create_model("PyztunnelValues", __base__=_PyztunnelBase, **_switch_fields())


class Values(_Strict):
    """The effective values (Istio's ztunnel chart's names and defaults unless said otherwise)."""

    hub: str = Field(default="docker.io/library", description="image is <hub>/<image>:<tag>[-<variant>]")
    tag: str = Field(default=__version__, description="image tag (the pyztunnel version)")
    variant: str = ""
    image: str = Field(default="pyztunnel", description="image name; used verbatim when it contains a '/'")
    imagePullPolicy: Literal["", "Always", "Never", "IfNotPresent"] = ""
    imagePullSecrets: list[str] = Field(default_factory=list, description="secret names, on the ServiceAccount")
    resourceName: str = Field(default="", description="name of the DaemonSet and ServiceAccount (default ztunnel)")
    labels: dict[str, str] = Field(default_factory=dict, description="labels of every object")
    annotations: dict[str, str] = Field(default_factory=dict, description="annotations of the DaemonSet")
    podLabels: dict[str, str] = Field(default_factory=dict)
    podAnnotations: dict[str, str] = Field(
        default_factory=lambda: {"prometheus.io/port": "15020", "prometheus.io/scrape": "true"}
    )
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volumeMounts: list[dict[str, Any]] = Field(default_factory=list)
    tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"effect": "NoSchedule", "operator": "Exists"},
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"effect": "NoExecute", "operator": "Exists"},
        ],
        description="so a new pod also lands on a cordoned or tainted node",
    )
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="added to kubernetes.io/os: linux")
    affinity: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=lambda: {"requests": {"cpu": "200m", "memory": "512Mi"}})
    resourceQuotas: ResourceQuotas = Field(default_factory=ResourceQuotas)
    env: dict[str, Scalar] = Field(default_factory=dict, description="extra environment variables (last: they win)")
    multiCluster: MultiCluster = Field(default_factory=MultiCluster)
    meshConfig: MeshConfig = Field(default_factory=MeshConfig)
    terminationGracePeriodSeconds: int = Field(
        default=30, ge=0, description="pod grace, also TERMINATION_GRACE_PERIOD_SECONDS (drain = N−5 s for N > 10)"
    )
    revision: str = Field(
        default="", description="istiod revision: istiod-<revision> is the default CA and XDS address"
    )
    caAddress: str = Field(
        default="", description="CA_ADDRESS (default istiod[-<revision>].<istioNamespace>.svc:15012)"
    )
    xdsAddress: str = Field(default="", description="XDS_ADDRESS (default as caAddress)")
    istioNamespace: str = "istio-system"
    logLevel: str = Field(
        default="info", description="RUST_LOG (trace, debug, info, warn, error, or a RUST_LOG filter)"
    )
    logAsJson: bool = Field(default=False, description="LOG_FORMAT=json")
    network: str = Field(default="", description="NETWORK (also global.network)")
    trustBundleName: str = Field(default="", description="ConfigMap of the CA root (default istio-ca-root-cert)")
    seLinuxOptions: dict[str, Any] = Field(default_factory=dict)
    updateStrategy: UpdateStrategy = Field(default_factory=UpdateStrategy)
    resourceScope: Literal["all", "cluster", "namespace"] = Field(
        default="all", description="every object here is namespaced: 'cluster' renders none"
    )
    priorityClassName: str = Field(default="system-node-critical", description="(Istio's chart: fixed to this)")
    dnsPolicy: str = ""
    dnsConfig: dict[str, Any] = Field(default_factory=dict)
    peerCaCrl: dict[str, Any] = Field(default_factory=dict, description="accepted for Sail; ignored")
    profile: str = Field(default="", description="accepted for Istio's charts; ignored (no profiles)")
    compatibilityVersion: str = Field(default="", description="accepted for Istio's charts; ignored")
    platform: str = Field(default="", description="accepted for Istio's charts; ignored")
    pyztunnel: PyztunnelValues = Field(default_factory=PyztunnelValues)


def _optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    return {name: (info.annotation | None, None) for name, info in model.model_fields.items()}  # type: ignore[operator]


# A Sail CR's values.ztunnel (and top-level user values): every field optional, unset = the default.
ValueOverrides = create_model("ValueOverrides", __base__=_Strict, **_optional_fields(Values))


class GlobalValues(BaseModel):
    """`global.*` (a Sail CR's values.global): these are flattened onto the top level, as Istio's chart does; other
    global keys (platform, logging, defaultResources, …) are accepted and unused."""

    model_config = ConfigDict(extra="allow", strict=True)
    hub: str | None = None
    tag: str | None = None
    variant: str | None = None
    imagePullPolicy: Literal["", "Always", "Never", "IfNotPresent"] | None = None
    imagePullSecrets: list[str] | None = None
    logAsJson: bool | None = None
    network: str | None = None
    trustBundleName: str | None = None


RawValues = create_model(
    "RawValues",
    __base__=ValueOverrides,
    global_=(GlobalValues | None, Field(None, alias="global")),
    ztunnel=(ValueOverrides | None, None),  # type: ignore[arg-type]
    internal_defaults=(Values | None, Field(None, alias=DEFAULTS_KEY)),
)


def defaults() -> dict[str, Any]:
    return Values().model_dump(mode="json")


def merge_overwrite(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """sprig's mustMergeOverwrite on plain data: maps merged key by key, anything else (lists, null, false, 0)
    replaces. Also Helm's merge of -f files and --set. Mutates and returns `dst`."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge_overwrite(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def effective(user: dict[str, Any]) -> Values:
    """The values the templates see, from what the user gave (all files and --set merged, in Helm's order)."""
    raw = merge_overwrite({DEFAULTS_KEY: defaults()}, user)
    try:
        RawValues.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"invalid values: {_first_error(exc)}") from None
    result = copy.deepcopy(raw[DEFAULTS_KEY])
    known = set(Values.model_fields)
    merge_overwrite(result, {k: v for k, v in (raw.get("global") or {}).items() if k in known})
    merge_overwrite(result, {k: v for k, v in raw.items() if k not in ("global", "ztunnel", DEFAULTS_KEY)})
    merge_overwrite(result, raw.get("ztunnel") or {})
    try:
        return Values.model_validate(result)
    except ValidationError as exc:
        raise UserError(f"invalid values: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")

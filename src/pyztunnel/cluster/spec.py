"""The cluster spec: nodes, deployments, services, the proxy DaemonSet, agent and CA options.

Validated on load (pydantic, strict, unknown fields rejected); every problem is reported as `FILE:LINE: what is wrong`
and the command exits with code 2. Field names follow Kubernetes where Kubernetes has one.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pyztunnel import __version__
from pyztunnel.errors import UserError
from pyztunnel.workloads import local
from pyztunnel.yamlfile import YamlError, dotted, line_of, load_with_lines, read_text

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=40)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=0, le=86400)]
Labels = dict[str, str]
MAX_NODES = 250  # node N owns 10.240.0.N and 10.244.N.0/24
DEFAULT_SPEC = "default.yaml"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NodeSpec(StrictModel):
    name: Name
    labels: Labels = {}


class TcpSocket(StrictModel):
    port: Port


class HttpGet(StrictModel):
    path: str = "/"
    port: Port


class ReadinessProbe(StrictModel):
    tcpSocket: TcpSocket | None = None
    httpGet: HttpGet | None = None
    periodSeconds: float = Field(default=1.0, gt=0, le=3600)
    timeoutSeconds: float = Field(default=1.0, gt=0, le=3600)
    failureThreshold: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> ReadinessProbe:
        if (self.tcpSocket is None) == (self.httpGet is None):
            raise ValueError("give exactly one of tcpSocket or httpGet")
        return self


class DeploymentSpec(StrictModel):
    name: Name
    namespace: Name = "default"
    replicas: int = Field(default=1, ge=0, le=1000)
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = {}
    # Files written into the pod's directory before it starts ($(VAR) expanded from the pod's environment).
    files: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")], str] = {}
    labels: Labels = {}
    serviceAccount: Name = "default"
    mesh: bool = False
    readinessProbe: ReadinessProbe | None = None
    ports: list[Port] = []
    terminationGracePeriodSeconds: Seconds = 30
    nodeSelector: Labels = {}
    nodeName: Name | None = None

    @property
    def pod_labels(self) -> Labels:
        return {"app": self.name, **self.labels}


class ServicePort(StrictModel):
    port: Port
    targetPort: Port | None = None
    name: str | None = None

    @property
    def target(self) -> int:
        return self.targetPort or self.port


class ServiceSpec(StrictModel):
    name: Name
    namespace: Name = "default"
    ports: list[ServicePort] = Field(min_length=1)
    selector: Labels = Field(min_length=1)
    useWaypoint: Name | None = None  # a service in this namespace whose pods are its waypoint (cluster/waypoints.py)

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


class RollingUpdate(StrictModel):
    maxSurge: int = Field(default=1, ge=0, le=10)
    maxUnavailable: int = Field(default=0, ge=0, le=10)

    @model_validator(mode="after")
    def _progress(self) -> RollingUpdate:
        if self.maxSurge == 0 and self.maxUnavailable == 0:
            raise ValueError("maxSurge and maxUnavailable cannot both be 0")
        return self


class UpdateStrategy(StrictModel):
    type: Literal["RollingUpdate", "OnDelete"] = "RollingUpdate"
    rollingUpdate: RollingUpdate = RollingUpdate()


class ProxySpec(StrictModel):
    """The proxy DaemonSet (ztunnel's role): one proxy pod per node, two during a surge."""

    enabled: bool = True
    version: str = Field(default=__version__, min_length=1, max_length=64)
    command: list[str] = Field(default=["pyztunnel", "proxy"], min_length=1)
    env: dict[str, str] = {}
    terminationGracePeriodSeconds: Seconds = 30
    updateStrategy: UpdateStrategy = UpdateStrategy()


class AgentSpec(StrictModel):
    """The node agent (istio-cni's role), one per node, in the node netns. Placeholders: {node} {run_dir} {cluster}
    {state_dir} {node_ip}; the environment also carries NODE_NAME and PYZTUNNEL_TCP_MIGRATE_REQ."""

    enabled: bool = True
    command: list[str] = Field(
        default=["pyztunnel", "agent", "--node-name", "{node}", "--run-dir", "{run_dir}"],
        min_length=1,
    )
    env: dict[str, str] = {}
    tcpMigrateReq: int = Field(default=1, ge=0, le=1)


class CaSpec(StrictModel):
    """The CA (istiod's role) in the fabric netns at 10.240.0.254:15012. Placeholders: {cluster} {state_dir} {ca_dir}
    {workloads} {ca_address} {trust_domain}."""

    enabled: bool = True
    command: list[str] = Field(
        default=[
            "pyztunnel",
            "ca",
            "serve",
            "--state-dir",
            "{ca_dir}",
            "--listen",
            "{ca_address}",
            "--workloads",
            "{workloads}",
            "--trust-domain",
            "{trust_domain}",
        ],
        min_length=1,
    )
    env: dict[str, str] = {}
    trustDomain: str = Field(default="cluster.local", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ClusterSpec(StrictModel):
    nodes: list[NodeSpec] = Field(min_length=1, max_length=MAX_NODES)
    deployments: list[DeploymentSpec] = []
    services: list[ServiceSpec] = []
    proxy: ProxySpec = ProxySpec()
    agent: AgentSpec = AgentSpec()
    ca: CaSpec = CaSpec()
    # L4 authorization policies, in ztunnel's LOCAL_XDS_PATH format (reference/ztunnel.md §5.2), passed to the proxies
    # as they are; StringMatch as a map (`principals: [{Exact: cluster.local/ns/a/sa/b}]`).
    policies: list[dict[str, Any]] = []

    def deployment(self, name: str) -> DeploymentSpec:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def any_mesh(self) -> bool:
        return any(d.mesh for d in self.deployments)

    def without_mesh(self) -> ClusterSpec:
        """The same cluster with every pod outside the mesh (and no proxy, CA): for runs without the mesh parts."""
        return self.model_copy(
            update={
                "deployments": [d.model_copy(update={"mesh": False}) for d in self.deployments],
                "proxy": self.proxy.model_copy(update={"enabled": False}),
                "ca": self.ca.model_copy(update={"enabled": False}),
            }
        )

    def without_agent(self) -> ClusterSpec:
        """The same cluster with no node agents (only valid without mesh pods): the controller plumbs pods itself."""
        return self.model_copy(update={"agent": self.agent.model_copy(update={"enabled": False})})


@dataclass
class LoadedSpec:
    spec: ClusterSpec
    text: str
    source: str
    warnings: list[str] = field(default_factory=list)


class SpecError(UserError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def default_text() -> str:
    return importlib.resources.files("pyztunnel.cluster").joinpath(DEFAULT_SPEC).read_text()


def load(path: Path | None) -> LoadedSpec:
    """Load and validate a spec file (the built-in default when path is None)."""
    if path is None:
        return parse(default_text(), f"<built-in {DEFAULT_SPEC}>")
    try:
        text = read_text(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the cluster spec: {exc.strerror}") from None
    except YamlError as exc:
        raise SpecError([f"{path}:{exc.line}: {exc.message}"]) from None
    return parse(text, str(path))


def parse(text: str, source: str) -> LoadedSpec:
    try:
        raw, lines = load_with_lines(text)
    except YamlError as exc:
        raise SpecError([f"{source}:{exc.line}: {exc.message}"]) from None
    if not isinstance(raw, dict):
        raise SpecError([f"{source}:1: the cluster spec must be a mapping with at least 'nodes'"])
    try:
        spec = ClusterSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not _is_internal_loc(p))
            problems.append(f"{source}:{line_of(lines, loc)}: {_describe(loc, err)}")
        raise SpecError(problems) from None
    errors, warnings = check(spec)
    if errors:
        raise SpecError([f"{source}:{line_of(lines, loc)}: {dotted(loc)}: {msg}" for loc, msg in errors])
    return LoadedSpec(
        spec, text, source, [f"{source}:{line_of(lines, loc)}: {dotted(loc)}: {msg}" for loc, msg in warnings]
    )


def _is_internal_loc(part: Any) -> bool:
    # pydantic inserts validator names for some constraints (e.g. 'function-after[...]'); they are not spec keys.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _describe(loc: tuple[str | int, ...], err: Any) -> str:
    where = dotted(loc) or "spec"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = dotted(loc[:-1]) or "the top level"
        return f"unknown field {loc[-1]!r} in {parent}"
    if kind == "missing":
        return f"{where}: required field is missing"
    message = str(err["msg"])
    message = re.sub(r"^Value error, ", "", message)
    return f"{where}: {message} (got {err['input']!r})" if kind != "value_error" else f"{where}: {message}"


Problem = tuple[tuple[str | int, ...], str]
WAYPOINT_HBONE_PORT = 15008


def check(spec: ClusterSpec) -> tuple[list[Problem], list[Problem]]:
    """Rules across fields: unique names, references that must resolve. (errors, warnings), each with its path."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    _unique([n.name for n in spec.nodes], "nodes", "node", errors)
    _unique([d.name for d in spec.deployments], "deployments", "deployment", errors)
    _unique([f"{s.namespace}/{s.name}" for s in spec.services], "services", "service", errors)
    node_names = {n.name for n in spec.nodes}
    for i, dep in enumerate(spec.deployments):
        if dep.nodeName is not None and dep.nodeName not in node_names:
            errors.append((("deployments", i, "nodeName"), f"no node named {dep.nodeName!r}"))
        if dep.nodeSelector and not any(matches(dep.nodeSelector, n.labels) for n in spec.nodes):
            errors.append((("deployments", i, "nodeSelector"), "selects no node"))
        if dep.mesh and not (spec.proxy.enabled and spec.agent.enabled):
            errors.append((("deployments", i, "mesh"), "mesh pods need proxy.enabled and agent.enabled"))
        probe = dep.readinessProbe
        if probe is not None and dep.ports:
            port = probe.tcpSocket.port if probe.tcpSocket else probe.httpGet.port if probe.httpGet else 0
            if port not in dep.ports:
                warnings.append((("deployments", i, "readinessProbe"), f"probes port {port}, not one of ports"))
    for i, svc in enumerate(spec.services):
        if not any(matches(svc.selector, d.pod_labels) for d in spec.deployments):
            warnings.append((("services", i, "selector"), "selects no deployment; the service has no endpoints"))
    errors += _waypoint_problems(spec)
    for i, policy in enumerate(spec.policies):
        # The proxies' own loader is the judge of the format: one policy at a time, so the error names it.
        try:
            local.parse(yaml.safe_dump({"policies": [policy]}), "policy")
        except local.ConfigError as exc:
            errors.append((("policies", i), str(exc).split(": ", 2)[-1]))
    return errors, warnings


def _unique(names: list[str], key: str, what: str, errors: list[Problem]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            errors.append(((key, i, "name"), f"duplicate {what} name {name!r}"))
        seen.add(name)


def _waypoint_problems(spec: ClusterSpec) -> list[Problem]:
    """Errors in the spec's waypoint references, each with its path."""
    errors: list[Problem] = []
    services = {(s.namespace, s.name): s for s in spec.services}
    for i, svc in enumerate(spec.services):
        if svc.useWaypoint is None:
            continue
        where = ("services", i, "useWaypoint")
        waypoint = services.get((svc.namespace, svc.useWaypoint))
        if waypoint is None:
            errors.append((where, f"no service {svc.useWaypoint!r} in namespace {svc.namespace!r}"))
            continue
        if waypoint is svc or waypoint.useWaypoint is not None:
            errors.append((where, f"{svc.useWaypoint!r} cannot be a waypoint: it uses a waypoint itself"))
        if not any(p.port == WAYPOINT_HBONE_PORT for p in waypoint.ports):
            errors.append(
                (where, f"the waypoint service {svc.useWaypoint!r} has no port {WAYPOINT_HBONE_PORT} (HBONE)")
            )
        pods = waypoint_deployments(spec, waypoint)
        if not pods:
            errors.append((where, f"the waypoint service {svc.useWaypoint!r} selects no deployment"))
        if any(d.mesh for d in pods):
            errors.append((where, f"the waypoint {svc.useWaypoint!r} must run outside the mesh (mesh: false)"))
    return errors


def waypoint_deployments(spec: ClusterSpec, waypoint: ServiceSpec) -> list[DeploymentSpec]:
    """The deployments a waypoint service selects (its pods are the waypoint)."""
    return [
        d for d in spec.deployments if d.namespace == waypoint.namespace and matches(waypoint.selector, d.pod_labels)
    ]


def matches(selector: Labels, labels: Labels) -> bool:
    """A label selector (every key equal) matches these labels."""
    return all(labels.get(k) == v for k, v in selector.items())


def dump(spec: ClusterSpec) -> str:
    """YAML text of a spec (e.g. a modified default for an experiment)."""
    return yaml.safe_dump(spec.model_dump(exclude_defaults=True), sort_keys=False)

"""Pure renderings of the cluster's view: the LOCAL_XDS workloads file (reference/ztunnel.md §5) and pod environment."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyztunnel.cluster import waypoints
from pyztunnel.cluster.spec import Labels, matches


@dataclass(frozen=True)
class WorkloadView:
    name: str
    namespace: str
    service_account: str
    ip: str
    node: str
    mesh: bool
    ready: bool
    labels: Labels


@dataclass(frozen=True)
class ServiceView:
    name: str
    namespace: str
    vip: str
    ports: tuple[tuple[int, int], ...]  # (port, targetPort)
    selector: Labels
    waypoint: str | None = None  # the name of the waypoint service in front of this one (cluster/waypoints.py)
    waypoint_accounts: tuple[str, ...] = ()  # the waypoint pods' service accounts

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


def workload_uid(namespace: str, name: str) -> str:
    return f"Kubernetes//v1/Pod/{namespace}/{name}"


def render_workloads(
    workloads: Sequence[WorkloadView],
    services: Sequence[ServiceView],
    trust_domain: str,
    policies: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The LOCAL_XDS_PATH document. A workload belongs to every service whose selector matches its labels; whether
    it is an endpoint right now is its `status` (Healthy = ready), so proxies pick ready endpoints as kube-proxy does.
    A service behind a waypoint names it, and its pods name the implicit policy admitting only the waypoint."""
    implicit: dict[str, dict[str, Any]] = {}
    out_workloads = []
    for w in sorted(workloads, key=lambda w: (w.namespace, w.name)):
        member = {
            f"{s.namespace}/{s.hostname}": {port: target for port, target in s.ports}
            for s in services
            if s.namespace == w.namespace and matches(s.selector, w.labels)
        }
        policies_of = []
        for s in services:
            if s.waypoint and s.namespace == w.namespace and matches(s.selector, w.labels):
                policy = waypoints.implicit_policy(
                    w.namespace, s.namespace, s.waypoint, s.waypoint_accounts, trust_domain
                )
                key = f"{w.namespace}/{policy['name']}"
                implicit[key] = policy
                policies_of.append(key)
        out_workloads.append(
            {
                "uid": workload_uid(w.namespace, w.name),
                "name": w.name,
                "namespace": w.namespace,
                "serviceAccount": w.service_account,
                "trustDomain": trust_domain,
                "workloadIps": [w.ip],
                "node": w.node,
                "protocol": "HBONE" if w.mesh else "TCP",
                "status": "Healthy" if w.ready else "Unhealthy",
                "services": member,
                **({"authorizationPolicies": sorted(set(policies_of))} if policies_of else {}),
            }
        )
    out_services = [
        {
            "name": s.name,
            "namespace": s.namespace,
            "hostname": s.hostname,
            "vips": [f"/{s.vip}"],
            "ports": {port: target for port, target in s.ports},
            **(
                {
                    "waypoint": {
                        "destination": f"{s.namespace}/{s.waypoint}.{s.namespace}.svc.cluster.local",
                        "hboneMtlsPort": 15008,
                    }
                }
                if s.waypoint
                else {}
            ),
        }
        for s in sorted(services, key=lambda s: (s.namespace, s.name))
    ]
    return {"workloads": out_workloads, "services": out_services, "policies": [*policies, *implicit.values()]}


def endpoints(service: ServiceView, workloads: Sequence[WorkloadView]) -> tuple[str, ...]:
    """Ready pods selected by the service (same namespace), as Kubernetes' EndpointSlices list them."""
    return tuple(
        sorted(
            w.ip
            for w in workloads
            if w.ready and w.namespace == service.namespace and matches(service.selector, w.labels)
        )
    )


def service_env(services: Sequence[ServiceView]) -> dict[str, str]:
    """Kubernetes' service environment variables (`HTTPBIN_SERVICE_HOST`, `HTTPBIN_SERVICE_PORT`)."""
    env: dict[str, str] = {}
    for s in services:
        key = re.sub(r"[^A-Z0-9]", "_", s.name.upper())
        env[f"{key}_SERVICE_HOST"] = s.vip
        env[f"{key}_SERVICE_PORT"] = str(s.ports[0][0])
    return env


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, unknown references are left as they are."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)

"""The lookup index over workloads, services and policies, independent of where the config came from.

Immutable: a new config builds a new index and the proxy swaps one reference, so a connection in flight keeps a
consistent view.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from pyztunnel.workloads.model import (
    Authorization,
    HealthStatus,
    LocalConfig,
    Protocol,
    Scope,
    Service,
    Workload,
)


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where one outbound connection goes: a workload (or none, for passthrough) and the port on it."""

    ip: str
    port: int
    workload: Workload | None = None
    service: Service | None = None

    @property
    def hbone(self) -> bool:
        return self.workload is not None and self.workload.protocol is Protocol.HBONE


@dataclasses.dataclass(frozen=True)
class ServiceEndpoint:
    workload: Workload
    target_port: int


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


class WorkloadIndex:
    def __init__(self, config: LocalConfig | None = None) -> None:
        self.config = config or LocalConfig()
        self.by_ip: dict[str, Workload] = {}
        self.by_uid: dict[str, Workload] = {}
        self.by_name: dict[tuple[str, str], Workload] = {}
        self.services_by_vip: dict[str, Service] = {}
        self.services_by_key: dict[str, Service] = {}
        self.policies_by_key: dict[str, Authorization] = {}
        self.policies_by_namespace: dict[str, list[Authorization]] = {}
        # service key -> endpoints, in config order; per service port the target port comes from the endpoint
        self._endpoints: dict[str, list[tuple[Workload, dict[int, int]]]] = {}
        for service in self.config.services:
            self.services_by_key[service.key] = service
            for vip in service.vip_ips:
                self.services_by_vip[vip] = service
        for workload in self.config.workloads:
            for ip in workload.workload_ips:
                self.by_ip[ip] = workload
            if workload.uid:
                self.by_uid[workload.uid] = workload
            if workload.name:
                self.by_name[(workload.namespace, workload.name)] = workload
            for service_key, ports in workload.services.items():
                self._endpoints.setdefault(service_key, []).append((workload, ports))
        for service in self.config.services:
            for endpoint in service.endpoints.values():
                found = self.by_uid.get(endpoint.workload_uid)
                if found is not None and endpoint.status is HealthStatus.HEALTHY:
                    self._endpoints.setdefault(service.key, []).append((found, endpoint.port or service.ports))
        for policy in self.config.policies:
            self.policies_by_key[policy.key] = policy
            scope_ns = "" if policy.scope is Scope.GLOBAL else policy.namespace
            if policy.scope is not Scope.WORKLOAD_SELECTOR:
                self.policies_by_namespace.setdefault(scope_ns, []).append(policy)

    def workload_by_ip(self, ip: str) -> Workload | None:
        # Fast path: addresses from sockets are already canonical; normalise only on a miss (hot path).
        found = self.by_ip.get(ip)
        return found if found is not None else self.by_ip.get(_ip(ip))

    def service_by_vip(self, ip: str) -> Service | None:
        found = self.services_by_vip.get(ip)
        return found if found is not None else self.services_by_vip.get(_ip(ip))

    def endpoints(self, service: Service, port: int) -> list[ServiceEndpoint]:
        """Healthy endpoints of `service` for service port `port`, each with its target port."""
        if port not in service.ports:
            return []
        out = []
        for workload, ports in self._endpoints.get(service.key, []):
            if workload.status is not HealthStatus.HEALTHY:
                continue
            target = ports.get(port) or service.ports[port] or port
            out.append(ServiceEndpoint(workload, target))
        return out

    def services_of(self, workload: Workload) -> list[Service]:
        return [s for key in workload.services if (s := self.services_by_key.get(key)) is not None]

    def policies_for(self, workload: Workload) -> Iterable[Authorization]:
        """Applicable policies (§5.3): Global, the workload's namespace, and those it names."""
        seen: set[str] = set()
        named = (self.policies_by_key.get(k) for k in workload.authorization_policies)
        for policy in (
            *self.policies_by_namespace.get("", ()),
            *self.policies_by_namespace.get(workload.namespace, ()),
            *(p for p in named if p is not None),
        ):
            if policy.key not in seen:
                seen.add(policy.key)
                yield policy

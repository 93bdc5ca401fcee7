"""The lookup index over workloads, services and policies, fed by any number of sources.

ztunnel feeds one state from two sources, the LOCAL_XDS_PATH file and XDS (reference §5.1); so does this index. Each
source holds its own resources by key (a workload's uid, else namespace/name; a service's and a policy's
namespace/name); where two sources hold the same key, the later source in `SOURCES` wins (XDS over the file, as a
push after ztunnel's start-up load would overwrite it), and removing it from that source uncovers the other's.

Updates are incremental (`apply`: an XDS delta costs what it changes, not the size of the mesh) and happen on the
event loop's thread between awaits, so a connection always sees a consistent index; it keeps the Workload objects
it looked up, which are immutable.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from pyztunnel.workloads.model import (
    Authorization,
    GatewayAddress,
    HealthStatus,
    LocalConfig,
    Protocol,
    Scope,
    Service,
    Workload,
)

LOCAL = "local"
XDS = "xds"
SOURCES = (LOCAL, XDS)  # lowest precedence first

K = TypeVar("K")
V = TypeVar("V")


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where one outbound connection goes: a workload (or none, for passthrough) and the port on it. Through a
    waypoint, `workload` is the waypoint's, `authority` the original destination and `hbone_port` its HBONE port."""

    ip: str
    port: int
    workload: Workload | None = None
    service: Service | None = None
    authority: str | None = None  # the CONNECT's :authority when it is not ip:port (a waypoint's)
    hbone_port: int = 15008

    @property
    def hbone(self) -> bool:
        return self.authority is not None or (self.workload is not None and self.workload.protocol is Protocol.HBONE)


@dataclasses.dataclass(frozen=True)
class ServiceEndpoint:
    workload: Workload
    target_port: int


@dataclasses.dataclass
class Changes:
    """What one update changed (counts of keys whose effective resource changed)."""

    workloads: int = 0
    services: int = 0
    policies: int = 0

    def __bool__(self) -> bool:
        return bool(self.workloads or self.services or self.policies)


@functools.lru_cache(maxsize=4096)  # a miss on the lookups below parses the text each time; addresses repeat
def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


class _Claims(Generic[K, V]):
    """key → the latest claimant; an earlier claimant comes back when the latest leaves (two workloads may hold one
    IP for a moment, e.g. a pod replaced by one that got its address). `top` is a plain dict for the hot path."""

    __slots__ = ("_under", "top")

    def __init__(self) -> None:
        self.top: dict[K, V] = {}
        self._under: dict[K, list[V]] = {}

    def add(self, key: K, value: V) -> None:
        old = self.top.get(key)
        if old is not None and old is not value:
            self._under.setdefault(key, []).append(old)
        self.top[key] = value

    def remove(self, key: K, value: V) -> None:
        if self.top.get(key) is value:
            under = self._under.get(key)
            if under:
                self.top[key] = under.pop()
                if not under:
                    del self._under[key]
            else:
                del self.top[key]
            return
        under = self._under.get(key)
        if under:
            for i, v in enumerate(under):
                if v is value:
                    del under[i]
                    break
            if not under:
                del self._under[key]


class WorkloadIndex:
    def __init__(self, config: LocalConfig | None = None) -> None:
        self._layers: dict[str, tuple[dict[str, Workload], dict[str, Service], dict[str, Authorization]]] = {
            source: ({}, {}, {}) for source in SOURCES
        }
        self._workloads: dict[str, Workload] = {}  # effective, by key
        self._ips: _Claims[str, Workload] = _Claims()
        self._names: _Claims[tuple[str, str], Workload] = _Claims()
        self._vips: _Claims[str, Service] = _Claims()
        self.by_ip = self._ips.top
        self.by_name = self._names.top
        self.by_uid: dict[str, Workload] = {}
        self.services_by_key: dict[str, Service] = {}
        self.services_by_vip = self._vips.top
        self.policies_by_key: dict[str, Authorization] = {}
        self.policies_by_namespace: dict[str, dict[str, Authorization]] = {}
        # service key -> {workload key: (workload, {service port: target port})}, from the workloads' `services`
        self._endpoints: dict[str, dict[str, tuple[Workload, dict[int, int]]]] = {}
        self._by_node: dict[str, dict[str, Workload]] = {}
        if config is not None:
            self.replace(LOCAL, config)

    # ------------------------------------------------------------------ lookups (the data path)
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
        members = self._endpoints.get(service.key)
        pairs: Iterable[tuple[Workload, dict[int, int]]] = members.values() if members else ()
        if service.endpoints:  # the LOCAL_XDS form: endpoints named on the service
            named = (
                (found, endpoint.port or service.ports)
                for endpoint in service.endpoints.values()
                if endpoint.status is HealthStatus.HEALTHY
                and (found := self.by_uid.get(endpoint.workload_uid)) is not None
            )
            pairs = [*pairs, *named]
        for workload, ports in pairs:
            if workload.status is not HealthStatus.HEALTHY:
                continue
            target = ports.get(port) or service.ports[port] or port
            out.append(ServiceEndpoint(workload, target))
        return out

    def waypoint(self, gateway: GatewayAddress) -> Workload | None:
        """The workload that serves a waypoint address: `ns/hostname` names a service (one of its healthy
        endpoints), `network/ip` a workload (or a service VIP)."""
        first, _, last = gateway.destination.rpartition("/")
        service = self.services_by_key.get(f"{first}/{last}")
        if service is None:
            service = self.service_by_vip(last)
            if service is None:
                return self.workload_by_ip(last)
        ready = [e.workload for port in service.ports for e in self.endpoints(service, port)]
        return ready[0] if ready else None

    def services_of(self, workload: Workload) -> list[Service]:
        return [s for key in workload.services if (s := self.services_by_key.get(key)) is not None]

    def policies_for(self, workload: Workload) -> Iterable[Authorization]:
        """Applicable policies (§5.3): Global, the workload's namespace, and those it names."""
        seen: set[str] = set()
        named = (self.policies_by_key.get(k) for k in workload.authorization_policies)
        for policy in (
            *self.policies_by_namespace.get("", {}).values(),
            *self.policies_by_namespace.get(workload.namespace, {}).values(),
            *(p for p in named if p is not None),
        ):
            if policy.key not in seen:
                seen.add(policy.key)
                yield policy

    # ------------------------------------------------------------------ enumeration (admin, prefetch)
    def workloads(self) -> Iterator[Workload]:
        return iter(self._workloads.values())

    def services(self) -> Iterator[Service]:
        return iter(self.services_by_key.values())

    def policies(self) -> Iterator[Authorization]:
        return iter(self.policies_by_key.values())

    def workloads_on(self, node: str) -> Iterator[Workload]:
        return iter(self._by_node.get(node, {}).values())

    def staged_services(self) -> list[str]:
        """Services that workloads name but no source has sent yet (ztunnel's `stagedServices`)."""
        return sorted(key for key in self._endpoints if key not in self.services_by_key)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            s: {"workloads": len(w), "services": len(v), "policies": len(p)} for s, (w, v, p) in self._layers.items()
        }

    # ------------------------------------------------------------------ updates
    def replace(self, source: str, config: LocalConfig) -> Changes:
        """Make a source hold exactly `config` (a reloaded file)."""
        workloads, services, policies = self._layers[source]
        new_w = {w.key: w for w in config.workloads}
        new_s = {s.key: s for s in config.services}
        new_p = {p.key: p for p in config.policies}
        return self.apply(
            source,
            workloads=[w for k, w in new_w.items() if workloads.get(k) != w],
            services=[s for k, s in new_s.items() if services.get(k) != s],
            policies=[p for k, p in new_p.items() if policies.get(k) != p],
            remove_workloads=[k for k in workloads if k not in new_w],
            remove_services=[k for k in services if k not in new_s],
            remove_policies=[k for k in policies if k not in new_p],
        )

    def apply(
        self,
        source: str,
        *,
        workloads: Iterable[Workload] = (),
        services: Iterable[Service] = (),
        policies: Iterable[Authorization] = (),
        remove_workloads: Iterable[str] = (),
        remove_services: Iterable[str] = (),
        remove_policies: Iterable[str] = (),
    ) -> Changes:
        """Upsert and remove resources of one source (keys: Workload.key, Service.key, Authorization.key)."""
        layer_w, layer_s, layer_p = self._layers[source]
        changes = Changes()
        for key in remove_workloads:
            if layer_w.pop(key, None) is not None:
                changes.workloads += self._settle_workload(key)
        for workload in workloads:
            layer_w[workload.key] = workload
            changes.workloads += self._settle_workload(workload.key)
        for key in remove_services:
            if layer_s.pop(key, None) is not None:
                changes.services += self._settle_service(key)
        for service in services:
            layer_s[service.key] = service
            changes.services += self._settle_service(service.key)
        for key in remove_policies:
            if layer_p.pop(key, None) is not None:
                changes.policies += self._settle_policy(key)
        for policy in policies:
            layer_p[policy.key] = policy
            changes.policies += self._settle_policy(policy.key)
        return changes

    def _winner(self, kind: int, key: str) -> object | None:
        for source in reversed(SOURCES):
            found = self._layers[source][kind].get(key)
            if found is not None:
                return found
        return None

    def _settle_workload(self, key: str) -> int:
        new = self._winner(0, key)
        old = self._workloads.get(key)
        if new is old:
            return 0
        if old is not None:
            self._unindex_workload(key, old)
        if new is not None:
            assert isinstance(new, Workload)
            self._index_workload(key, new)
        return 1

    def _index_workload(self, key: str, w: Workload) -> None:
        self._workloads[key] = w
        for ip in w.workload_ips:
            self._ips.add(ip, w)
        if w.uid:
            self.by_uid[w.uid] = w
        if w.name:
            self._names.add((w.namespace, w.name), w)
        for service_key, ports in w.services.items():
            self._endpoints.setdefault(service_key, {})[key] = (w, ports)
        if w.node:
            self._by_node.setdefault(w.node, {})[key] = w

    def _unindex_workload(self, key: str, w: Workload) -> None:
        del self._workloads[key]
        for ip in w.workload_ips:
            self._ips.remove(ip, w)
        if w.uid and self.by_uid.get(w.uid) is w:
            del self.by_uid[w.uid]
        if w.name:
            self._names.remove((w.namespace, w.name), w)
        for service_key in w.services:
            members = self._endpoints.get(service_key)
            if members is not None:
                members.pop(key, None)
                if not members:
                    del self._endpoints[service_key]
        on_node = self._by_node.get(w.node)
        if on_node is not None:
            on_node.pop(key, None)
            if not on_node:
                del self._by_node[w.node]

    def _settle_service(self, key: str) -> int:
        new = self._winner(1, key)
        old = self.services_by_key.get(key)
        if new is old:
            return 0
        if old is not None:
            del self.services_by_key[key]
            for vip in old.vip_ips:
                self._vips.remove(vip, old)
        if new is not None:
            assert isinstance(new, Service)
            self.services_by_key[key] = new
            for vip in new.vip_ips:
                self._vips.add(vip, new)
        return 1

    def _settle_policy(self, key: str) -> int:
        new = self._winner(2, key)
        old = self.policies_by_key.get(key)
        if new is old:
            return 0
        if old is not None:
            del self.policies_by_key[key]
            scoped = self.policies_by_namespace.get(_scope_namespace(old))
            if scoped is not None:
                scoped.pop(key, None)
        if new is not None:
            assert isinstance(new, Authorization)
            self.policies_by_key[key] = new
            if new.scope is not Scope.WORKLOAD_SELECTOR:
                self.policies_by_namespace.setdefault(_scope_namespace(new), {})[key] = new
        return 1


def _scope_namespace(policy: Authorization) -> str:
    return "" if policy.scope is Scope.GLOBAL else policy.namespace

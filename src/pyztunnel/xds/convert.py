"""XDS resources ↔ the workload model, pure. Decoding validates as ztunnel's `TryFrom` conversions do and raises
`Invalid(reason)` for the NACK; encoding is what our control plane sends (the cluster controller's ADS server).

Hot path at 100 000 workloads: IPs through `inet_ntop`, the strings many workloads share (namespace, service
account, node, …) and identical `services` maps are shared, and model objects are built with `model.trusted`
(validated here already), so a pushed workload costs well under its share of the 2 KiB budget.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError

from pyztunnel.protocols._pb import authorization_pb2 as apb
from pyztunnel.protocols._pb import workload_pb2 as wpb
from pyztunnel.workloads.model import (
    Action,
    ApplicationTunnel,
    Authorization,
    GatewayAddress,
    HealthStatus,
    LoadBalancer,
    Locality,
    Protocol,
    RbacMatch,
    Scope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    Workload,
    trusted,
)

_intern = sys.intern
_SHARED_LIMIT = 50_000


class Invalid(ValueError):
    """A resource that fails validation; the message is the NACK's reason."""


def ip_of(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    raise Invalid(f"invalid address: {len(raw)} bytes (want 4 or 16)")


def ip_bytes(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _port(value: int, what: str) -> int:
    if not 0 <= value <= 65535:
        raise Invalid(f"invalid {what} {value}")
    return value


_shared_maps: dict[tuple[Any, ...], dict[Any, Any]] = {}


def _share(key: tuple[Any, ...], make: Any) -> Any:
    """One object for equal values (replicas of one deployment have the same `services` map); bounded."""
    found = _shared_maps.get(key)
    if found is None:
        if len(_shared_maps) > _SHARED_LIMIT:
            _shared_maps.clear()
        found = _shared_maps[key] = make()
    return found


# ------------------------------------------------------------------ decoding


def _gateway(msg: wpb.GatewayAddress) -> GatewayAddress:
    kind = msg.WhichOneof("destination")
    if kind == "hostname":
        destination = f"{msg.hostname.namespace}/{msg.hostname.hostname}"
    elif kind == "address":
        destination = f"{msg.address.network}/{ip_of(msg.address.address)}"
    else:
        raise Invalid("gateway address without a destination")
    return GatewayAddress(destination=destination, hbone_mtls_port=_port(msg.hbone_mtls_port or 15008, "port"))


def _ports(ports: Iterable[wpb.Port]) -> dict[int, int]:
    return {_port(p.service_port, "port"): _port(p.target_port, "port") for p in ports}


_WORKLOAD_TYPES = {v: k.lower() for k, v in wpb.WorkloadType.items()}
_STATUS = {wpb.HEALTHY: HealthStatus.HEALTHY, wpb.UNHEALTHY: HealthStatus.UNHEALTHY}
_NETWORK_MODES = {wpb.STANDARD: "Standard", wpb.HOST_NETWORK: "HostNetwork"}


def workload(msg: wpb.Workload) -> Workload:
    if not msg.uid:
        raise Invalid("workload without uid")
    if not msg.addresses and not msg.hostname:
        raise Invalid("workload has neither addresses nor a hostname")
    services: dict[str, dict[int, int]] = {}
    for key, port_list in msg.services.items():
        ports = tuple((_port(p.service_port, "port"), _port(p.target_port, "port")) for p in port_list.ports)
        services[_intern(key)] = _share(("ports", ports), lambda ports=ports: dict(ports))
    if services:
        services = _share(("services", *((k, id(v)) for k, v in services.items())), lambda: services)
    status = _STATUS.get(msg.status)
    if status is None:
        raise Invalid(f"unknown status {msg.status}")
    values: dict[str, Any] = {
        "workload_ips": tuple(ip_of(a) for a in msg.addresses),
        "namespace": _intern(msg.namespace),
        "uid": msg.uid,
        "name": msg.name,
        "trust_domain": _intern(msg.trust_domain),
        "service_account": _intern(msg.service_account),
        "network": _intern(msg.network),
        "workload_name": _intern(msg.workload_name),
        "workload_type": _WORKLOAD_TYPES.get(msg.workload_type, "pod"),
        "canonical_name": _intern(msg.canonical_name),
        "canonical_revision": _intern(msg.canonical_revision),
        "hostname": msg.hostname,
        "node": _intern(msg.node),
        "cluster_id": _intern(msg.cluster_id),
        "protocol": Protocol.HBONE if msg.tunnel_protocol == wpb.HBONE else Protocol.TCP,
        "network_mode": _NETWORK_MODES.get(msg.network_mode, "Standard"),
        "native_tunnel": msg.native_tunnel,
        "authorization_policies": tuple(_intern(p) for p in msg.authorization_policies),
        "status": status,
        "services": services,
        "capacity": msg.capacity.value if msg.HasField("capacity") else 1,
    }
    if msg.HasField("locality"):
        loc = msg.locality
        values["locality"] = trusted(Locality, {"region": loc.region, "zone": loc.zone, "subzone": loc.subzone})
    if msg.HasField("waypoint"):
        values["waypoint"] = _gateway(msg.waypoint)
    if msg.HasField("network_gateway"):
        values["network_gateway"] = _gateway(msg.network_gateway)
    if msg.HasField("application_tunnel"):
        tunnel = msg.application_tunnel
        protocol = wpb.ApplicationTunnel.Protocol.Name(tunnel.protocol) if tunnel.protocol in (0, 1) else None
        if protocol is None:
            raise Invalid(f"unknown application tunnel protocol {tunnel.protocol}")
        values["application_tunnel"] = ApplicationTunnel(protocol=protocol, port=tunnel.port or None)
    return trusted(Workload, values)


_SCOPES = {
    wpb.LoadBalancing.Scope.Value(n): n.capitalize()
    for n in ("REGION", "ZONE", "SUBZONE", "NODE", "CLUSTER", "NETWORK")
}
_LB_MODES = {0: "Standard", 1: "Strict", 2: "Failover", 3: "Passthrough"}
_IP_FAMILIES = {0: None, 1: "IPv4", 2: "IPv6", 3: "Dual"}


def service(msg: wpb.Service) -> Service:
    if not msg.hostname:
        raise Invalid("service without hostname")
    vips = tuple(f"{a.network}/{ip_of(a.address)}" for a in msg.addresses)
    if msg.ip_families not in _IP_FAMILIES:
        raise Invalid(f"unknown ip families {msg.ip_families}")
    load_balancer = None
    if msg.HasField("load_balancing"):
        lb = msg.load_balancing
        unknown = [s for s in lb.routing_preference if s not in _SCOPES]
        if unknown or lb.mode not in _LB_MODES or lb.health_policy not in (0, 1):
            raise Invalid("unknown load balancing setting")
        load_balancer = LoadBalancer(
            routing_preferences=tuple(_SCOPES[s] for s in lb.routing_preference),
            mode=_LB_MODES[lb.mode],
            health_policy="AllowAll" if lb.health_policy == 1 else "OnlyHealthy",
        )
    values: dict[str, Any] = {
        "name": msg.name,
        "namespace": _intern(msg.namespace),
        "hostname": msg.hostname,
        "vips": vips,
        "ports": _ports(msg.ports),
        "subject_alt_names": tuple(msg.subject_alt_names),
        "waypoint": _gateway(msg.waypoint) if msg.HasField("waypoint") else None,
        "ip_families": _IP_FAMILIES[msg.ip_families],
        "canonical": msg.canonical,
        "load_balancer": load_balancer,
    }
    return trusted(Service, values)


def address(name: str, payload: bytes) -> Workload | Service:
    """One resource of the Address type; its name must be the workload's uid or the service's namespace/hostname."""
    try:
        msg = wpb.Address.FromString(payload)
    except DecodeError as exc:
        raise Invalid(f"decode: {exc}") from None
    kind = msg.WhichOneof("type")
    found: Workload | Service
    if kind == "workload":
        found = workload(msg.workload)
        key = found.uid
    elif kind == "service":
        found = service(msg.service)
        key = found.key
    else:
        raise Invalid("address is neither a workload nor a service")
    if name != key:
        raise Invalid(f"resource name does not match its {kind} {key!r}")
    return found


def _string_matches(matches: Iterable[apb.StringMatch]) -> tuple[StringMatch, ...]:
    out = []
    for m in matches:
        kind = m.WhichOneof("match_type")
        if kind is None:
            continue  # ztunnel drops a match without a type
        key = kind.capitalize()
        out.append(StringMatch.model_validate({key: "" if kind == "presence" else getattr(m, kind)}))
    return tuple(out)


def _cidrs(addresses: Iterable[apb.Address]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for a in addresses:
        ip = ipaddress.ip_address(ip_of(a.address))
        if a.length > ip.max_prefixlen:
            raise Invalid(f"invalid prefix length {a.length} for {ip}")
        out.append(ipaddress.ip_network(f"{ip}/{a.length}", strict=False))
    return tuple(out)


def _rbac_match(m: apb.Match) -> RbacMatch:
    return RbacMatch(
        namespaces=_string_matches(m.namespaces),
        not_namespaces=_string_matches(m.not_namespaces),
        principals=_string_matches(m.principals),
        not_principals=_string_matches(m.not_principals),
        service_accounts=tuple(
            ServiceAccountMatch(namespace=s.namespace, service_account=s.service_account) for s in m.service_accounts
        ),
        not_service_accounts=tuple(
            ServiceAccountMatch(namespace=s.namespace, service_account=s.service_account)
            for s in m.not_service_accounts
        ),
        source_ips=_cidrs(m.source_ips),
        not_source_ips=_cidrs(m.not_source_ips),
        destination_ips=_cidrs(m.destination_ips),
        not_destination_ips=_cidrs(m.not_destination_ips),
        destination_ports=tuple(_port(p, "port") for p in m.destination_ports),
        not_destination_ports=tuple(_port(p, "port") for p in m.not_destination_ports),
    )


_POLICY_SCOPES = {
    apb.GLOBAL: Scope.GLOBAL,
    apb.NAMESPACE: Scope.NAMESPACE,
    apb.WORKLOAD_SELECTOR: Scope.WORKLOAD_SELECTOR,
}
_ACTIONS = {apb.ALLOW: Action.ALLOW, apb.DENY: Action.DENY}


def authorization(name: str, payload: bytes) -> Authorization:
    try:
        msg = apb.Authorization.FromString(payload)
    except DecodeError as exc:
        raise Invalid(f"decode: {exc}") from None
    scope = _POLICY_SCOPES.get(msg.scope)
    action = _ACTIONS.get(msg.action)
    if scope is None or action is None:
        raise Invalid(f"unknown scope {msg.scope} or action {msg.action}")
    try:
        rules = tuple(tuple(tuple(_rbac_match(m) for m in c.matches) for c in r.clauses) for r in msg.rules)
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc).splitlines()[0]) from None
    policy = Authorization(name=msg.name, namespace=msg.namespace, scope=scope, action=action, rules=rules)
    if name != policy.key:
        raise Invalid(f"resource name does not match the policy {policy.key!r}")
    return policy


# ------------------------------------------------------------------ encoding (the control plane's side)


def _gateway_proto(gw: GatewayAddress) -> wpb.GatewayAddress:
    out = wpb.GatewayAddress(hbone_mtls_port=gw.hbone_mtls_port)
    first, _, rest = gw.destination.rpartition("/")
    try:
        out.address.CopyFrom(wpb.NetworkAddress(network=first, address=ip_bytes(rest)))
    except ValueError:
        out.hostname.CopyFrom(wpb.NamespacedHostname(namespace=first, hostname=rest))
    return out


_TYPE_VALUES: dict[str, Any] = {k.lower(): v for k, v in wpb.WorkloadType.items()}


def workload_proto(w: Workload) -> wpb.Workload:
    out = wpb.Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        addresses=[ip_bytes(ip) for ip in w.workload_ips],
        hostname=w.hostname,
        network=w.network,
        tunnel_protocol=wpb.HBONE if w.protocol is Protocol.HBONE else wpb.NONE,
        trust_domain=w.trust_domain,
        service_account=w.service_account,
        node=w.node,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=_TYPE_VALUES.get(w.workload_type, wpb.POD),
        workload_name=w.workload_name,
        native_tunnel=w.native_tunnel,
        authorization_policies=w.authorization_policies,
        status=wpb.UNHEALTHY if w.status is HealthStatus.UNHEALTHY else wpb.HEALTHY,
        cluster_id=w.cluster_id,
        network_mode=wpb.HOST_NETWORK if w.network_mode == "HostNetwork" else wpb.STANDARD,
    )
    for key, ports in w.services.items():
        out.services[key].ports.extend(wpb.Port(service_port=s, target_port=t) for s, t in ports.items())
    if w.waypoint is not None:
        out.waypoint.CopyFrom(_gateway_proto(w.waypoint))
    if w.network_gateway is not None:
        out.network_gateway.CopyFrom(_gateway_proto(w.network_gateway))
    if w.locality != Locality():
        out.locality.CopyFrom(wpb.Locality(region=w.locality.region, zone=w.locality.zone, subzone=w.locality.subzone))
    if w.capacity != 1:
        out.capacity.value = w.capacity
    return out


def service_proto(s: Service) -> wpb.Service:
    out = wpb.Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        addresses=[
            wpb.NetworkAddress(network=v.rpartition("/")[0], address=ip_bytes(v.rpartition("/")[2])) for v in s.vips
        ],
        ports=[wpb.Port(service_port=p, target_port=t) for p, t in s.ports.items()],
        subject_alt_names=s.subject_alt_names,
        canonical=s.canonical,
    )
    if s.waypoint is not None:
        out.waypoint.CopyFrom(_gateway_proto(s.waypoint))
    return out


def address_payload(item: Workload | Service) -> bytes:
    if isinstance(item, Workload):
        return wpb.Address(workload=workload_proto(item)).SerializeToString()
    return wpb.Address(service=service_proto(item)).SerializeToString()


def _string_proto(m: StringMatch) -> apb.StringMatch:
    if m.exact is not None:
        return apb.StringMatch(exact=m.exact)
    if m.prefix is not None:
        return apb.StringMatch(prefix=m.prefix)
    if m.suffix is not None:
        return apb.StringMatch(suffix=m.suffix)
    out = apb.StringMatch()
    out.presence.SetInParent()
    return out


def _cidr_protos(nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[apb.Address]:
    return [apb.Address(address=n.network_address.packed, length=n.prefixlen) for n in nets]


def _match_proto(m: RbacMatch) -> apb.Match:
    return apb.Match(
        namespaces=[_string_proto(x) for x in m.namespaces],
        not_namespaces=[_string_proto(x) for x in m.not_namespaces],
        principals=[_string_proto(x) for x in m.principals],
        not_principals=[_string_proto(x) for x in m.not_principals],
        service_accounts=[
            apb.ServiceAccountMatch(namespace=x.namespace, service_account=x.service_account)
            for x in m.service_accounts
        ],
        not_service_accounts=[
            apb.ServiceAccountMatch(namespace=x.namespace, service_account=x.service_account)
            for x in m.not_service_accounts
        ],
        source_ips=_cidr_protos(m.source_ips),
        not_source_ips=_cidr_protos(m.not_source_ips),
        destination_ips=_cidr_protos(m.destination_ips),
        not_destination_ips=_cidr_protos(m.not_destination_ips),
        destination_ports=m.destination_ports,
        not_destination_ports=m.not_destination_ports,
    )


def authorization_payload(p: Authorization) -> bytes:
    scope = {Scope.GLOBAL: apb.GLOBAL, Scope.NAMESPACE: apb.NAMESPACE, Scope.WORKLOAD_SELECTOR: apb.WORKLOAD_SELECTOR}
    return apb.Authorization(
        name=p.name,
        namespace=p.namespace,
        scope=scope[p.scope],
        action=apb.DENY if p.action is Action.DENY else apb.ALLOW,
        rules=[apb.Rule(clauses=[apb.Clause(matches=[_match_proto(m) for m in c]) for c in r]) for r in p.rules],
    ).SerializeToString()

"""The XDS protos are wire-compatible with istiod's and ztunnel's: package, message names and field numbers pinned.

Numbers from istio/ztunnel proto/{workload,authorization}.proto, istio/istio pkg/workloadapi/security (service
accounts) and envoyproxy's envoy/service/discovery/v3/discovery.proto, envoy/config/core/v3/base.proto.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyztunnel.protocols._pb import (
    authorization_pb2,
    discovery_pb2,
    envoy_core_pb2,
    google_rpc_status_pb2,
    workload_pb2,
)

PINNED: dict[str, tuple[Any, dict[str, int]]] = {
    "envoy.service.discovery.v3.DeltaDiscoveryRequest": (
        discovery_pb2.DeltaDiscoveryRequest.DESCRIPTOR,
        {
            "node": 1,
            "type_url": 2,
            "resource_names_subscribe": 3,
            "resource_names_unsubscribe": 4,
            "initial_resource_versions": 5,
            "response_nonce": 6,
            "error_detail": 7,
        },
    ),
    "envoy.service.discovery.v3.DeltaDiscoveryResponse": (
        discovery_pb2.DeltaDiscoveryResponse.DESCRIPTOR,
        {"system_version_info": 1, "resources": 2, "type_url": 4, "nonce": 5, "removed_resources": 6},
    ),
    "envoy.service.discovery.v3.Resource": (
        discovery_pb2.Resource.DESCRIPTOR,
        {"version": 1, "resource": 2, "name": 3, "aliases": 4, "ttl": 6, "cache_control": 7},
    ),
    "envoy.config.core.v3.Node": (
        envoy_core_pb2.Node.DESCRIPTOR,
        {"id": 1, "cluster": 2, "metadata": 3, "user_agent_name": 6, "user_agent_version": 7, "client_features": 10},
    ),
    "google.rpc.Status": (google_rpc_status_pb2.Status.DESCRIPTOR, {"code": 1, "message": 2, "details": 3}),
    "istio.workload.Address": (workload_pb2.Address.DESCRIPTOR, {"workload": 1, "service": 2}),
    "istio.workload.Workload": (
        workload_pb2.Workload.DESCRIPTOR,
        {
            "name": 1,
            "namespace": 2,
            "addresses": 3,
            "network": 4,
            "tunnel_protocol": 5,
            "trust_domain": 6,
            "service_account": 7,
            "waypoint": 8,
            "node": 9,
            "canonical_name": 10,
            "canonical_revision": 11,
            "workload_type": 12,
            "workload_name": 13,
            "native_tunnel": 14,
            "authorization_policies": 16,
            "status": 17,
            "cluster_id": 18,
            "network_gateway": 19,
            "uid": 20,
            "hostname": 21,
            "services": 22,
            "application_tunnel": 23,
            "locality": 24,
            "network_mode": 25,
            "extensions": 26,
            "capacity": 27,
        },
    ),
    "istio.workload.Service": (
        workload_pb2.Service.DESCRIPTOR,
        {
            "name": 1,
            "namespace": 2,
            "hostname": 3,
            "addresses": 4,
            "ports": 5,
            "subject_alt_names": 6,
            "waypoint": 7,
            "load_balancing": 8,
            "ip_families": 9,
            "extensions": 10,
            "canonical": 11,
        },
    ),
    "istio.workload.GatewayAddress": (
        workload_pb2.GatewayAddress.DESCRIPTOR,
        {"hostname": 1, "address": 2, "hbone_mtls_port": 3},
    ),
    "istio.workload.NetworkAddress": (workload_pb2.NetworkAddress.DESCRIPTOR, {"network": 1, "address": 2}),
    "istio.workload.NamespacedHostname": (
        workload_pb2.NamespacedHostname.DESCRIPTOR,
        {"namespace": 1, "hostname": 2},
    ),
    "istio.workload.Port": (workload_pb2.Port.DESCRIPTOR, {"service_port": 1, "target_port": 2}),
    "istio.workload.PortList": (workload_pb2.PortList.DESCRIPTOR, {"ports": 1}),
    "istio.workload.Locality": (workload_pb2.Locality.DESCRIPTOR, {"region": 1, "zone": 2, "subzone": 3}),
    "istio.workload.LoadBalancing": (
        workload_pb2.LoadBalancing.DESCRIPTOR,
        {"routing_preference": 1, "mode": 2, "health_policy": 3, "dns_connect_strategy": 4},
    ),
    "istio.workload.ApplicationTunnel": (workload_pb2.ApplicationTunnel.DESCRIPTOR, {"protocol": 1, "port": 2}),
    "istio.security.Authorization": (
        authorization_pb2.Authorization.DESCRIPTOR,
        {"name": 1, "namespace": 2, "scope": 3, "action": 4, "rules": 5},
    ),
    "istio.security.Rule": (authorization_pb2.Rule.DESCRIPTOR, {"clauses": 1}),
    "istio.security.Clause": (authorization_pb2.Clause.DESCRIPTOR, {"matches": 2}),
    "istio.security.Match": (
        authorization_pb2.Match.DESCRIPTOR,
        {
            "namespaces": 1,
            "not_namespaces": 2,
            "principals": 3,
            "not_principals": 4,
            "source_ips": 5,
            "not_source_ips": 6,
            "destination_ips": 7,
            "not_destination_ips": 8,
            "destination_ports": 9,
            "not_destination_ports": 10,
            "service_accounts": 11,
            "not_service_accounts": 12,
        },
    ),
    "istio.security.Address": (authorization_pb2.Address.DESCRIPTOR, {"address": 1, "length": 2}),
    "istio.security.ServiceAccountMatch": (
        authorization_pb2.ServiceAccountMatch.DESCRIPTOR,
        {"namespace": 1, "service_account": 2},
    ),
    "istio.security.StringMatch": (
        authorization_pb2.StringMatch.DESCRIPTOR,
        {"exact": 1, "prefix": 2, "suffix": 3, "presence": 4},
    ),
}


@pytest.mark.parametrize("full_name", sorted(PINNED))
def test_field_numbers_match_istio_and_envoy(full_name: str) -> None:
    descriptor, fields = PINNED[full_name]
    assert descriptor.full_name == full_name
    got = {f.name: f.number for f in descriptor.fields if f.name in fields}
    assert got == fields


def test_enum_numbers() -> None:
    assert workload_pb2.TunnelProtocol.Value("HBONE") == 1
    assert workload_pb2.WorkloadStatus.Value("UNHEALTHY") == 1
    assert workload_pb2.WorkloadType.Value("POD") == 2
    assert workload_pb2.NetworkMode.Value("HOST_NETWORK") == 1
    assert authorization_pb2.Scope.Value("WORKLOAD_SELECTOR") == 2
    assert authorization_pb2.Action.Value("DENY") == 1


def test_service_path_is_envoys() -> None:
    service = discovery_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"]
    assert service.full_name == "envoy.service.discovery.v3.AggregatedDiscoveryService"
    method = service.methods_by_name["DeltaAggregatedResources"]
    assert method.client_streaming and method.server_streaming


def test_a_known_wire_encoding_decodes() -> None:
    """Bytes built by hand from the field numbers (tag = number << 3 | wire type) decode as istiod means them."""
    # Workload{uid(20)="u", addresses(3)=[10.0.0.1], tunnel_protocol(5)=HBONE}
    wire = b"\xa2\x01\x01u" + b"\x1a\x04\x0a\x00\x00\x01" + b"\x28\x01"
    workload = workload_pb2.Workload.FromString(wire)
    assert workload.uid == "u"
    assert list(workload.addresses) == [bytes([10, 0, 0, 1])]
    assert workload.tunnel_protocol == workload_pb2.HBONE

"""Outbound to a service or workload with a waypoint goes to the waypoint over HBONE, with the original destination
as :authority and the waypoint's identity expected (ztunnel's outbound); the waypoint's own traffic goes direct."""

from __future__ import annotations

import pytest

from pyztunnel.proxy.outbound import OutboundError, resolve
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex

CONFIG = """
workloads:
- {uid: wp-0, name: waypoint-0, namespace: default, serviceAccount: waypoint, workloadIps: [10.244.1.9],
   services: {"default/waypoint.default.svc.cluster.local": {15008: 15008}}}
- {uid: hb-0, name: httpbin-0, namespace: default, serviceAccount: httpbin, workloadIps: [10.244.2.2], protocol: HBONE,
   services: {"default/httpbin.default.svc.cluster.local": {8000: 8080}}}
- {uid: pod-w, name: pod-w, namespace: default, workloadIps: [10.244.2.7], protocol: HBONE,
   waypoint: {destination: "/10.244.1.9", hboneMtlsPort: 15008}}
services:
- {name: waypoint, namespace: default, hostname: waypoint.default.svc.cluster.local, vips: ["/10.96.0.30"],
   ports: {15008: 15008}}
- {name: httpbin, namespace: default, hostname: httpbin.default.svc.cluster.local, vips: ["/10.96.0.11"],
   ports: {8000: 8080}, waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}}
"""


@pytest.fixture
def index() -> WorkloadIndex:
    return WorkloadIndex(local.parse(CONFIG, "t.yaml"))


def test_a_service_with_a_waypoint_goes_to_the_waypoint(index: WorkloadIndex) -> None:
    up = resolve(index, "10.96.0.11", 8000)
    assert (up.ip, up.hbone_port, up.authority) == ("10.244.1.9", 15008, "10.96.0.11:8000")
    assert up.hbone and up.workload is not None and up.workload.uid == "wp-0"
    assert up.service is not None and up.service.name == "httpbin"


def test_a_workload_with_a_waypoint_goes_to_it_with_its_own_address_as_authority(index: WorkloadIndex) -> None:
    up = resolve(index, "10.244.2.7", 9000)
    assert (up.ip, up.authority) == ("10.244.1.9", "10.244.2.7:9000")


def test_the_waypoints_own_traffic_goes_direct(index: WorkloadIndex) -> None:
    up = resolve(index, "10.96.0.11", 8000, src=index.by_uid["wp-0"])
    assert (up.ip, up.port, up.authority) == ("10.244.2.2", 8080, None)


def test_a_waypoint_without_a_healthy_workload_fails_the_connection() -> None:
    index = WorkloadIndex(
        local.parse(CONFIG.replace("workloadIps: [10.244.1.9]", "workloadIps: [10.244.1.9], status: Unhealthy"), "t")
    )
    with pytest.raises(OutboundError, match=r"waypoint default/waypoint\.default\.svc\.cluster\.local has no healthy"):
        resolve(index, "10.96.0.11", 8000)

"""client → gateway → waypoint → httpbin in the local cluster (root, namespaces): the service's `useWaypoint` sends
its traffic through the waypoint (its header on every response, its L7 rule), the pods behind it admit only the
waypoint, and a rolling upgrade of every proxy under load with the waypoint in the path fails no request (the
waypoint is a Deployment: only the proxies are rolled)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyztunnel.experiment.runner import LoadProcess, upgrade
from pyztunnel.experiment.scenarios import Scenario
from tests.conftest import require_system
from tests.system.cluster_fixtures import Cluster, default_doc, running

pytestmark = pytest.mark.system


def waypoint_doc() -> dict[str, Any]:
    doc = default_doc()
    doc["deployments"].append(
        {
            "name": "waypoint",
            "namespace": "default",
            "serviceAccount": "waypoint",
            "mesh": False,  # a waypoint speaks HBONE itself, outside the capture
            "command": ["pyztunnel", "waypoint", "--deny-path-prefix", "/deny"],
            "ports": [15008, 15021],
            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
            "terminationGracePeriodSeconds": 2,
        }
    )
    doc["services"].append(
        {"name": "waypoint", "namespace": "default", "selector": {"app": "waypoint"}, "ports": [{"port": 15008}]}
    )
    next(s for s in doc["services"] if s["name"] == "httpbin")["useWaypoint"] = "waypoint"
    return doc


@pytest.fixture(scope="module")
def mesh() -> Iterator[Cluster]:
    require_system()
    with running("twp", waypoint_doc()) as cluster:
        yield cluster


def curl_head(cluster: Cluster, netns: str, url: str) -> tuple[str, str]:
    """(status, the waypoint header or "") of one GET."""
    out = cluster.run_in(netns, "curl", "-s", "-m", "20", "-o", "/dev/null", "-D", "-", url, check=False)
    lines = out.splitlines()
    status = lines[0].split()[1] if lines and lines[0].startswith("HTTP/") else "000"
    header = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("x-pyztunnel-waypoint:")), "")
    return status, header


def client_ns(cluster: Cluster) -> str:
    return str(cluster.pod("client")["netns"])


def gateway_url(cluster: Cluster, path: str) -> str:
    return f"http://{cluster.service_vip('gateway')}:80{path}"


def test_traffic_through_the_waypoint_is_marked_and_its_rule_applies(mesh: Cluster) -> None:
    waypoint_pod = mesh.pod("waypoint")["name"]
    status, header = curl_head(mesh, client_ns(mesh), gateway_url(mesh, "/status/418"))
    assert (status, header) == ("418", waypoint_pod)
    status, header = curl_head(mesh, client_ns(mesh), gateway_url(mesh, "/deny/anything"))
    assert (status, header) == ("403", waypoint_pod)  # answered by the waypoint, httpbin never saw it
    # the gateway's proxy opened its connections to the waypoint (its identity) for the httpbin service
    metrics = mesh.metrics(mesh.proxy(mesh.pod("gateway")["node"]))
    opened = [
        line
        for line in metrics.splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
        and 'destination_principal="spiffe://cluster.local/ns/default/sa/waypoint"' in line
        and 'destination_service="httpbin.default.svc.cluster.local"' in line
    ]
    assert opened, metrics[-2000:]


def test_the_pods_behind_the_waypoint_admit_only_the_waypoint(mesh: Cluster) -> None:
    gateway = mesh.pod("gateway")
    httpbin = mesh.pod("httpbin")
    # straight to a pod, past the waypoint: the implicit policy (only the waypoint's identity) denies it
    status, _ = curl_head(mesh, gateway["netns"], f"http://{httpbin['ip']}:8080/status/200")
    assert status == "000"
    in_proxy = mesh.proxy(httpbin["node"])["name"]
    mesh.wait_log(
        in_proxy,
        lambda ln: "allow policies exist, but none allowed" in ln and "istio-ingressgateway" in ln,
        30,
        "the denial of the gateway's direct connection",
    )
    dump = mesh.config_dump(mesh.proxy(httpbin["node"]))
    names = {p["name"] for p in dump["policies"]}
    assert "istio_allow_waypoint_default_waypoint" in names


def test_a_rolling_upgrade_with_the_waypoint_in_the_path_fails_no_request(mesh: Cluster, tmp_path: Path) -> None:
    before = mesh.pod("waypoint")["name"]
    load = LoadProcess(
        client_ns(mesh), gateway_url(mesh, "/status/418"), 20, "10s", tmp_path / "load.json", tmp_path / "load.txt"
    )
    try:
        load.wait_started()
        upgrade(
            mesh.name, f"wp{int(time.time())}", Scenario("wp", "with a waypoint", True, True, 4.0), tmp_path / "up.log"
        )
    finally:
        result = load.stop()
    codes = result.get("RetCodes", {})
    assert set(codes) == {"418"} and codes["418"] > 0, codes
    assert mesh.pod("waypoint")["name"] == before  # only the proxies were rolled
    status, header = curl_head(mesh, client_ns(mesh), gateway_url(mesh, "/status/418"))
    assert (status, header) == ("418", before)  # the new proxies route through the waypoint too
    assert all(p["xds"]["current"] for p in mesh.state()["proxies"] if p["ready"])

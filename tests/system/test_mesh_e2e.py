"""Issue 3 end to end, on the real local cluster: the default scenario (client outside the mesh → nginx gateway →
httpbin ×2 in the mesh) plus a mesh client, a checksumming sink in the mesh and a tcp-echo outside it.

One cluster (`tme1`) for the module; the policy test rewrites workloads.yaml and so runs last.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.system.cluster_fixtures import (
    Cluster,
    access_lines,
    default_doc,
    deployment,
    running,
    spiffe,
    wait_for,
)

GATEWAY_ID = spiffe("istio-system", "istio-ingressgateway")
HTTPBIN_ID = spiffe("default", "httpbin")
HTTPBIN_HOST = "httpbin.default.svc.cluster.local"
LOG_TIMEOUT_S = 15.0
STREAM_BYTES = 100 * 1024 * 1024

# In the mesh: reads one connection to EOF, hashing it, then answers with the sha256 hex digest and the byte count.
SINK = """
import hashlib, socket
srv = socket.create_server(("0.0.0.0", 9100), backlog=64)
while True:
    conn, _ = srv.accept()
    digest, n = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 20):
        digest.update(chunk)
        n += len(chunk)
    conn.sendall(f"{digest.hexdigest()} {n}\\n".encode())
    conn.close()
"""

# In the mesh client: sends `total` pseudo-random bytes, half-closes, prints its own digest and the sink's answer.
SEND = """
import hashlib, random, socket, sys, time
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng, digest, sent = random.Random(7), hashlib.sha256(), 0
started = time.monotonic()
with socket.create_connection((host, port), timeout=60) as s:
    while sent < total:
        chunk = rng.randbytes(min(1 << 20, total - sent))
        s.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    answer = b""
    while data := s.recv(4096):
        answer += data
print(digest.hexdigest(), sent, answer.decode().strip(), f"{time.monotonic() - started:.2f}")
"""

# Passthrough check: one exchange with a tcp-echo outside the mesh.
ECHO_ONCE = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(b"ping through the node proxy\\n")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while data := s.recv(4096):
        got += data
print(got.decode().strip())
"""


def mesh_doc() -> dict[str, Any]:
    doc = default_doc()
    # nginx closes each upstream connection after its request, so the proxies log `connection complete` at once.
    deployment(doc, "gateway")["env"]["KEEPALIVE_TIME"] = "1ms"
    doc["deployments"] += [
        {
            "name": "meshclient",
            "mesh": True,
            "command": ["sleep", "infinity"],
            "terminationGracePeriodSeconds": 1,
            "nodeName": "node-1",
        },
        {
            "name": "sink",
            "mesh": True,
            "serviceAccount": "sink",
            "command": [sys.executable, "-c", SINK],
            "ports": [9100],
            "readinessProbe": {"tcpSocket": {"port": 9100}},
            "terminationGracePeriodSeconds": 1,
            "nodeName": "node-3",
        },
        {
            "name": "plainecho",
            "mesh": False,
            "command": ["pyztunnel", "tcp-echo", "--port", "9000", "--grace", "1s"],
            "ports": [9000],
            "readinessProbe": {"tcpSocket": {"port": 9000}},
            "terminationGracePeriodSeconds": 2,
            "nodeName": "node-2",
        },
    ]
    return doc


@pytest.fixture(scope="module")
def mesh() -> Iterator[Cluster]:
    with running("tme1", mesh_doc()) as cluster:
        yield cluster


def gateway_url(cluster: Cluster) -> str:
    return f"http://{cluster.service_vip('gateway')}/status/418"


def client_ns(cluster: Cluster) -> str:
    return str(cluster.pod("client")["netns"])


def pod_by_ip(cluster: Cluster, ip: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in cluster.state()["pods"] if p["ip"] == ip)
    return found


def gateway_to_httpbin(cluster: Cluster) -> tuple[dict[str, str], dict[str, str]]:
    """One request client → gateway → httpbin; the (outbound, inbound) access-log lines it produced."""
    gateway = cluster.pod("gateway")
    out_proxy = cluster.proxy(gateway["node"])
    seen = len(access_lines(cluster.log_lines(out_proxy["name"]), direction="outbound"))
    assert cluster.fetch(client_ns(cluster), gateway_url(cluster)) == ["418"]
    outbound = wait_for(
        "the gateway node's outbound access-log line",
        lambda: access_lines(cluster.log_lines(out_proxy["name"]), direction="outbound")[seen:],
        LOG_TIMEOUT_S,
    )[0]
    httpbin = pod_by_ip(cluster, outbound["dst.hbone_addr"].rsplit(":", 1)[0])
    in_proxy = cluster.proxy(httpbin["node"])
    inbound = wait_for(
        "the httpbin node's inbound access-log line",
        lambda: access_lines(
            cluster.log_lines(in_proxy["name"]), direction="inbound", dst__hbone_addr=outbound["dst.hbone_addr"]
        ),
        LOG_TIMEOUT_S,
    )[-1]
    return outbound, inbound


def test_gateway_to_httpbin_through_the_vip_is_logged_by_both_proxies(mesh: Cluster) -> None:
    outbound, inbound = gateway_to_httpbin(mesh)
    httpbin_ip = outbound["dst.hbone_addr"].rsplit(":", 1)[0]
    for line in (outbound, inbound):
        assert line["level"] == "info", line
        assert line["src.identity"] == GATEWAY_ID, line
        assert line["dst.identity"] == HTTPBIN_ID, line
        assert line["dst.hbone_addr"] == f"{httpbin_ip}:8080", line
        assert line["src.workload"] == mesh.pod("gateway")["name"], line
        assert line["dst.workload"] == pod_by_ip(mesh, httpbin_ip)["name"], line
        assert "error" not in line, line
        assert re.fullmatch(r"\d+ms", line["duration"]), line
    assert outbound["direction"] == "outbound" and inbound["direction"] == "inbound"
    assert outbound["dst.service"] == HTTPBIN_HOST
    assert outbound["dst.addr"] == f"{httpbin_ip}:15008", outbound
    # The request crossed: what the gateway sent is what httpbin's proxy received, and the answer came back.
    assert int(outbound["bytes_sent"]) == int(inbound["bytes_recv"]) > 0
    assert int(inbound["bytes_sent"]) == int(outbound["bytes_recv"]) > 0


def test_inbound_access_log_dst_addr_is_the_hbone_port(mesh: Cluster) -> None:
    outbound, inbound = gateway_to_httpbin(mesh)
    assert inbound["dst.addr"] == outbound["dst.addr"] == outbound["dst.hbone_addr"].replace(":8080", ":15008")


def opened(metrics: str, reporter: str, **labels: str) -> float:
    """Sum of istio_tcp_connections_opened_total over series with that reporter and labels."""
    total = 0.0
    want = [f'reporter="{reporter}"', *(f'{k}="{v}"' for k, v in labels.items())]
    for line in metrics.splitlines():
        if line.startswith("istio_tcp_connections_opened_total{") and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_connections_at_source_and_destination(mesh: Cluster) -> None:
    gateway = mesh.pod("gateway")
    source_proxy = mesh.proxy(gateway["node"])
    httpbin_proxies = [mesh.proxy(n) for n in sorted({p["node"] for p in mesh.pods("httpbin")})]

    def counts() -> tuple[float, float]:
        src = opened(mesh.metrics(source_proxy), "source", source_workload=gateway["name"])
        dst = sum(opened(mesh.metrics(p), "destination", source_workload=gateway["name"]) for p in httpbin_proxies)
        return src, dst

    src_before, dst_before = counts()
    requests = 3
    assert mesh.fetch(client_ns(mesh), *[gateway_url(mesh)] * requests) == ["418"] * requests

    def grown() -> tuple[float, float] | None:
        src, dst = counts()
        return (src, dst) if src >= src_before + requests and dst >= dst_before + requests else None

    src_after, dst_after = wait_for(f"{requests} more connections counted at both reporters", grown, LOG_TIMEOUT_S)
    print(
        f"opened (reporter=source) {src_before:g} → {src_after:g}; (reporter=destination) {dst_before:g} → {dst_after:g}"
    )


def test_non_mesh_destination_passes_through(mesh: Cluster) -> None:
    meshclient = mesh.pod("meshclient")
    echo = mesh.pod("plainecho")
    assert not echo["mesh"] and meshclient["mesh"]
    proxy = mesh.proxy(meshclient["node"])
    target = f"{echo['ip']}:9000"
    answer = mesh.python_in(meshclient["netns"], ECHO_ONCE, echo["ip"], "9000")
    assert answer.strip() == "ping through the node proxy"
    line = wait_for(
        "the passthrough access-log line",
        lambda: access_lines(mesh.log_lines(proxy["name"]), direction="outbound", dst__addr=target),
        LOG_TIMEOUT_S,
    )[-1]
    # Plain TCP: no tunnel, no peer identity.
    assert "dst.hbone_addr" not in line and "dst.identity" not in line, line
    assert line["src.workload"] == meshclient["name"] and "error" not in line, line
    assert int(line["bytes_sent"]) == int(line["bytes_recv"]) == len(b"ping through the node proxy\n"), line


def test_100_mib_stream_through_the_mesh_arrives_intact(mesh: Cluster) -> None:
    client = mesh.pod("meshclient")
    sink = mesh.pod("sink")
    assert client["node"] != sink["node"]
    out = mesh.python_in(client["netns"], SEND, sink["ip"], "9100", str(STREAM_BYTES), timeout=240)
    sent_digest, sent, got_digest, got, seconds = out.split()
    print(f"100 MiB through two proxies in {seconds}s ({STREAM_BYTES / float(seconds) / 1e6:.0f} MB/s)")
    assert int(sent) == int(got) == STREAM_BYTES
    assert sent_digest == got_digest
    proxy = mesh.proxy(client["node"])
    line = wait_for(
        "the stream's access-log line",
        lambda: access_lines(mesh.log_lines(proxy["name"]), direction="outbound", dst__hbone_addr=f"{sink['ip']}:9100"),
        LOG_TIMEOUT_S,
    )[-1]
    assert line["dst.identity"] == spiffe("default", "sink") and int(line["bytes_sent"]) == STREAM_BYTES, line


def test_deny_policy_blocks_gateway_to_httpbin(mesh: Cluster) -> None:
    """The policy is added at run time through the controller's API, which pushes it to every proxy over XDS, so the
    module's other tests run without it (a spec `policies:` entry would apply from the start). Runs last in the
    module and takes the policy away again."""
    deny = {
        "name": "deny-gateway",
        "namespace": "default",
        "scope": "Namespace",
        "action": "Deny",
        "rules": [[[{"principals": [{"Exact": GATEWAY_ID.removeprefix("spiffe://")}]}]]],
    }
    proxies = [p["name"] for p in mesh.state()["proxies"] if p["phase"] == "Running"]
    gateway = mesh.pod("gateway")
    out_proxy = mesh.proxy(gateway["node"])
    httpbin_nodes = {p["node"] for p in mesh.pods("httpbin")}
    before = {p: len(mesh.log_lines(p)) for p in proxies}

    def all_acked() -> bool:
        state = mesh.state()
        return all(p["xds"]["current"] for p in state["proxies"] if p["name"] in proxies)

    mesh.api.call("PUT", "/v1/policies", {"policies": [deny]})
    try:
        wait_for("every proxy to ACK the policy", all_acked, LOG_TIMEOUT_S)
        seen = len(access_lines(mesh.log_lines(out_proxy["name"]), direction="outbound"))
        answers = mesh.fetch(client_ns(mesh), gateway_url(mesh))
        assert answers == ["502"], answers  # nginx: the upstream connection failed
        outbound = wait_for(
            "the denied outbound line",
            lambda: access_lines(mesh.log_lines(out_proxy["name"]), direction="outbound")[seen:],
            LOG_TIMEOUT_S,
        )
        assert {line["error"] for line in outbound} == {"http status: 401"}, outbound
        assert all(line["level"] == "error" for line in outbound)
        for line in outbound:
            ip = line["dst.hbone_addr"].rsplit(":", 1)[0]
            in_proxy = mesh.proxy(pod_by_ip(mesh, ip)["node"])
            assert pod_by_ip(mesh, ip)["node"] in httpbin_nodes
            denied = inbound_since(mesh, in_proxy["name"], before[in_proxy["name"]], line["dst.hbone_addr"])
            for f in denied:
                assert f["error"] == "connection denied: explicitly denied by: default/deny-gateway", f
                assert f["src.identity"] == GATEWAY_ID and f["dst.identity"] == HTTPBIN_ID, f
                assert f["bytes_recv"] == "0" and f["bytes_sent"] == "0", f  # nothing reached httpbin
    finally:
        mesh.api.call("PUT", "/v1/policies", {"policies": []})
        wait_for("every proxy to ACK the policy's removal", all_acked, LOG_TIMEOUT_S)


def inbound_since(mesh: Cluster, proxy: str, first_line: int, hbone_addr: str) -> list[dict[str, str]]:
    """Inbound access-log lines of `proxy` for `hbone_addr` logged after line `first_line`, once there is one."""
    lines: list[dict[str, str]] = wait_for(
        f"an inbound access-log line for {hbone_addr} in {proxy}",
        lambda: access_lines(mesh.log_lines(proxy)[first_line:], direction="inbound", dst__hbone_addr=hbone_addr),
        LOG_TIMEOUT_S,
    )
    return lines


def time_prefix(monotonic_at: float) -> str:
    """The RFC 3339 UTC timestamp (as log lines start) of a monotonic instant."""
    wall = time.time() - (time.monotonic() - monotonic_at)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))

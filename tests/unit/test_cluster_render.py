"""Pure renderings of the cluster: service DNAT rulesets, fabric batches, workloads file, pod environment."""

from __future__ import annotations

from pyztunnel.cluster import render, topology
from pyztunnel.cluster.topology import ServiceRule


def test_dnat_jumps_to_a_random_ready_endpoint() -> None:
    rules = [ServiceRule("default", "httpbin", "10.96.0.11", 8000, 8080, ("10.244.2.2", "10.244.1.3"))]
    text = topology.render_services(rules, node_index=1)
    assert "ip daddr 10.96.0.11 tcp dport 8000 jump svc-default-httpbin-8000" in text
    assert (
        "numgen random mod 2 vmap { 0 : jump svc-default-httpbin-8000-ep0, 1 : jump svc-default-httpbin-8000-ep1 }"
        in text
    )
    # Endpoints are ordered by address, whatever order they came in.
    assert text.index("dnat to 10.244.1.3:8080") < text.index("dnat to 10.244.2.2:8080")


def test_dnat_without_endpoints_rejects() -> None:
    text = topology.render_services([ServiceRule("x", "gw", "10.96.0.10", 80, 8080, ())], node_index=2)
    assert "ip daddr 10.96.0.10 tcp dport 80 reject with tcp reset" in text
    assert "dnat to" not in text


def test_dnat_replaces_the_table_in_one_transaction_and_masquerades_hairpin() -> None:
    text = topology.render_services([], node_index=3)
    lines = text.splitlines()
    assert lines[0] == "table ip pzt-svc {}"
    assert lines[1] == "delete table ip pzt-svc"
    assert 'ct status dnat ip saddr 10.244.3.0/24 oifname "cbr0" masquerade' in text
    assert "type nat hook prerouting priority dstnat" in text


def test_dnat_rendering_is_deterministic() -> None:
    a = ServiceRule("default", "a", "10.96.0.10", 80, 8080, ("10.244.1.2",))
    b = ServiceRule("default", "b", "10.96.0.11", 80, 8080, ("10.244.1.3",))
    assert topology.render_services([a, b], 1) == topology.render_services([b, a], 1)


def test_fabric_never_configures_the_host() -> None:
    nodes = [topology.NodeAddr("node-1", 1), topology.NodeAddr("node-2", 2)]
    batches = topology.render_fabric("c1", nodes)
    host_ns, host = batches[0]
    assert host_ns is None
    # The host batch only creates namespaces and veths whose both ends land in cluster namespaces.
    assert host == [
        "netns add pzt-c1-fabric",
        "netns add pzt-c1-node-node-1",
        "netns add pzt-c1-node-node-2",
        "link add n1 netns pzt-c1-fabric type veth peer name eth0 netns pzt-c1-node-node-1",
        "link add n2 netns pzt-c1-fabric type veth peer name eth0 netns pzt-c1-node-node-2",
    ]
    by_ns = dict(batches[1:])
    assert "addr add 10.240.0.254/24 dev br0" in by_ns["pzt-c1-fabric"]
    assert "addr add 10.240.0.2/24 dev eth0" in by_ns["pzt-c1-node-node-2"]
    assert "addr add 10.244.2.1/24 dev cbr0" in by_ns["pzt-c1-node-node-2"]
    # Bridges have fixed MACs (a bridge otherwise takes its lowest port MAC, which changes as pods come and go).
    assert "link add cbr0 address 02:00:0a:f4:02:01 type bridge" in by_ns["pzt-c1-node-node-2"]
    assert "link add br0 address 02:00:0a:f0:fe:01 type bridge" in by_ns["pzt-c1-fabric"]
    assert "route add 10.244.2.0/24 via 10.240.0.2" in by_ns["pzt-c1-fabric"]
    assert "route add 10.244.1.0/24 via 10.240.0.1" in by_ns["pzt-c1-node-node-2"]
    assert not any("10.244.2.0/24" in line for line in by_ns["pzt-c1-node-node-2"] if line.startswith("route"))


def test_names_and_addresses() -> None:
    assert topology.pod_veth("0b1c2d3e-4f50-4000-8000-000000000000") == "v0b1c2d3e"
    assert len(topology.pod_veth("f" * 32)) <= 15
    assert topology.vip(0) == "10.96.0.10"
    assert topology.vip(300) == "10.96.1.54"
    assert topology.pod_ns("demo", "httpbin-abcde") == "pzt-demo-pod-httpbin-abcde"


HTTPBIN = render.ServiceView("httpbin", "default", "10.96.0.11", ((8000, 8080),), {"app": "httpbin"})


def workload(name: str, ip: str, ready: bool = True, mesh: bool = True, ns: str = "default") -> render.WorkloadView:
    return render.WorkloadView(name, ns, "httpbin", ip, "node-1", mesh, ready, {"app": "httpbin"})


def test_workloads_file_matches_reference_format() -> None:
    doc = render.render_workloads([workload("httpbin-a", "10.244.1.2")], [HTTPBIN], "cluster.local")
    (w,) = doc["workloads"]
    assert w == {
        "uid": "Kubernetes//v1/Pod/default/httpbin-a",
        "name": "httpbin-a",
        "namespace": "default",
        "serviceAccount": "httpbin",
        "trustDomain": "cluster.local",
        "workloadIps": ["10.244.1.2"],
        "node": "node-1",
        "protocol": "HBONE",
        "status": "Healthy",
        "services": {"default/httpbin.default.svc.cluster.local": {8000: 8080}},
    }
    assert doc["services"] == [
        {
            "name": "httpbin",
            "namespace": "default",
            "hostname": "httpbin.default.svc.cluster.local",
            "vips": ["/10.96.0.11"],
            "ports": {8000: 8080},
        }
    ]


def test_not_ready_pods_are_unhealthy_and_not_endpoints() -> None:
    pods = [workload("a", "10.244.1.2", ready=False), workload("b", "10.244.2.2"), workload("c", "10.244.3.2", ns="x")]
    doc = render.render_workloads(pods, [HTTPBIN], "cluster.local")
    assert [w["status"] for w in doc["workloads"]] == ["Unhealthy", "Healthy", "Healthy"]
    assert doc["workloads"][2]["services"] == {}  # another namespace: not selected
    assert render.endpoints(HTTPBIN, pods) == ("10.244.2.2",)
    assert (
        render.render_workloads([workload("n", "10.244.1.9", mesh=False)], [], "td")["workloads"][0]["protocol"]
        == "TCP"
    )


def test_service_env_and_expansion() -> None:
    env = render.service_env([HTTPBIN])
    assert env == {"HTTPBIN_SERVICE_HOST": "10.96.0.11", "HTTPBIN_SERVICE_PORT": "8000"}
    text = "server $(HTTPBIN_SERVICE_HOST):$(HTTPBIN_SERVICE_PORT); $(UNKNOWN) $$ $(A"
    assert render.expand(text, env) == "server 10.96.0.11:8000; $(UNKNOWN) $$ $(A"

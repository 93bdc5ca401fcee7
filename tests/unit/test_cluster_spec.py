"""Cluster spec validation: every problem reported as FILE:LINE: what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyztunnel.cluster import spec
from pyztunnel.cluster.spec import SpecError
from pyztunnel.errors import UserError

GOOD = """\
nodes:
  - name: node-1
  - name: node-2
deployments:
  - name: web
    replicas: 2
    command: [sleep, infinity]
    ports: [8080]
services:
  - name: web
    selector: {app: web}
    ports:
      - {port: 80, targetPort: 8080}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec.parse(text, "c.yaml")
    return info.value.problems


def test_default_spec_is_valid_and_is_the_seed_scenario() -> None:
    loaded = spec.load(None)
    assert loaded.warnings == []
    s = loaded.spec
    assert [n.name for n in s.nodes] == ["node-1", "node-2", "node-3"]
    by_name = {d.name: d for d in s.deployments}
    assert not by_name["client"].mesh
    assert by_name["gateway"].mesh and by_name["httpbin"].mesh
    assert by_name["httpbin"].replicas == 2
    assert by_name["gateway"].command[0] == "nginx"
    assert "keepalive_time $(KEEPALIVE_TIME)" in by_name["gateway"].files["nginx.conf"]
    ports = {(svc.name, p.port, p.target) for svc in s.services for p in svc.ports}
    assert ports == {("gateway", 80, 8080), ("httpbin", 8000, 8080)}
    assert s.proxy.updateStrategy.type == "RollingUpdate"
    assert (s.proxy.updateStrategy.rollingUpdate.maxSurge, s.proxy.updateStrategy.rollingUpdate.maxUnavailable) == (
        1,
        0,
    )
    assert s.proxy.terminationGracePeriodSeconds == 30


def test_good_spec_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    loaded = spec.load(path)
    assert loaded.spec.deployments[0].pod_labels == {"app": "web"}
    assert loaded.spec.services[0].ports[0].target == 8080


def test_unknown_field_is_reported_at_its_line() -> None:
    text = GOOD.replace("    replicas: 2\n", "    replicas: 2\n    replcias: 3\n")
    assert problems(text) == ["c.yaml:7: unknown field 'replcias' in deployments[0]"]


def test_wrong_type_is_reported_at_its_line() -> None:
    text = GOOD.replace("replicas: 2", 'replicas: "2"')
    (only,) = problems(text)
    assert only.startswith("c.yaml:6: deployments[0].replicas: Input should be a valid integer")


def test_negative_replicas_and_port_out_of_range() -> None:
    text = GOOD.replace("replicas: 2", "replicas: -1").replace("targetPort: 8080", "targetPort: 70000")
    found = problems(text)
    assert found[0].startswith("c.yaml:6: deployments[0].replicas: Input should be greater than or equal to 0")
    assert found[1].startswith(
        "c.yaml:13: services[0].ports[0].targetPort: Input should be less than or equal to 65535"
    )


def test_duplicate_names() -> None:
    text = GOOD.replace("  - name: node-2", "  - name: node-1")
    assert problems(text) == ["c.yaml:3: nodes[1].name: duplicate node name 'node-1'"]


def test_missing_required_field_is_reported_at_its_parent() -> None:
    text = GOOD.replace("    command: [sleep, infinity]\n", "")
    assert problems(text) == ["c.yaml:5: deployments[0].command: required field is missing"]


def test_service_selecting_nothing_is_a_warning_not_an_error() -> None:
    loaded = spec.parse(GOOD.replace("selector: {app: web}", "selector: {app: nope}"), "c.yaml")
    assert loaded.warnings == ["c.yaml:11: services[0].selector: selects no deployment; the service has no endpoints"]


def test_reference_to_a_missing_node() -> None:
    text = GOOD.replace("    ports: [8080]\n", "    ports: [8080]\n    nodeName: node-9\n", 1)
    assert problems(text) == ["c.yaml:9: deployments[0].nodeName: no node named 'node-9'"]


def test_mesh_pods_need_the_proxy() -> None:
    text = GOOD.replace("    replicas: 2\n", "    replicas: 2\n    mesh: true\n") + "proxy: {enabled: false}\n"
    assert problems(text) == ["c.yaml:7: deployments[0].mesh: mesh pods need proxy.enabled and agent.enabled"]


def test_probe_needs_exactly_one_kind() -> None:
    text = GOOD.replace("    ports: [8080]\n", "    ports: [8080]\n    readinessProbe: {periodSeconds: 2}\n", 1)
    (only,) = problems(text)
    assert only.startswith("c.yaml:9: deployments[0].readinessProbe: give exactly one of tcpSocket or httpGet")


def test_update_strategy_values() -> None:
    text = GOOD + "proxy:\n  updateStrategy:\n    type: Recreate\n"
    (only,) = problems(text)
    assert only.startswith("c.yaml:16: proxy.updateStrategy.type: Input should be 'RollingUpdate' or 'OnDelete'")


def test_malformed_yaml_has_a_line() -> None:
    (only,) = problems("nodes:\n  - name: a\n  bad: [\n")
    assert only.startswith("c.yaml:")
    assert "not valid YAML" in only


def test_not_a_mapping() -> None:
    assert problems("- 1\n") == ["c.yaml:1: the cluster spec must be a mapping with at least 'nodes'"]


def test_unreadable_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read the cluster spec"):
        spec.load(tmp_path / "missing.yaml")


def test_without_mesh_turns_every_mesh_part_off() -> None:
    s = spec.load(None).spec.without_mesh()
    assert not any(d.mesh for d in s.deployments)
    assert not s.proxy.enabled
    assert not s.ca.enabled


def test_dump_round_trips() -> None:
    s = spec.load(None).spec
    again = spec.parse(spec.dump(s), "dumped.yaml").spec
    assert again == s


POLICY = """
policies:
  - name: deny-gw
    namespace: default
    scope: Namespace
    action: Deny
    rules:
      - - - principals: [{Exact: cluster.local/ns/istio-system/sa/istio-ingressgateway}]
"""


def test_policies_are_validated_by_the_proxies_loader_and_rendered() -> None:
    from pyztunnel.cluster import render, spec

    loaded = spec.parse(spec.default_text() + POLICY, "with-policy.yaml")
    assert loaded.spec.policies[0]["name"] == "deny-gw"
    doc = render.render_workloads([], [], "cluster.local", loaded.spec.policies)
    assert doc["policies"] == loaded.spec.policies
    bad = spec.default_text() + POLICY.replace("scope: Namespace", "scope: Nowhere")
    with pytest.raises(spec.SpecError, match=r"bad\.yaml:\d+: policies\[0\]: .*'Namespace'"):
        spec.parse(bad, "bad.yaml")

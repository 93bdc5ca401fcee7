"""LOCAL_XDS_PATH parsing (errors with FILE:LINE) and the lookup index."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.workloads.model import Action, Protocol, Scope

EXAMPLE = """\
workloads:
- uid: k1//v1/Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["10.1.0.7"]
  protocol: HBONE
  node: node-a
  services: {"shop/cart.shop.svc.cluster.local": {80: 8080}}
- uid: k1//v1/Pod/shop/cart-1
  name: cart-1
  namespace: shop
  workloadIps: ["10.1.0.8"]
  protocol: HBONE
  status: Unhealthy
  services: {"shop/cart.shop.svc.cluster.local": {80: 8080}}
- name: legacy
  namespace: shop
  workloadIps: ["10.1.0.9"]
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/10.96.0.20"]
  ports: {80: 8080}
policies:
- name: only-frontend
  namespace: shop
  scope: Namespace
  action: Allow
  dryRun: false
  rules:
  - - - principals: [!Exact "cluster.local/ns/shop/sa/frontend"]
        destinationPorts: [8080]
"""


def test_example_parses_and_indexes() -> None:
    config = local.parse(EXAMPLE, "x.yaml")
    index = WorkloadIndex(config)
    cart = index.workload_by_ip("10.1.0.7")
    assert cart is not None and cart.name == "cart-0" and cart.protocol is Protocol.HBONE
    assert cart.identity == "spiffe://cluster.local/ns/shop/sa/cart"
    assert index.by_name[("shop", "cart-1")].uid == "k1//v1/Pod/shop/cart-1"
    assert index.by_uid["k1//v1/Pod/shop/cart-0"] is cart
    legacy = index.workload_by_ip("10.1.0.9")
    assert legacy is not None and legacy.protocol is Protocol.TCP
    service = index.service_by_vip("10.96.0.20")
    assert service is not None and service.hostname == "cart.shop.svc.cluster.local"
    endpoints = index.endpoints(service, 80)
    assert [(e.workload.name, e.target_port) for e in endpoints] == [("cart-0", 8080)]  # unhealthy cart-1 left out
    assert index.endpoints(service, 81) == []
    policy = config.policies[0]
    assert policy.scope is Scope.NAMESPACE and policy.action is Action.ALLOW
    match = policy.rules[0][0][0]
    assert match.principals[0].exact == "cluster.local/ns/shop/sa/frontend"
    assert [p.key for p in index.policies_for(cart)] == ["shop/only-frontend"]


def test_workload_identity_defaults() -> None:
    config = local.parse("workloads: [{namespace: a, workloadIps: ['10.0.0.1']}]", "x")
    assert config.workloads[0].identity == "spiffe://cluster.local/ns/a/sa/default"


def test_map_form_of_string_match() -> None:
    text = "policies:\n- name: p\n  rules: [[[{principals: [{Prefix: cluster.local/ns/a/}]}]]]\n"
    config = local.parse(text, "x")
    assert config.policies[0].rules[0][0][0].principals[0].prefix == "cluster.local/ns/a/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "workloads:\n- namespace: a\n  workloadIps: ['10.0.0.1']\n  colour: red\n",
            "x.yaml:4: unknown field 'colour'",
        ),
        ("services:\n- name: s\n  namespace: a\n  hostname: h\n  vips: ['/10.0.0.300']\n  ports: {}\n", "x.yaml:5:"),
        ("workloads:\n- namespace: a\n", "x.yaml:2: workloads.0.workloadIps: Field required"),
        ("workloads: [\n", "x.yaml:2: not valid YAML"),
        ("- a\n- b\n", "x.yaml:1: the top level must be a mapping"),
        ("policies:\n- name: p\n  action: Maybe\n", "x.yaml:3: policies.0.action"),
        ("nodes: []\n", "x.yaml:1: unknown field 'nodes'"),
    ],
)
def test_errors_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(local.ConfigError) as info:
        local.parse(text, "x.yaml")
    assert str(info.value).startswith(expected), str(info.value)


def test_empty_file_is_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("")
    assert local.load(path).workloads == ()


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(local.ConfigError, match="cannot read"):
        local.load(tmp_path / "missing.yaml")


def test_service_endpoints_from_service_entries() -> None:
    text = """\
workloads:
- {uid: u1, name: a, namespace: n, workloadIps: ['10.0.0.1'], protocol: HBONE}
- {uid: u2, name: b, namespace: n, workloadIps: ['10.0.0.2'], protocol: HBONE}
services:
- name: s
  namespace: n
  hostname: s.n.svc.cluster.local
  vips: ['/10.96.0.1']
  ports: {80: 8080}
  endpoints:
    u1: {workloadUid: u1, port: {80: 9090}}
    u2: {workloadUid: u2, status: Unhealthy}
"""
    index = WorkloadIndex(local.parse(text, "x"))
    service = index.service_by_vip("10.96.0.1")
    assert service is not None
    assert [(e.workload.uid, e.target_port) for e in index.endpoints(service, 80)] == [("u1", 9090)]

"""XDS resources ↔ the workload model (xds/convert.py): round trips equal the YAML-validated model; bad resources
give the NACK's reason."""

from __future__ import annotations

import pytest

from pyztunnel.protocols._pb import authorization_pb2 as apb
from pyztunnel.protocols._pb import workload_pb2 as wpb
from pyztunnel.workloads import local
from pyztunnel.workloads.model import Workload, trusted
from pyztunnel.xds import convert

CONFIG = local.parse(
    """
workloads:
- uid: Kubernetes//v1/Pod/shop/cart-0
  name: cart-0
  namespace: shop
  serviceAccount: cart
  trustDomain: cluster.local
  workloadIps: ["10.1.0.7", "fd00::7"]
  protocol: HBONE
  node: node-a
  workloadType: pod
  canonicalName: cart
  canonicalRevision: v1
  clusterId: Kubernetes
  locality: {region: r1, zone: z1}
  status: Unhealthy
  authorizationPolicies: [shop/only-frontend]
  waypoint: {destination: "/10.96.0.99", hboneMtlsPort: 15008}
  services: {"shop/cart.shop.svc.cluster.local": {80: 8080, 81: 8081}}
services:
- name: cart
  namespace: shop
  hostname: cart.shop.svc.cluster.local
  vips: ["/10.96.0.20"]
  ports: {80: 8080}
  subjectAltNames: [spiffe://cluster.local/ns/shop/sa/cart]
  waypoint: {destination: "shop/waypoint.shop.svc.cluster.local", hboneMtlsPort: 15008}
policies:
- name: only-frontend
  namespace: shop
  scope: WorkloadSelector
  action: Deny
  rules:
  - - - principals: [!Exact "cluster.local/ns/shop/sa/frontend", !Presence ]
        notNamespaces: [!Prefix kube-]
        sourceIps: [10.0.0.0/8]
        notDestinationIps: ["fd00::/64"]
        destinationPorts: [8080]
        serviceAccounts: [{namespace: shop, serviceAccount: web}]
    - - notDestinationPorts: [9090]
""",
    "t.yaml",
)


def test_a_workload_round_trips_to_the_yaml_model() -> None:
    (want,) = CONFIG.workloads
    got = convert.address(want.uid, convert.address_payload(want))
    assert got == want
    assert got.model_dump(by_alias=True, mode="json") == want.model_dump(by_alias=True, mode="json")
    assert got.identity == "spiffe://cluster.local/ns/shop/sa/cart"


def test_a_service_round_trips_to_the_yaml_model() -> None:
    (want,) = CONFIG.services
    assert convert.address(want.key, convert.address_payload(want)) == want


def test_a_policy_round_trips_to_the_yaml_model() -> None:
    (want,) = CONFIG.policies
    assert convert.authorization(want.key, convert.authorization_payload(want)) == want


def test_trusted_objects_behave_like_validated_ones() -> None:
    (want,) = CONFIG.workloads
    made = trusted(Workload, dict(want))
    assert made == want and hash(made.key) == hash(want.key)
    assert made.model_copy(update={"name": "x"}).name == "x" and made.name == "cart-0"
    with pytest.raises(Exception, match="frozen"):
        made.name = "y"


def test_replicas_share_their_services_map() -> None:
    def pod(i: int) -> bytes:
        w = wpb.Workload(uid=f"u{i}", namespace="ns", addresses=[bytes([10, 0, 0, i])])
        w.services["ns/s.ns.svc.cluster.local"].ports.add(service_port=80, target_port=8080)
        return wpb.Address(workload=w).SerializeToString()

    a, b = convert.address("u1", pod(1)), convert.address("u2", pod(2))
    assert isinstance(a, Workload) and isinstance(b, Workload)
    assert a.services is b.services and a.services == {"ns/s.ns.svc.cluster.local": {80: 8080}}


def _address(**fields: object) -> bytes:
    return wpb.Address(workload=wpb.Workload(**fields)).SerializeToString()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("u", b"\xff\xff", "decode:"),
        ("u", wpb.Address().SerializeToString(), "neither a workload nor a service"),
        ("u", _address(namespace="n", addresses=[b"\x0a\x00\x00"]), "workload without uid"),
        ("u", _address(uid="u", namespace="n", addresses=[b"\x0a\x00\x00"]), "invalid address: 3 bytes"),
        ("u", _address(uid="u", namespace="n"), "neither addresses nor a hostname"),
        ("other", _address(uid="u", addresses=[b"\x0a\x00\x00\x01"]), "does not match its workload 'u'"),
        ("u", _address(uid="u", addresses=[b"\x0a\x00\x00\x01"], status=7), "unknown status 7"),
        (
            "n/h",
            wpb.Address(
                service=wpb.Service(namespace="n", hostname="h", ports=[wpb.Port(service_port=70000)])
            ).SerializeToString(),
            "invalid port 70000",
        ),
        ("n/h", wpb.Address(service=wpb.Service(namespace="n")).SerializeToString(), "service without hostname"),
    ],
)
def test_bad_addresses_give_the_nack_reason(name: str, payload: bytes, reason: str) -> None:
    with pytest.raises(convert.Invalid, match=reason):
        convert.address(name, payload)


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (apb.Authorization(name="p", namespace="n", scope=9), "unknown scope 9"),  # type: ignore[arg-type]
        (
            apb.Authorization(
                name="p",
                namespace="n",
                rules=[
                    apb.Rule(
                        clauses=[
                            apb.Clause(matches=[apb.Match(source_ips=[apb.Address(address=b"\x0a\0\0\0", length=40)])])
                        ]
                    )
                ],
            ),
            "invalid prefix length 40",
        ),
        (apb.Authorization(name="p", namespace="other"), "does not match the policy 'other/p'"),
    ],
)
def test_bad_policies_give_the_nack_reason(policy: apb.Authorization, reason: str) -> None:
    with pytest.raises(convert.Invalid, match=reason):
        convert.authorization("n/p", policy.SerializeToString())


def test_a_string_match_without_a_type_is_dropped_as_ztunnel_does() -> None:
    match = apb.Match(principals=[apb.StringMatch(), apb.StringMatch(exact="a")])
    policy = apb.Authorization(name="p", namespace="n", rules=[apb.Rule(clauses=[apb.Clause(matches=[match])])])
    got = convert.authorization("n/p", policy.SerializeToString())
    assert [m.exact for m in got.rules[0][0][0].principals] == ["a"]

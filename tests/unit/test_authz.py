"""L4 authorization: a table of cases against §5.2–5.3 (DENY first, then ALLOW; scopes; matches)."""

from __future__ import annotations

import pytest

from pyztunnel import authz
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex

FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
OTHER = "spiffe://cluster.local/ns/other/sa/bot"

BASE = """\
workloads:
- {uid: cart, name: cart-0, namespace: shop, workloadIps: ['10.1.0.7'], protocol: HBONE, authorizationPolicies: [%s]}
policies:
"""


def decide(policies: str, conn: authz.ConnectionInfo, named: str = "") -> authz.Decision:
    index = WorkloadIndex(local.parse(BASE % named + policies, "t.yaml"))
    workload = index.by_uid["cart"]
    return authz.evaluate(index.policies_for(workload), conn)


def conn(identity: str | None = FRONTEND, src: str = "10.1.0.5", port: int = 8080) -> authz.ConnectionInfo:
    return authz.ConnectionInfo(src_ip=src, dst_ip="10.1.0.7", dst_port=port, identity=identity)


ALLOW_FRONTEND = """\
- name: allow-fe
  namespace: shop
  scope: Namespace
  action: Allow
  rules: [[[{principals: [!Exact cluster.local/ns/shop/sa/frontend]}]]]
"""
DENY_PORT = """\
- name: deny-8080
  namespace: shop
  scope: Namespace
  action: Deny
  rules: [[[{destinationPorts: [8080]}]]]
"""

CASES: list[tuple[str, str, authz.ConnectionInfo, str, bool, str]] = [
    ("no policies allow", "", conn(), "", True, ""),
    ("allow matches principal", ALLOW_FRONTEND, conn(), "", True, ""),
    ("allow without match denies", ALLOW_FRONTEND, conn(OTHER), "", False, "allow policies exist, but none allowed"),
    ("plaintext has no principal", ALLOW_FRONTEND, conn(None), "", False, "allow policies exist"),
    ("deny wins over allow", ALLOW_FRONTEND + DENY_PORT, conn(), "", False, "explicitly denied by: shop/deny-8080"),
    ("deny not matching port", DENY_PORT, conn(port=9090), "", True, ""),
    (
        "dry-run deny ignored",
        DENY_PORT.replace("action: Deny", "action: Deny\n  dryRun: true"),
        conn(),
        "",
        True,
        "",
    ),
    (
        "empty rules never match (deny)",
        "- {name: d, namespace: shop, scope: Namespace, action: Deny, rules: []}\n",
        conn(),
        "",
        True,
        "",
    ),
    (
        "empty rules never match (allow → deny)",
        "- {name: a, namespace: shop, scope: Namespace, action: Allow, rules: []}\n",
        conn(),
        "",
        False,
        "none allowed",
    ),
    (
        "other namespace's policy does not apply",
        ALLOW_FRONTEND.replace("namespace: shop", "namespace: else"),
        conn(OTHER),
        "",
        True,
        "",
    ),
    (
        "global applies everywhere",
        DENY_PORT.replace("scope: Namespace", "scope: Global").replace("namespace: shop", "namespace: istio-system"),
        conn(),
        "",
        False,
        "explicitly denied by: istio-system/deny-8080",
    ),
    (
        "workload selector applies only when named",
        DENY_PORT.replace("scope: Namespace", "scope: WorkloadSelector"),
        conn(),
        "",
        True,
        "",
    ),
    (
        "workload selector named by the workload",
        DENY_PORT.replace("scope: Namespace", "scope: WorkloadSelector"),
        conn(),
        "shop/deny-8080",
        False,
        "explicitly denied",
    ),
    (
        "prefix on principal",
        ALLOW_FRONTEND.replace("!Exact cluster.local/ns/shop/sa/frontend", "!Prefix cluster.local/ns/shop/"),
        conn(),
        "",
        True,
        "",
    ),
    (
        "suffix on principal",
        ALLOW_FRONTEND.replace("!Exact cluster.local/ns/shop/sa/frontend", "!Suffix /sa/bot"),
        conn(FRONTEND),
        "",
        False,
        "none allowed",
    ),
    (
        "presence needs an identity",
        ALLOW_FRONTEND.replace("!Exact cluster.local/ns/shop/sa/frontend", '!Presence ""'),
        conn(None),
        "",
        False,
        "none allowed",
    ),
    (
        "namespaces match from identity",
        ALLOW_FRONTEND.replace("principals: [!Exact cluster.local/ns/shop/sa/frontend]", "namespaces: [!Exact other]"),
        conn(OTHER),
        "",
        True,
        "",
    ),
    (
        "service accounts",
        ALLOW_FRONTEND.replace(
            "principals: [!Exact cluster.local/ns/shop/sa/frontend]",
            "serviceAccounts: [{namespace: shop, serviceAccount: frontend}]",
        ),
        conn(),
        "",
        True,
        "",
    ),
    (
        "notPrincipals excludes",
        DENY_PORT.replace("destinationPorts: [8080]", "notPrincipals: [!Exact cluster.local/ns/shop/sa/frontend]"),
        conn(),
        "",
        True,
        "",
    ),
    (
        "notPrincipals denies others",
        DENY_PORT.replace("destinationPorts: [8080]", "notPrincipals: [!Exact cluster.local/ns/shop/sa/frontend]"),
        conn(OTHER),
        "",
        False,
        "explicitly denied",
    ),
    (
        "source CIDR",
        DENY_PORT.replace("destinationPorts: [8080]", "sourceIps: [10.1.0.0/24]"),
        conn(src="10.1.0.5"),
        "",
        False,
        "explicitly denied",
    ),
    (
        "source CIDR miss",
        DENY_PORT.replace("destinationPorts: [8080]", "sourceIps: [10.2.0.0/16]"),
        conn(src="10.1.0.5"),
        "",
        True,
        "",
    ),
    (
        "AND within a match",
        DENY_PORT.replace("destinationPorts: [8080]", "destinationPorts: [8080], sourceIps: [10.2.0.0/16]"),
        conn(),
        "",
        True,
        "",
    ),
    (
        "AND across clauses",
        DENY_PORT.replace(
            "[[{destinationPorts: [8080]}]]", "[[{destinationPorts: [8080]}], [{sourceIps: [10.9.0.0/16]}]]"
        ),
        conn(),
        "",
        True,
        "",
    ),
    (
        "OR across rules",
        DENY_PORT.replace(
            "[[[{destinationPorts: [8080]}]]]", "[[[{destinationPorts: [1]}]], [[{destinationPorts: [8080]}]]]"
        ),
        conn(),
        "",
        False,
        "explicitly denied",
    ),
    (
        "OR within a clause",
        DENY_PORT.replace("[{destinationPorts: [8080]}]", "[{destinationPorts: [1]}, {destinationPorts: [8080]}]"),
        conn(),
        "",
        False,
        "explicitly denied",
    ),
    (
        "empty match in clause is skipped, empty clause matches",
        DENY_PORT.replace("[[[{destinationPorts: [8080]}]]]", "[[[{}]]]"),
        conn(),
        "",
        False,
        "explicitly denied",
    ),
]


@pytest.mark.parametrize(
    ("name", "policies", "connection", "named", "allowed", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_policy_table(
    name: str, policies: str, connection: authz.ConnectionInfo, named: str, allowed: bool, reason: str
) -> None:
    decision = decide(policies, connection, named)
    assert decision.allowed is allowed, name
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ("spiffe://cluster.local/ns/a/sa/b", ("a", "b")),
        ("spiffe://td/ns/a/sa/b/extra", None),
        ("spiffe://td/xx/a/sa/b", None),
        (None, None),
    ],
)
def test_identity_parts(identity: str | None, expected: tuple[str, str] | None) -> None:
    assert authz.ConnectionInfo("1.1.1.1", "2.2.2.2", 1, identity).namespace_and_sa == expected

"""L4 authorization exactly as ztunnel evaluates it (reference/ztunnel.md §5.2–5.3). Pure: no I/O, no clock.

DENY policies first (any non-dry-run match denies), then: no ALLOW policy → allow; any ALLOW match → allow; else deny.
A policy with no rules never matches. Principals are compared without `spiffe://`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable

from pyztunnel.identity.spiffe import SCHEME, try_parse
from pyztunnel.workloads.model import Action, Authorization, RbacMatch, ServiceAccountMatch, StringMatch


@dataclasses.dataclass(frozen=True, slots=True)  # one per inbound connection, kept for re-checks
class ConnectionInfo:
    """What a policy can see of one inbound connection. `identity` is None for plaintext (15006)."""

    src_ip: str
    dst_ip: str
    dst_port: int
    identity: str | None = None  # spiffe://td/ns/NS/sa/SA

    @property
    def principal(self) -> str | None:
        if self.identity is None:
            return None
        return self.identity.removeprefix(SCHEME)

    @property
    def namespace_and_sa(self) -> tuple[str, str] | None:
        """(namespace, service account) from a well-formed identity, else None."""
        parsed = try_parse(self.identity) if self.identity is not None else None
        return None if parsed is None else (parsed.namespace, parsed.service_account)


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOWED = Decision(True)


def _any_string(matches: tuple[StringMatch, ...], value: str | None) -> bool:
    return value is not None and any(m.matches(value) for m in matches)


def _any_sa(matches: tuple[ServiceAccountMatch, ...], value: tuple[str, str] | None) -> bool:
    return value is not None and any((m.namespace, m.service_account) == value for m in matches)


def _any_net(nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in net for net in nets)


def match_matches(m: RbacMatch, conn: ConnectionInfo) -> bool:
    """One RbacMatch: every non-empty field must hold (AND); within a field any entry (OR); negatives must not hold."""
    ns_sa = conn.namespace_and_sa
    namespace = ns_sa[0] if ns_sa else None
    checks: tuple[tuple[tuple[object, ...], Callable[[], bool], bool], ...] = (
        (m.namespaces, lambda: _any_string(m.namespaces, namespace), True),
        (m.not_namespaces, lambda: _any_string(m.not_namespaces, namespace), False),
        (m.principals, lambda: _any_string(m.principals, conn.principal), True),
        (m.not_principals, lambda: _any_string(m.not_principals, conn.principal), False),
        (m.service_accounts, lambda: _any_sa(m.service_accounts, ns_sa), True),
        (m.not_service_accounts, lambda: _any_sa(m.not_service_accounts, ns_sa), False),
        (m.source_ips, lambda: _any_net(m.source_ips, conn.src_ip), True),
        (m.not_source_ips, lambda: _any_net(m.not_source_ips, conn.src_ip), False),
        (m.destination_ips, lambda: _any_net(m.destination_ips, conn.dst_ip), True),
        (m.not_destination_ips, lambda: _any_net(m.not_destination_ips, conn.dst_ip), False),
        (m.destination_ports, lambda: conn.dst_port in m.destination_ports, True),
        (m.not_destination_ports, lambda: conn.dst_port in m.not_destination_ports, False),
    )
    return all(test() is want for field, test, want in checks if field)


def policy_matches(policy: Authorization, conn: ConnectionInfo) -> bool:
    """Rules are OR; a rule's clauses are AND; a clause's matches are OR (empty matches skipped, empty clause = true)."""
    if not policy.rules:
        return False
    return any(all(_clause_matches(clause, conn) for clause in rule) for rule in policy.rules)


def _clause_matches(clause: tuple[RbacMatch, ...], conn: ConnectionInfo) -> bool:
    relevant = [m for m in clause if not m.is_empty()]
    if not relevant:
        return True
    return any(match_matches(m, conn) for m in relevant)


def evaluate(policies: Iterable[Authorization], conn: ConnectionInfo) -> Decision:
    applicable = list(policies)
    for policy in applicable:
        if policy.action is Action.DENY and not policy.dry_run and policy_matches(policy, conn):
            return Decision(False, f"explicitly denied by: {policy.key}")
    allows = [p for p in applicable if p.action is Action.ALLOW and not p.dry_run]
    if not allows:
        return ALLOWED
    if any(policy_matches(p, conn) for p in allows):
        return ALLOWED
    return Decision(False, "allow policies exist, but none allowed")

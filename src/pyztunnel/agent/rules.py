"""In-pod redirection (reference/ztunnel.md §2.5), istio-cni's iptables rules written for nftables.

The rules are data (`Chain`, `Rule`, `Match`), rendered to an nft script by a pure function, so each can be checked
against the iptables rule it mirrors. One table, `inet pyztunnel`, with a chain per iptables table/hook pair:

  mangle PREROUTING/OUTPUT  → `mangle_prerouting` (filter, prio mangle), `mangle_output` (route: a changed mark
                              re-routes the packet, as iptables' mangle OUTPUT does)
  nat PREROUTING/OUTPUT     → `nat_prerouting` (prio dstnat), `nat_output` (prio -100)
  raw (DNS capture only)    → `raw_prerouting`, `raw_output` (prio raw)

IPv4 rules match `ip …`; each rule with an IPv4 address has an IPv6 twin (`::1`, the IPv6 probe address), as
istio-cni installs the same rules with ip6tables. Applying: libnftables (or `nft -f -`) inside the pod netns (an existing
table is replaced atomically, so it is idempotent), plus the policy route for marked replies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
from typing import Any, Literal

from pyztunnel.agent import nftables
from pyztunnel.agent.netlink import ignore_errno, iproute
from pyztunnel.netns import run_in_netns

TABLE = "pyztunnel"
INPOD_MARK = 0x539  # 1337, ztunnel's PACKET_MARK on its own sockets
INPOD_MASK = 0xFFF
TPROXY_MARK = 0x111
ROUTE_TABLE = 100
RULE_PRIORITY = 32764
PROBE_V4 = "169.254.7.127"  # kubelet probes are SNATed to this on the host side
PROBE_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
DNS_PORT = 15053

Family = Literal["ip", "ip6"]


@dataclasses.dataclass(frozen=True)
class Match:
    family: Family | None = None  # which address family the address fields refer to
    saddr: str | None = None
    daddr: str | None = None
    daddr_not: str | None = None
    l4: Literal["tcp", "udp"] | None = None
    sport: int | None = None
    dport: int | None = None
    dport_not: int | None = None
    oif: str | None = None
    oif_not: str | None = None
    mark: int | None = None  # meta mark & INPOD_MASK == mark
    mark_not: int | None = None  # meta mark & INPOD_MASK != mark_not
    ctmark: int | None = None  # ct mark & INPOD_MASK == ctmark


@dataclasses.dataclass(frozen=True)
class Accept:
    pass


@dataclasses.dataclass(frozen=True)
class Redirect:
    port: int


@dataclasses.dataclass(frozen=True)
class SetConnmark:
    """CONNMARK --set-xmark value/mask: ctmark = (ctmark & ~mask) ^ value."""

    value: int
    mask: int


@dataclasses.dataclass(frozen=True)
class RestoreMark:
    """CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff: mark = ctmark."""


@dataclasses.dataclass(frozen=True)
class CtZone:
    zone: int


Verdict = Accept | Redirect | SetConnmark | RestoreMark | CtZone


@dataclasses.dataclass(frozen=True)
class Rule:
    match: Match
    verdict: Verdict
    iptables: str  # the istio-cni rule this mirrors (default.golden), for the reader and the tests


@dataclasses.dataclass(frozen=True)
class Chain:
    name: str
    type: Literal["filter", "nat", "route"]
    hook: Literal["prerouting", "output"]
    priority: str
    rules: tuple[Rule, ...]


def _both(v4: Match, v6: Match, verdict: Verdict, iptables: str) -> tuple[Rule, Rule]:
    return Rule(v4, verdict, iptables), Rule(v6, verdict, iptables)


def chains(dns_capture: bool = False) -> list[Chain]:
    """The redirection of one pod netns, in istio-cni's order (first match wins within a chain)."""
    m = INPOD_MARK
    mangle_prerouting = Chain(
        "mangle_prerouting",
        "filter",
        "prerouting",
        "mangle",
        (
            Rule(
                Match(mark=m),
                SetConnmark(TPROXY_MARK, INPOD_MASK),
                "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
            ),
        ),
    )
    mangle_output = Chain(
        "mangle_output",
        "route",
        "output",
        "mangle",
        (
            Rule(
                Match(ctmark=TPROXY_MARK),
                RestoreMark(),
                "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark "
                "--nfmask 0xffffffff --ctmask 0xffffffff",
            ),
        ),
    )
    nat_prerouting = Chain(
        "nat_prerouting",
        "nat",
        "prerouting",
        "dstnat",
        (
            *_both(
                Match("ip", saddr=PROBE_V4, l4="tcp"),
                Match("ip6", saddr=PROBE_V6, l4="tcp"),
                Accept(),
                "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -j ACCEPT",
            ),
            *_both(
                Match("ip", daddr_not="127.0.0.1", l4="tcp", dport_not=HBONE_PORT, mark_not=m),
                Match("ip6", daddr_not="::1", l4="tcp", dport_not=HBONE_PORT, mark_not=m),
                Redirect(INBOUND_PLAINTEXT_PORT),
                "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff "
                "-j REDIRECT --to-ports 15006",
            ),
        ),
    )
    dns: tuple[Rule, ...] = ()
    if dns_capture:
        dns = (
            Rule(
                Match(l4="udp", dport=53, oif_not="lo", mark_not=m),
                Redirect(DNS_PORT),
                "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 "
                "-j REDIRECT --to-port 15053",
            ),
            *_both(
                Match("ip", daddr_not="127.0.0.1", l4="tcp", dport=53, mark_not=m),
                Match("ip6", daddr_not="::1", l4="tcp", dport=53, mark_not=m),
                Redirect(DNS_PORT),
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff "
                "-j REDIRECT --to-ports 15053",
            ),
        )
    nat_output = Chain(
        "nat_output",
        "nat",
        "output",
        "-100",
        (
            *_both(
                Match("ip", daddr=PROBE_V4, l4="tcp"),
                Match("ip6", daddr=PROBE_V6, l4="tcp"),
                Accept(),
                "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -j ACCEPT",
            ),
            *dns,
            Rule(
                Match(l4="tcp", mark=TPROXY_MARK),
                Accept(),
                "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
            ),
            *_both(
                Match("ip", daddr_not="127.0.0.1", oif="lo"),
                Match("ip6", daddr_not="::1", oif="lo"),
                Accept(),
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
            ),
            *_both(
                Match("ip", daddr_not="127.0.0.1", l4="tcp", mark_not=m),
                Match("ip6", daddr_not="::1", l4="tcp", mark_not=m),
                Redirect(OUTBOUND_PORT),
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
            ),
        ),
    )
    out = [mangle_prerouting, mangle_output, nat_prerouting, nat_output]
    if dns_capture:
        out += [
            Chain(
                "raw_prerouting",
                "filter",
                "prerouting",
                "raw",
                (
                    Rule(
                        Match(l4="udp", sport=53, mark_not=m),
                        CtZone(1),
                        "-A ISTIO_PRERT -p udp --sport 53 -j CT --zone 1",
                    ),
                ),
            ),
            Chain(
                "raw_output",
                "filter",
                "output",
                "raw",
                (
                    Rule(
                        Match(l4="udp", dport=53, mark=m),
                        CtZone(1),
                        "-A ISTIO_OUTPUT -p udp --dport 53 -m mark --mark 0x539/0xfff -j CT --zone 1",
                    ),
                ),
            ),
        ]
    return out


def render_match(match: Match) -> str:
    parts: list[str] = []
    if match.saddr is not None:
        parts.append(f"{match.family} saddr {match.saddr}")
    if match.daddr is not None:
        parts.append(f"{match.family} daddr {match.daddr}")
    if match.daddr_not is not None:
        parts.append(f"{match.family} daddr != {match.daddr_not}")
    if match.oif is not None:
        parts.append(f'oifname "{match.oif}"')
    if match.oif_not is not None:
        parts.append(f'oifname != "{match.oif_not}"')
    ports = [
        (match.sport, "sport", ""),
        (match.dport, "dport", ""),
        (match.dport_not, "dport", "!= "),
    ]
    port_parts = [f"{match.l4} {name} {op}{value}" for value, name, op in ports if value is not None]
    if port_parts:
        parts.extend(port_parts)  # `tcp dport …` implies the protocol
    elif match.l4 is not None:
        parts.append(f"meta l4proto {match.l4}")
    if match.mark is not None:
        parts.append(f"meta mark & {INPOD_MASK:#x} == {match.mark:#x}")
    if match.mark_not is not None:
        parts.append(f"meta mark & {INPOD_MASK:#x} != {match.mark_not:#x}")
    if match.ctmark is not None:
        parts.append(f"ct mark & {INPOD_MASK:#x} == {match.ctmark:#x}")
    return " ".join(parts)


def render_verdict(verdict: Verdict) -> str:
    match verdict:
        case Accept():
            return "accept"
        case Redirect(port=port):
            return f"redirect to :{port}"
        case SetConnmark(value=value, mask=mask):
            return f"ct mark set ct mark & {~mask & 0xFFFFFFFF:#010x} ^ {value:#x}"
        case RestoreMark():
            return "meta mark set ct mark"
        case CtZone(zone=zone):
            return f"ct zone set {zone}"


def render(dns_capture: bool = False, replace: bool = True) -> str:
    """The nft script. With `replace`, create-then-delete-then-define: one atomic transaction that also replaces an
    existing table (the kernel then waits for a grace period: ≈ 15 ms instead of < 1 ms for a fresh table)."""
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}"] if replace else []
    lines.append(f"table inet {TABLE} {{")
    for chain in chains(dns_capture):
        lines.append(f"  chain {chain.name} {{")
        lines.append(f"    type {chain.type} hook {chain.hook} priority {chain.priority}; policy accept;")
        for rule in chain.rules:
            lines.append(f"    {render_match(rule.match)} {render_verdict(rule.verdict)}")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delete() -> str:
    return f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"


# ------------------------------------------------------------------------------------------------------- applying


class RulesError(Exception):
    pass


def install_in_current_netns(dns_capture: bool = False, ipr: Any | None = None) -> None:
    """Install the table and the policy route in the calling thread's netns (blocking; run it in that netns).
    `ipr`: an open pyroute2 handle of this netns to reuse."""
    try:
        nftables.run(render(dns_capture, replace=nftables.table_exists("inet", TABLE)))
    except nftables.NftError as exc:
        raise RulesError(f"nft failed: {exc}") from None
    with contextlib.nullcontext(ipr) if ipr is not None else iproute() as handle:
        with ignore_errno(errno.EEXIST):
            handle.rule("add", fwmark=TPROXY_MARK, fwmask=INPOD_MASK, table=ROUTE_TABLE, priority=RULE_PRIORITY)
        lo = handle.link_lookup(ifname="lo")[0]
        # `ip route add local 0.0.0.0/0 dev lo table 100`: marked replies are delivered locally to the proxy's
        # transparent sockets instead of being routed out to the spoofed source.
        handle.route("replace", dst="0.0.0.0/0", type="local", oif=lo, table=ROUTE_TABLE, scope=254)


def install(netns: int | str, dns_capture: bool = False) -> None:
    run_in_netns(netns, lambda: install_in_current_netns(dns_capture))

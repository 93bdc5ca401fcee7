"""The nftables redirection against the semantics of each istio-cni iptables rule (reference §2.5)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from pyztunnel.agent import rules
from pyztunnel.agent.rules import Accept, Chain, CtZone, Match, Redirect, RestoreMark, SetConnmark, Verdict


@dataclasses.dataclass(frozen=True)
class Packet:
    family: str = "ip"
    saddr: str = "10.244.9.3"
    daddr: str = "10.244.9.2"
    l4: str = "tcp"
    sport: int = 40000
    dport: int = 8080
    oif: str | None = None
    mark: int = 0
    ctmark: int = 0


def matches(m: Match, p: Packet) -> bool:
    """What the kernel does with one rule, written from iptables' semantics (not from the renderer)."""
    has_address = any(x is not None for x in (m.saddr, m.daddr, m.daddr_not))
    if has_address and m.family != p.family:
        return False  # an `ip daddr` match never matches an IPv6 packet (and vice versa)

    def addr(a: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(a)

    checks = [
        m.saddr is None or addr(m.saddr) == addr(p.saddr),
        m.daddr is None or addr(m.daddr) == addr(p.daddr),
        m.daddr_not is None or addr(m.daddr_not) != addr(p.daddr),
        m.l4 is None or m.l4 == p.l4,
        m.sport is None or m.sport == p.sport,
        m.dport is None or m.dport == p.dport,
        m.dport_not is None or m.dport_not != p.dport,
        m.oif is None or m.oif == p.oif,
        m.oif_not is None or m.oif_not != p.oif,
        m.mark is None or p.mark & 0xFFF == m.mark,
        m.mark_not is None or p.mark & 0xFFF != m.mark_not,
        m.ctmark is None or p.ctmark & 0xFFF == m.ctmark,
    ]
    return all(checks)


def verdict(name: str, p: Packet, dns_capture: bool = False) -> Verdict | None:
    chain = chain_named(name, dns_capture)
    return next((r.verdict for r in chain.rules if matches(r.match, p)), None)


def chain_named(name: str, dns_capture: bool = False) -> Chain:
    return next(c for c in rules.chains(dns_capture) if c.name == name)


OUT = Packet(saddr="10.244.9.2", daddr="10.96.0.10", dport=80, oif="eth0")
IN = Packet()


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (OUT, Redirect(15001)),  # app's outbound TCP is captured
        (dataclasses.replace(OUT, mark=0x539), None),  # the proxy's own sockets bypass capture
        (dataclasses.replace(OUT, mark=0x7539), None),  # only the masked bits count (0x539/0xfff)
        (dataclasses.replace(OUT, mark=0x538), Redirect(15001)),
        (dataclasses.replace(OUT, daddr="127.0.0.1", oif="lo"), None),  # loopback is never captured
        (dataclasses.replace(OUT, daddr="10.244.9.2", oif="lo"), Accept()),  # to itself via lo: ! -d 127.0.0.1 -o lo
        (dataclasses.replace(OUT, mark=0x111), Accept()),  # replies to the proxy's transparent sockets
        (dataclasses.replace(OUT, daddr="169.254.7.127"), Accept()),  # kubelet probe replies
        (dataclasses.replace(OUT, l4="udp", dport=53), None),  # no DNS capture by default
        (dataclasses.replace(OUT, family="ip6", saddr="fd00::2", daddr="2001:db8::1"), Redirect(15001)),
        (dataclasses.replace(OUT, family="ip6", saddr="::1", daddr="::1", oif="lo"), None),
        (dataclasses.replace(OUT, family="ip6", daddr=rules.PROBE_V6), Accept()),
    ],
)
def test_outbound(packet: Packet, expected: Verdict | None) -> None:
    assert verdict("nat_output", packet) == expected


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (IN, Redirect(15006)),  # inbound plaintext goes to the proxy
        (dataclasses.replace(IN, dport=15008), None),  # HBONE lands on the proxy's 15008 directly
        (dataclasses.replace(IN, saddr="169.254.7.127"), Accept()),  # kubelet probes pass
        (dataclasses.replace(IN, mark=0x539), None),  # the proxy's own connection to the app (via lo)
        (dataclasses.replace(IN, daddr="127.0.0.1"), None),
        (dataclasses.replace(IN, l4="udp"), None),  # only TCP
        (dataclasses.replace(IN, family="ip6", saddr="fd00::3", daddr="fd00::2"), Redirect(15006)),
        (dataclasses.replace(IN, family="ip6", saddr=rules.PROBE_V6, daddr="fd00::2"), Accept()),
    ],
)
def test_inbound(packet: Packet, expected: Verdict | None) -> None:
    assert verdict("nat_prerouting", packet) == expected


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (dataclasses.replace(OUT, l4="udp", dport=53), Redirect(15053)),
        (dataclasses.replace(OUT, l4="udp", dport=53, oif="lo"), Accept()),  # not redirected; lo is accepted
        (dataclasses.replace(OUT, l4="udp", dport=53, mark=0x539), None),
        (dataclasses.replace(OUT, dport=53), Redirect(15053)),
        (OUT, Redirect(15001)),
    ],
)
def test_dns_capture(packet: Packet, expected: Verdict | None) -> None:
    assert verdict("nat_output", packet, dns_capture=True) == expected


def test_raw_zone_rules_only_with_dns_capture() -> None:
    assert {c.name for c in rules.chains()} == {"mangle_prerouting", "mangle_output", "nat_prerouting", "nat_output"}
    dns_out = dataclasses.replace(OUT, l4="udp", dport=53, mark=0x539)
    assert verdict("raw_output", dns_out, dns_capture=True) == CtZone(1)
    reply = dataclasses.replace(IN, l4="udp", sport=53, dport=40000)
    assert verdict("raw_prerouting", reply, dns_capture=True) == CtZone(1)


def test_connmark_marks_proxy_connections_and_restores_on_replies() -> None:
    # The proxy's (mark 0x539) connection to the app enters PREROUTING via lo: its conntrack entry gets 0x111.
    v = verdict("mangle_prerouting", dataclasses.replace(IN, mark=0x539))
    assert v == SetConnmark(0x111, 0xFFF)
    ctmark = 0xABC000FF
    assert (ctmark & ~v.mask) ^ v.value == 0xABC00111  # --set-xmark keeps the bits outside the mask
    assert verdict("mangle_prerouting", IN) is None
    # The app's replies on that connection get the mark back, so the policy route returns them to the proxy.
    assert verdict("mangle_output", dataclasses.replace(OUT, ctmark=0xABC00111)) == RestoreMark()
    assert verdict("mangle_output", OUT) is None


def test_rendered_rules_read_as_nft() -> None:
    text = rules.render()
    assert text.startswith("table inet pyztunnel {}\ndelete table inet pyztunnel\ntable inet pyztunnel {\n")
    expected_lines = [
        "type filter hook prerouting priority mangle; policy accept;",
        "meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 ^ 0x111",
        "type route hook output priority mangle; policy accept;",
        "ct mark & 0xfff == 0x111 meta mark set ct mark",
        "type nat hook prerouting priority dstnat; policy accept;",
        "ip saddr 169.254.7.127 meta l4proto tcp accept",
        "ip daddr != 127.0.0.1 tcp dport != 15008 meta mark & 0xfff != 0x539 redirect to :15006",
        "ip6 daddr != ::1 tcp dport != 15008 meta mark & 0xfff != 0x539 redirect to :15006",
        "type nat hook output priority -100; policy accept;",
        "ip daddr 169.254.7.127 meta l4proto tcp accept",
        "meta l4proto tcp meta mark & 0xfff == 0x111 accept",
        'ip daddr != 127.0.0.1 oifname "lo" accept',
        "ip daddr != 127.0.0.1 meta l4proto tcp meta mark & 0xfff != 0x539 redirect to :15001",
    ]
    body = [line.strip() for line in text.splitlines()]
    positions = [body.index(line) for line in expected_lines]
    assert positions == sorted(positions)  # present and in istio-cni's order
    assert "15053" not in text and "ct zone" not in text


def test_rendered_dns_rules() -> None:
    body = [line.strip() for line in rules.render(dns_capture=True).splitlines()]
    assert 'oifname != "lo" udp dport 53 meta mark & 0xfff != 0x539 redirect to :15053' in body
    assert "udp dport 53 meta mark & 0xfff == 0x539 ct zone set 1" in body
    assert "udp sport 53 meta mark & 0xfff != 0x539 ct zone set 1" in body
    # DNS redirects come before the catch-all TCP redirect to 15001.
    assert body.index("ip daddr != 127.0.0.1 tcp dport 53 meta mark & 0xfff != 0x539 redirect to :15053") < body.index(
        "ip daddr != 127.0.0.1 meta l4proto tcp meta mark & 0xfff != 0x539 redirect to :15001"
    )


def test_every_rule_names_the_iptables_rule_it_mirrors() -> None:
    for chain in rules.chains(dns_capture=True):
        for rule in chain.rules:
            assert rule.iptables.startswith("-A ISTIO_")


def test_delete_script() -> None:
    assert rules.render_delete() == "table inet pyztunnel {}\ndelete table inet pyztunnel\n"

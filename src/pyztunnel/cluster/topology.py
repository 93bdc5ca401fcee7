"""Names, addresses and the network fabric of a local cluster; service VIPs as nftables DNAT (kube-proxy's role).

Rendering is pure (names and addresses in, `ip -batch` lines and nft rulesets out) and unit-tested; `apply_*` run them.
The host netns is never given a link, address, route or rule: veths are created with both ends placed directly in
cluster namespaces, and every other command runs with `ip -n NS` or inside the namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pyztunnel.netns import NETNS_RUN_DIR

CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
FABRIC_IP = "10.240.0.254"
FABRIC_PREFIX = 24
CA_PORT = 15012
POD_PREFIX = 24
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
FIRST_VIP = 10  # 10.96.0.10 is the first service VIP
NODE_BRIDGE = "cbr0"
FABRIC_BRIDGE = "br0"
NFT_TABLE = "pzt-svc"
# Readiness probes leave the node from this address, as kubelet's do once istio-cni SNATs them: the in-pod
# redirection lets it through (reference §2.5), so a mesh pod's readiness does not depend on its proxy.
PROBE_SOURCE = "169.254.7.127"


def prefix(cluster: str) -> str:
    return f"pzt-{cluster}-"


def fabric_ns(cluster: str) -> str:
    return f"pzt-{cluster}-fabric"


def node_ns(cluster: str, node: str) -> str:
    return f"pzt-{cluster}-node-{node}"


def pod_ns(cluster: str, pod: str) -> str:
    return f"pzt-{cluster}-pod-{pod}"


def node_ip(index: int) -> str:
    return f"10.240.0.{index}"


def pod_cidr(index: int) -> str:
    return f"10.244.{index}.0/{POD_PREFIX}"


def pod_gateway(index: int) -> str:
    return f"10.244.{index}.1"


def pod_veth(uid: str) -> str:
    """The node-side end of a pod's veth: `v` + 8 hex digits of the pod uid (≤ 15 characters)."""
    return "v" + uid.replace("-", "")[:8]


def fabric_veth(index: int) -> str:
    return f"n{index}"


def bridge_mac(group: int, index: int) -> str:
    """A fixed, locally administered MAC for a bridge. Without one a Linux bridge takes the lowest MAC of its ports,
    so it changes whenever a pod's veth comes or goes, and every pod keeps sending to the gateway's old MAC until its
    ARP entry expires (~30 s of lost traffic after each pod deletion)."""
    return f"02:00:0a:{group:02x}:{index:02x}:01"


def vip(n: int) -> str:
    """The n-th service VIP (0-based): 10.96.0.10, 10.96.0.11, …"""
    return str(SERVICE_CIDR.network_address + FIRST_VIP + n)


@dataclass(frozen=True)
class NodeAddr:
    name: str
    index: int  # 1-based

    @property
    def ip(self) -> str:
        return node_ip(self.index)


def render_fabric(cluster: str, nodes: Sequence[NodeAddr]) -> list[tuple[str | None, list[str]]]:
    """(netns or None for the host batch, `ip -batch` lines). The host batch only creates namespaces and veths whose
    ends land directly in cluster namespaces; all addressing happens inside them."""
    fabric = fabric_ns(cluster)
    host = [f"netns add {fabric}"] + [f"netns add {node_ns(cluster, n.name)}" for n in nodes]
    host += [
        f"link add {fabric_veth(n.index)} netns {fabric} type veth peer name eth0 netns {node_ns(cluster, n.name)}"
        for n in nodes
    ]
    fab = [
        "link set lo up",
        f"link add {FABRIC_BRIDGE} address {bridge_mac(0xF0, 0xFE)} type bridge",
        f"addr add {FABRIC_IP}/{FABRIC_PREFIX} dev {FABRIC_BRIDGE}",
        f"link set {FABRIC_BRIDGE} up",
    ]
    for n in nodes:
        fab += [f"link set {fabric_veth(n.index)} master {FABRIC_BRIDGE}", f"link set {fabric_veth(n.index)} up"]
    # Pods (proxies asking the CA) reach the fabric from their pod IPs: answers go back through their node.
    fab += [f"route add {pod_cidr(n.index)} via {n.ip}" for n in nodes]
    batches: list[tuple[str | None, list[str]]] = [(None, host), (fabric, fab)]
    for n in nodes:
        lines = [
            "link set lo up",
            f"addr add {n.ip}/{FABRIC_PREFIX} dev eth0",
            "link set eth0 up",
            f"link add {NODE_BRIDGE} address {bridge_mac(0xF4, n.index)} type bridge",
            f"addr add {pod_gateway(n.index)}/{POD_PREFIX} dev {NODE_BRIDGE}",
            f"addr add {PROBE_SOURCE}/32 dev {NODE_BRIDGE}",
            f"link set {NODE_BRIDGE} up",
        ]
        lines += [f"route add {pod_cidr(m.index)} via {m.ip}" for m in nodes if m.index != n.index]
        batches.append((node_ns(cluster, n.name), lines))
    return batches


@dataclass(frozen=True)
class ServiceRule:
    """One service port with its ready endpoints (pod IPs), as the node's DNAT sees it."""

    namespace: str
    name: str
    vip: str
    port: int
    target_port: int
    endpoints: tuple[str, ...]


def render_services(rules: Sequence[ServiceRule], node_index: int) -> str:
    """The complete `ip pzt-svc` table for one node netns, replacing the previous one in a single nft transaction.

    A VIP port with endpoints jumps to a random endpoint chain (numgen vmap, as kube-proxy's nftables mode); one with
    none rejects with a TCP reset, so clients fail fast. Traffic DNATed back out into the node's own bridge is
    masqueraded, otherwise the endpoint would answer the client directly (same L2 segment) and bypass the un-DNAT.
    """
    lines = [
        f"table ip {NFT_TABLE} {{}}",
        f"delete table ip {NFT_TABLE}",
        f"table ip {NFT_TABLE} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    jump services",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    ct status dnat ip saddr {pod_cidr(node_index)} oifname "{NODE_BRIDGE}" masquerade',
        "  }",
    ]
    services = ["  chain services {"]
    chains: list[str] = []
    for rule in sorted(rules, key=lambda r: (r.vip, r.port)):
        match = f"ip daddr {rule.vip} tcp dport {rule.port}"
        if not rule.endpoints:
            services.append(f"    {match} reject with tcp reset")
            continue
        chain = f"svc-{rule.namespace}-{rule.name}-{rule.port}"
        services.append(f"    {match} jump {chain}")
        endpoints = sorted(rule.endpoints, key=ipaddress.IPv4Address)
        jumps = ", ".join(f"{i} : jump {chain}-ep{i}" for i in range(len(endpoints)))
        chains += [f"  chain {chain} {{", f"    numgen random mod {len(endpoints)} vmap {{ {jumps} }}", "  }"]
        for i, ip in enumerate(endpoints):
            chains += [f"  chain {chain}-ep{i} {{", f"    meta l4proto tcp dnat to {ip}:{rule.target_port}", "  }"]
    services.append("  }")
    return "\n".join([*lines, *services, *chains, "}", ""])


class CommandFailed(Exception):
    pass


COMMAND_TIMEOUT = 30.0  # `ip`, `nft`, `sysctl` finish in milliseconds; one that does not must not stall the caller


async def run(argv: Sequence[str], stdin: str | None = None, limit: float = COMMAND_TIMEOUT) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except BaseException as exc:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise CommandFailed(f"{' '.join(argv[:4])}…: did not finish within {limit:g}s") from None
        raise
    if proc.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv[:4])}…: {err.decode(errors='replace').strip() or f'exit {proc.returncode}'}"
        )
    return out.decode()


async def ip_batch(netns: str | None, lines: Sequence[str]) -> None:
    if not lines:
        return
    argv = ["ip", "-b", "-"] if netns is None else ["ip", "-n", netns, "-b", "-"]
    await run(argv, "\n".join(lines) + "\n")


async def build_fabric(cluster: str, nodes: Sequence[NodeAddr]) -> None:
    """Create the fabric and node namespaces with their addresses and routes, and enable forwarding on nodes."""
    batches = render_fabric(cluster, nodes)
    await ip_batch(*batches[0])
    await asyncio.gather(*(ip_batch(ns, lines) for ns, lines in batches[1:]))
    await asyncio.gather(*(set_sysctls(node_ns(cluster, n.name), NODE_SYSCTLS) for n in nodes))


# Nodes route between their pods and the fabric. Frames bridged between two pods of a node skip netfilter whatever the
# host's br_netfilter setting (it is per netns), so the node behaves the same on every machine: the hairpin
# masquerade of render_services is what makes a VIP work with an endpoint on the client's own node.
NODE_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "0"}


async def set_sysctls(netns: str, values: dict[str, str]) -> None:
    """Set sysctls inside a namespace; keys this kernel lacks (no br_netfilter) are skipped."""
    await run(["ip", "netns", "exec", netns, "sysctl", "-e", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])


async def apply_nft(netns: str, ruleset: str) -> None:
    await run(["ip", "netns", "exec", netns, "nft", "-f", "-"], ruleset)


def cluster_namespaces(cluster: str) -> list[str]:
    """Every existing namespace of the cluster (names under /run/netns)."""
    try:
        names = [p.name for p in NETNS_RUN_DIR.iterdir()]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix(cluster)))


async def delete_namespaces(names: Sequence[str]) -> None:
    """Delete namespaces (their veths go with them). Missing ones are fine: down is idempotent."""
    if names:
        await run(["ip", "-force", "-b", "-"], "".join(f"netns del {n}\n" for n in names))

"""Pod network plumbing in the node netns (the agent's own): a veth whose node end `v<hash>` is on the bridge and whose
pod end is `eth0` in the pod netns, with the pod's address, a default route via the gateway, `lo` up, and the per-pod
sysctls. Blocking (netlink through pyroute2, /proc/sys writes): call it through `asyncio.to_thread`. Idempotent: a
second call with the same pod leaves the same state and keeps existing connections.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from pyroute2.netlink.exceptions import NetlinkError

from pyztunnel.agent import rules
from pyztunnel.agent.netlink import ignore_errno, iproute
from pyztunnel.agent.pods import PodSpec, veth_name
from pyztunnel.netns import run_in_netns

POD_IFNAME = "eth0"


class PlumbingError(Exception):
    pass


def pod_sysctls(tcp_migrate_req: bool) -> dict[str, str]:
    """Sysctls of every pod netns. tcp_migrate_req is per netns (reference §1.7), so it is set in each pod."""
    return {"net.ipv4.tcp_migrate_req": "1" if tcp_migrate_req else "0"}


def plumb(spec: PodSpec, netns_fd: int, bridge: str, sysctls: Mapping[str, str], dns_capture: bool = False) -> None:
    with iproute() as node:
        bridges = node.link_lookup(ifname=bridge)
        if not bridges:
            raise PlumbingError(f"bridge {bridge!r} does not exist in the node netns")
        existing = node.link_lookup(ifname=spec.veth)
        if existing and not run_in_netns(netns_fd, _has_eth0):
            node.link("del", index=existing[0])  # left over from an earlier sandbox of the same pod
            existing = []
        if not existing:
            try:
                node.link("add", ifname=spec.veth, kind="veth", peer={"ifname": POD_IFNAME, "net_ns_fd": netns_fd})
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise PlumbingError(f"{spec.netns} already has an {POD_IFNAME} that is not this agent's") from None
                raise
            existing = node.link_lookup(ifname=spec.veth)
        node.link("set", index=existing[0], master=bridges[0], state="up")
    run_in_netns(netns_fd, lambda: _configure_pod(spec, sysctls, dns_capture))


def _has_eth0() -> bool:
    with iproute() as ipr:
        return bool(ipr.link_lookup(ifname=POD_IFNAME))


def _configure_pod(spec: PodSpec, sysctls: Mapping[str, str], dns_capture: bool) -> None:
    with iproute() as ipr:
        eth0 = ipr.link_lookup(ifname=POD_IFNAME)[0]
        lo = ipr.link_lookup(ifname="lo")[0]
        with ignore_errno(errno.EEXIST):
            ipr.addr("add", index=eth0, address=str(spec.ip), prefixlen=spec.prefix_len)
        ipr.link("set", index=eth0, state="up")
        ipr.link("set", index=lo, state="up")
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(spec.gateway), oif=eth0)
        write_sysctls(sysctls)
        if spec.mesh:
            rules.install_in_current_netns(dns_capture, ipr)


def write_sysctls(values: Mapping[str, str]) -> None:
    """Write sysctls of the calling thread's netns (/proc/sys/net follows the netns of the thread that opens it)."""
    for name, value in values.items():
        path = "/proc/sys/" + name.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise PlumbingError(f"cannot set {name}={value}: {exc.strerror}") from None


def unplumb(uid: str) -> bool:
    """Remove the pod's veth (both ends go). False when it was not there."""
    with iproute() as node:
        links = node.link_lookup(ifname=veth_name(uid))
        if not links:
            return False
        with ignore_errno(errno.ENODEV):
            node.link("del", index=links[0])
        return True

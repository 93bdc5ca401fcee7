"""The agent's settings, declared once (flags, environment variables, YAML keys, docs come from here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pyztunnel.settings import Duration, group, setting


@group("agent")
@dataclasses.dataclass(frozen=True)
class AgentSettings:
    node_name: str = setting("", "Name of the node this agent serves (for logs)", env="NODE_NAME")
    run_dir: Path = setting(
        Path("/var/run/ztunnel"), "Run directory: ZDS socket, agent API socket, pod state", env="PYZTUNNEL_RUN_DIR"
    )
    # istio-cni's flag name; the default is <run-dir>/ztunnel.sock as in istio-cni (/var/run/ztunnel/ztunnel.sock).
    ztunnel_uds_address: Path | None = setting(
        None, "ZDS socket the node proxies connect to (default <run-dir>/ztunnel.sock)", env="ZTUNNEL_UDS_ADDRESS"
    )
    cni_socket: Path | None = setting(None, "Agent API socket (default <run-dir>/cni.sock)", env="PYZTUNNEL_CNI_SOCKET")
    bridge: str = setting("cbr0", "Bridge in the node netns that pod veths attach to", env="PYZTUNNEL_BRIDGE")
    tcp_migrate_req: bool = setting(
        True,
        "Set net.ipv4.tcp_migrate_req=1 in every pod netns (a closed SO_REUSEPORT listener's queue moves to a sibling)",
        env="PYZTUNNEL_TCP_MIGRATE_REQ",
    )
    dns_capture: bool = setting(
        False, "Redirect pods' DNS (port 53) to the proxy's DNS port 15053, as istio-cni does", env="DNS_CAPTURE"
    )
    zds_timeout: Duration = setting(
        Duration(5.0), "Deadline for a ZdsHello and for each Ack (istio-cni: 5s)", env="PYZTUNNEL_ZDS_TIMEOUT", gt=0
    )

    @property
    def zds_socket(self) -> Path:
        return self.ztunnel_uds_address or self.run_dir / "ztunnel.sock"

    @property
    def api_socket(self) -> Path:
        return self.cni_socket or self.run_dir / "cni.sock"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "pods.json"

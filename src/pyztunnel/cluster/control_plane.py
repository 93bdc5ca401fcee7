"""The local cluster's control plane (istiod's XDS part): the controller serves every proxy the cluster's workloads,
services and policies over delta ADS, from the same rendered document it writes to workloads.yaml (which the CA
still reads for its node authorization, and which stays ztunnel's LOCAL_XDS_PATH format for anyone who wants it).

- Where: `10.240.0.254:15010` in the fabric namespace, TLS with a certificate from the cluster's CA root (the
  controller holds the CA state directory), so proxies verify it with their CA_ROOT_CA. istiod serves XDS and its
  CA on 15012 together; ours are two processes on one fabric address, so the ADS takes istiod's other XDS port.
- Who: each stream authenticates with the node's bearer token (the CA's tokens.json), and may only claim its own
  node in its metadata.
- Ready: a proxy holds the latest config when its stream ACKed the catalog's current generation for every type; the
  controller asks `proxy_current(pod)`, and each ACK or NACK notes a change so `ready` is re-evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.ca_server import TOKENS_FILE, ReloadingFile, authenticate, parse_tokens
from pyztunnel.identity.node_authz import Refusal
from pyztunnel.protocols import xds_server
from pyztunnel.workloads.model import LocalConfig
from pyztunnel.xds.server import XdsServer

_log = logging.getLogger("pyztunnel.cluster")

XDS_PORT = 15010
CERT_VALIDITY = timedelta(days=365)


class ControlPlane:
    def __init__(
        self,
        ca_dir: Path,
        trust_domain: str,
        address: str,
        netns: str | None,
        on_change: Callable[[], object],
    ) -> None:
        self.ca_dir = ca_dir
        self.trust_domain = trust_domain
        self.host = address
        self.netns = netns
        self.on_change = on_change
        self.tokens: ReloadingFile[dict[str, str]] = ReloadingFile(ca_dir / TOKENS_FILE, parse_tokens, {})
        self.server = XdsServer(authenticate=self._authenticate, on_event=self._event)
        self.port = 0
        self.nacks = 0

    @property
    def address(self) -> str:
        return f"https://{self.host}:{self.port or XDS_PORT}"

    def _authenticate(self, metadata: Mapping[str, str]) -> str | Refusal:
        return authenticate(self.tokens.get(), metadata)

    def _event(self, stream: xds_server.Stream, event: xds_server.Event, _latency: float | None) -> None:
        if event.kind == "nack":
            self.nacks += 1
        if event.kind in ("ack", "nack", "subscribe"):
            self.on_change()  # `ready` may flip

    async def start(self) -> None:
        ca = CertificateAuthority.load_or_create(self.ca_dir, self.trust_domain)
        cert, key = ca.issue_server(["istiod.istio-system.svc", "localhost"], [self.host, "127.0.0.1"], CERT_VALIDITY)
        self.port = await self.server.start(f"{self.host}:{XDS_PORT}", key, cert + ca.root_pem, netns=self.netns)
        _log.info("control plane serving delta ADS on %s", self.address)

    def publish(self, document: Mapping[str, Any]) -> int:
        """Serve the rendered LOCAL_XDS document; pushes what changed. Returns the catalog's generation."""
        return self.server.set_config(LocalConfig.model_validate(document))

    @property
    def generation(self) -> int:
        return self.server.catalog.generation

    def stream_of(self, pod: str, node: str) -> xds_server.Stream | None:
        """The newest stream of a proxy pod (its node metadata NAME), authenticated as its node."""
        found = [s for s in self.server.streams() if s.metadata.get("NAME") == pod and s.peer == node]
        return max(found, key=lambda s: s.id) if found else None

    def proxy_current(self, pod: str, node: str) -> bool | None:
        """Has the proxy ACKed the current state? None: it has no stream here (a proxy configured otherwise)."""
        stream = self.stream_of(pod, node)
        return None if stream is None else stream.current()

    def proxy_env(self) -> dict[str, str]:
        """What a proxy needs to reach us (its CA_ROOT_CA and AUTH_TOKEN serve here too)."""
        return {"XDS_ADDRESS": self.address, "XDS_ROOT_CA": str(self.ca_dir / "root-cert.pem")}

    def status(self) -> dict[str, object]:
        return {
            "address": self.address,
            "generation": self.generation,
            "nacks": self.nacks,
            "streams": self.server.status(),
        }

    async def close(self) -> None:
        await self.server.close()


def describe_config_source(state: dict[str, Any]) -> str:
    """Where the proxies' workloads, services and policies come from (the demo says it)."""
    plane = state.get("controlPlane")
    proxies = [p for p in state.get("proxies", []) if p.get("phase") == "Running"]
    over_xds = [p for p in proxies if p.get("xds")]
    if plane and over_xds:
        acked = sum(1 for p in over_xds if p["xds"]["current"])
        return (
            f"config: delta XDS (istiod's protocol) from the cluster's control plane at {plane['address']}: "
            f"generation {plane['generation']}, ACKed by {acked} of {len(proxies)} proxies"
        )
    return f"config: LOCAL_XDS_PATH file {state.get('stateDir', '')}/workloads.yaml (no control plane)"

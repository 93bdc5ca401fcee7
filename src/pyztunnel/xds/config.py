"""Settings of the proxy's XDS client, declared once, with ztunnel's environment names and defaults
(`src/config.rs`), and the node identity ztunnel derives from its environment (`src/xds/client.rs::node`).

`XDS_ADDRESS` defaults to ztunnel's `https://localhost:15012` (off Kubernetes); an empty value turns XDS off, as in
ztunnel (LOCAL_XDS_PATH alone). `ISTIO_META_<KEY>` variables become node metadata, `ISTIO_METAJSON_<KEY>` too (parsed
as JSON), and `XDS_HEADER_<name>` gRPC headers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pyztunnel.settings import Duration, group, setting

META_PREFIX = "ISTIO_META_"
METAJSON_PREFIX = "ISTIO_METAJSON_"
HEADER_PREFIX = "XDS_HEADER_"
DEFAULT_INSTANCE_IP = "1.1.1.1"  # ztunnel's DEFAULT_IP when INSTANCE_IP is unset
MAX_MESSAGE_SIZE = 200 * 1024 * 1024  # ztunnel's max_decoding_message_size


@group("xds")
@dataclasses.dataclass(frozen=True)
class XdsSettings:
    xds_address: str = setting(
        "https://localhost:15012",
        "istiod's delta ADS (gRPC over TLS); empty: no XDS, LOCAL_XDS_PATH only",
        env="XDS_ADDRESS",
        empty_is_set=True,
    )
    xds_root_ca: str = setting(
        "./var/run/secrets/istio/root-cert.pem",
        "root the XDS server is verified against: a file path (reloaded when it changes), inline PEM, or SYSTEM",
        env="XDS_ROOT_CA",
    )
    alt_xds_hostname: str = setting(
        "", "host name to verify the XDS server's certificate against", env="ALT_XDS_HOSTNAME"
    )
    xds_on_demand: bool = setting(
        False, "ztunnel's on-demand Address subscription (not supported: true is refused)", env="XDS_ON_DEMAND"
    )
    instance_ip: str = setting(DEFAULT_INSTANCE_IP, "this proxy's pod IP (in the XDS node id)", env="INSTANCE_IP")
    pod_namespace: str = setting("", "this proxy's namespace (in the XDS node id)", env="POD_NAMESPACE")
    xds_max_message_size: int = setting(
        MAX_MESSAGE_SIZE,
        "largest XDS response accepted, bytes (ztunnel's 200 MiB); a larger one ends the stream and is retried",
        env="PYZTUNNEL_XDS_MAX_MESSAGE_SIZE",
        ge=1024,
    )
    xds_first_response_timeout: Duration = setting(
        Duration(10),
        "a stream that brings no response this long after it opened is dropped and retried (a server that accepts"
        " and never answers)",
        env="PYZTUNNEL_XDS_FIRST_RESPONSE_TIMEOUT",
        gt=0,
    )
    xds_backoff_jitter: float = setting(
        0.0,
        "jitter fraction of the XDS reconnect backoff (10 ms doubling to 15 s); ztunnel's client has none (0)",
        env="PYZTUNNEL_XDS_BACKOFF_JITTER",
        ge=0,
        le=1,
    )

    @property
    def enabled(self) -> bool:
        return bool(self.xds_address.strip())


def node_id(instance_ip: str, pod_name: str, namespace: str) -> str:
    """ztunnel's node id: the `ztunnel~` prefix makes istiod treat the client as a ztunnel."""
    return f"ztunnel~{instance_ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"


def node_metadata(
    environ: Mapping[str, str], instance_ip: str, pod_name: str, namespace: str, node_name: str
) -> dict[str, Any]:
    """ztunnel's node metadata: NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, then ISTIO_META_* (strings) and
    ISTIO_METAJSON_* (JSON values; one that does not parse is left out)."""
    out: dict[str, Any] = {
        "NAME": pod_name,
        "NAMESPACE": namespace,
        "INSTANCE_IPS": instance_ip,
        "NODE_NAME": node_name,
    }
    for key, value in environ.items():
        if key.startswith(METAJSON_PREFIX):
            try:
                out[key[len(METAJSON_PREFIX) :]] = json.loads(value)
            except ValueError:
                continue
        elif key.startswith(META_PREFIX):
            out[key[len(META_PREFIX) :]] = value
    return out

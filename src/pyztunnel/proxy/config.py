"""Settings of `pyztunnel proxy`, declared once (environment names are ztunnel's where it has them;
docs/architecture.md "Proxy configuration")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pyztunnel.settings import Duration, group, setting


@group("proxy")
@dataclasses.dataclass(frozen=True)
class ProxySettings:
    inpod_uds: Path | None = setting(
        None, "ZDS socket of the node agent; unset = no in-pod mode (direct listeners only)", env="INPOD_UDS"
    )
    local_xds_path: Path | None = setting(
        None, "workloads/services/policies YAML (ztunnel's LOCAL_XDS_PATH)", env="LOCAL_XDS_PATH"
    )
    ca_address: str = setting("", "Istio CA API address, e.g. https://10.240.0.254:15012", env="CA_ADDRESS")
    ca_root_ca: Path | None = setting(None, "PEM file of the CA's root (to verify the CA server)", env="CA_ROOT_CA")
    auth_token: Path | None = setting(None, "file holding the bearer token for the CA", env="AUTH_TOKEN")
    node_name: str = setting("", "this node's name (certificates are prefetched for its workloads)", env="NODE_NAME")
    pod_name: str = setting("", "this proxy's pod name", env="POD_NAME")
    trust_domain: str = setting("cluster.local", "the mesh's trust domain", env="TRUST_DOMAIN")
    cluster_id: str = setting("Kubernetes", "cluster name for baggage and logs", env="CLUSTER_ID")
    secret_ttl: Duration = setting(Duration(86400), "requested certificate lifetime", env="SECRET_TTL")
    termination_grace_period_seconds: int | None = setting(
        None, "drain = N−5 s (N > 10) or max(N−1, 1) s", env="TERMINATION_GRACE_PERIOD_SECONDS"
    )
    connection_termination_deadline: Duration | None = setting(
        None, "drain deadline; wins over the grace period", env="CONNECTION_TERMINATION_DEADLINE"
    )
    listener_handoff: bool = setting(
        True, "adopt/hand off listening sockets across upgrades", env="PYZTUNNEL_LISTENER_HANDOFF"
    )
    handoff_socket: Path | None = setting(None, "unix socket for the listener handoff", env="PYZTUNNEL_HANDOFF_SOCKET")
    version: str = setting("dev", "version tag reported as istio_build{tag}", env="PYZTUNNEL_VERSION")
    readiness_addr: str = setting("0.0.0.0:15021", "readiness server address", env="PYZTUNNEL_READINESS_ADDR")
    stats_addr: str = setting("0.0.0.0:15020", "metrics server address", env="PYZTUNNEL_STATS_ADDR")
    admin_addr: str = setting("127.0.0.1:15000", "admin server address", env="PYZTUNNEL_ADMIN_ADDR")
    pool_unused_release_timeout: Duration = setting(
        Duration(300), "close a pooled HBONE connection idle this long", env="POOL_UNUSED_RELEASE_TIMEOUT"
    )
    pool_max_streams_per_connection: int = setting(
        100,
        "streams one pooled HBONE connection serves before a new one is opened",
        env="POOL_MAX_STREAMS_PER_CONNECTION",
    )
    tls_handshake_timeout: Duration = setting(
        Duration(10), "bound on a TLS handshake", env="PYZTUNNEL_TLS_HANDSHAKE_TIMEOUT"
    )
    connect_timeout: Duration = setting(Duration(10), "bound on a TCP connect", env="PYZTUNNEL_CONNECT_TIMEOUT")
    workload_wait: Duration = setting(
        Duration(5),
        "how long a connection waits for its workload to appear in the config",
        env="PYZTUNNEL_WORKLOAD_WAIT",
    )
    config_poll_interval: Duration = setting(
        Duration(0.5), "how often the LOCAL_XDS_PATH file is checked for changes", env="PYZTUNNEL_CONFIG_POLL"
    )
    direct_outbound: list[str] = setting(
        [],
        "direct mode: LISTEN_IP:PORT=TARGET_IP:PORT outbound listeners (comma separated)",
        env="PYZTUNNEL_DIRECT_OUTBOUND",
    )
    direct_inbound: list[str] = setting(
        [],
        "direct mode: workload IPs to serve inbound (HBONE 15008, plaintext 15006) on loopback",
        env="PYZTUNNEL_DIRECT_INBOUND",
    )
    cert_dir: Path | None = setting(
        None,
        "static certificates (IDENTITY-DIR/{cert-chain,key,root-cert}.pem) instead of the CA",
        env="PYZTUNNEL_CERT_DIR",
    )
    key_dir: Path = setting(Path("/tmp/pyztunnel-keys"), "private dir for transient key files", env="PYZTUNNEL_KEY_DIR")

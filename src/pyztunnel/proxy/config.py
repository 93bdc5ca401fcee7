"""Settings of `pyztunnel proxy`, declared once (environment names are ztunnel's where it has them;
docs/architecture.md "Proxy configuration").

The CA client's settings (CA_ADDRESS, CA_ROOT_CA, AUTH_TOKEN, SECRET_TTL, CLUSTER_ID, PYZTUNNEL_KEY_DIR) are the
identity package's `CaClientSettings`; the proxy loads both groups.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pyztunnel.protocols.hbone_conn import Limits
from pyztunnel.proxy.tlssock import TRANSPORTS
from pyztunnel.settings import Duration, group, setting

# 100 000 workloads are ~40-50 MiB of YAML; parsing one costs ~50 times the file's size in transient memory (the
# node graph with a mark per node, the line of every path), so the bound is also what a broken file can cost: ~3 GiB.
LOCAL_XDS_MAX_BYTES = 64 << 20
_HBONE = Limits()  # the sans-IO connection's own defaults: the settings below default to them (one place)


@group("proxy")
@dataclasses.dataclass(frozen=True)
class ProxySettings:
    inpod_uds: Path | None = setting(
        None, "ZDS socket of the node agent; unset = no in-pod mode (direct listeners only)", env="INPOD_UDS"
    )
    local_xds_path: Path | None = setting(
        None, "workloads/services/policies YAML (ztunnel's LOCAL_XDS_PATH)", env="LOCAL_XDS_PATH"
    )
    local_xds_max_bytes: int = setting(
        LOCAL_XDS_MAX_BYTES,
        "largest LOCAL_XDS_PATH file read, bytes (ztunnel reads any size): 64 MiB holds 100 000 workloads and bounds"
        " the parse's memory (~50x the file); a larger file is refused as a bad one",
        env="PYZTUNNEL_LOCAL_XDS_MAX_BYTES",
        ge=1 << 20,
    )
    node_name: str = setting("", "this node's name (certificates are prefetched for its workloads)", env="NODE_NAME")
    pod_name: str = setting("", "this proxy's pod name", env="POD_NAME")
    trust_domain: str = setting("cluster.local", "the mesh's trust domain", env="TRUST_DOMAIN")
    termination_grace_period_seconds: int | None = setting(
        None, "drain = N−5 s (N > 10) or max(N−1, 1) s", env="TERMINATION_GRACE_PERIOD_SECONDS", ge=0
    )
    connection_termination_deadline: Duration | None = setting(
        None, "drain deadline; wins over the grace period", env="CONNECTION_TERMINATION_DEADLINE", ge=0
    )
    enable_orig_src: bool = setting(
        True, "connect to the app from the client's IP (IP_TRANSPARENT), as ztunnel", env="ENABLE_ORIG_SRC"
    )
    listener_handoff: bool = setting(
        True, "adopt/hand off listening sockets across upgrades", env="PYZTUNNEL_LISTENER_HANDOFF"
    )
    handoff_socket: Path | None = setting(None, "unix socket for the listener handoff", env="PYZTUNNEL_HANDOFF_SOCKET")
    tcp_migrate_req: bool = setting(
        True,
        "net.ipv4.tcp_migrate_req's effect on every in-pod listener, by a reuseport BPF program (SELECT_OR_MIGRATE) "
        "the proxy attaches itself: a closed listener's queue moves to its sibling instead of being reset; works "
        "where /proc/sys is read-only (a non-privileged pod); off: ztunnel's listeners (pyztunnel.reuseport)",
        env="PYZTUNNEL_TCP_MIGRATE_REQ",
    )
    handoff_key: Path | None = setting(
        None,
        "the node's handoff key (32 bytes, root-only; created by the first proxy): both ends of a handoff prove they "
        "hold it (default: beside the handoff socket, handoff.sock → handoff.key)",
        env="PYZTUNNEL_HANDOFF_KEY",
    )
    connection_migration: bool = setting(
        True,
        "move established TCP↔TCP relays to the new instance at drain instead of resetting them (docs/migration.md)",
        env="PYZTUNNEL_CONNECTION_MIGRATION",
    )
    hbone_resume: bool = setting(
        True,
        "offer and accept resumable HBONE streams between pyztunnel peers, so that an HBONE connection survives an "
        "upgrade of either end (protocols/resume.py); off: ztunnel's HBONE, reset at the drain deadline",
        env="PYZTUNNEL_HBONE_RESUME",
    )
    startup_nice: int = setting(
        0,
        "start at this much lower CPU priority (nice value added) and return to full priority once ready, so that "
        "a new instance's start-up takes idle CPU rather than the traffic's during an upgrade (proxy/priority.py; "
        "needs CAP_SYS_NICE, else ignored); 0: ztunnel's behaviour",
        env="PYZTUNNEL_STARTUP_NICE",
        ge=0,
        le=19,
    )
    version: str = setting("dev", "version tag reported as istio_build{tag}", env="PYZTUNNEL_VERSION")
    fault: str = setting(
        "",
        "testing only: SIGKILL this proxy when it reaches this phase of the handover (lifecycle/faults.py; empty: "
        "never)",
        env="PYZTUNNEL_FAULT",
    )
    fault_marker: Path | None = setting(
        None, "testing only: the fault fires once, in the process that creates this file", env="PYZTUNNEL_FAULT_MARKER"
    )
    readiness_addr: str = setting(
        "0.0.0.0:15021", "readiness server address (off: none)", env="PYZTUNNEL_READINESS_ADDR"
    )
    stats_addr: str = setting("0.0.0.0:15020", "metrics server address (off: none)", env="PYZTUNNEL_STATS_ADDR")
    admin_addr: str = setting("127.0.0.1:15000", "admin server address (off: none)", env="PYZTUNNEL_ADMIN_ADDR")
    pool_unused_release_timeout: Duration = setting(
        Duration(300), "close a pooled HBONE connection idle this long", env="POOL_UNUSED_RELEASE_TIMEOUT", gt=0
    )
    pool_max_streams_per_connection: int = setting(
        100,
        "streams one pooled HBONE connection serves before a new one is opened",
        env="POOL_MAX_STREAMS_PER_CONNECTION",
        ge=1,
    )
    tls_handshake_timeout: Duration = setting(
        Duration(10), "bound on a TLS handshake", env="PYZTUNNEL_TLS_HANDSHAKE_TIMEOUT", gt=0
    )
    tls_transport: str = setting(
        "socket",
        "how HBONE connections run TLS: socket = proxy/tlssock.py, OpenSSL on the socket itself (no memory-BIO "
        "copies: it decrypts into the HTTP/2 receive buffer; bulk -29/-37 % user-space instructions, docs/bench.md); memory = "
        "uvloop's SSL transport (OpenSSL over memory BIOs), the earlier default",
        env="PYZTUNNEL_TLS_TRANSPORT",
        choices=TRANSPORTS,
    )
    connect_timeout: Duration = setting(Duration(10), "bound on a TCP connect", env="PYZTUNNEL_CONNECT_TIMEOUT", gt=0)
    hbone_preface_timeout: Duration = setting(
        Duration(_HBONE.preface_timeout),
        "an HBONE connection whose peer has not sent the HTTP/2 preface and SETTINGS this long after the TLS "
        "handshake is closed (one round trip is all it takes; 10 s, like the TLS handshake and connect bounds, "
        "covers a loaded node by far, instead of the 30 s until the keepalive PING would notice)",
        env="PYZTUNNEL_HBONE_PREFACE_TIMEOUT",
        gt=0,
    )
    hbone_max_pending_streams: int = setting(
        _HBONE.max_pending_streams,
        "CONNECTs one inbound HBONE connection may have in setup (policy check, app connect) at once; more are "
        "refused (REFUSED_STREAM). As Go's HTTP/2 server bounds running handlers: by the concurrent-stream limit",
        env="PYZTUNNEL_HBONE_MAX_PENDING_STREAMS",
        ge=1,
    )
    hbone_reset_burst: int = setting(
        _HBONE.reset_burst,
        "stream resets (and refused streams) an inbound HBONE connection may cause at once before it gets "
        "GOAWAY(ENHANCE_YOUR_CALM) and is closed (rapid reset, CVE-2023-44487; nghttp2's default burst)",
        env="PYZTUNNEL_HBONE_RESET_BURST",
        ge=1,
    )
    hbone_reset_rate: float = setting(
        _HBONE.reset_rate,
        "stream resets per second that refill that allowance (nghttp2's default)",
        env="PYZTUNNEL_HBONE_RESET_RATE",
        ge=0,
    )
    hbone_control_burst: int = setting(
        _HBONE.control_burst,
        "PING, SETTINGS and PRIORITY frames an HBONE connection's peer may send at once before it gets "
        "GOAWAY(ENHANCE_YOUR_CALM) and is closed (ping/settings/priority floods, CVE-2019-9512/-9515/-9513)",
        env="PYZTUNNEL_HBONE_CONTROL_BURST",
        ge=1,
    )
    hbone_control_rate: float = setting(
        _HBONE.control_rate,
        "control frames per second that refill that allowance (a healthy peer sends a few a minute)",
        env="PYZTUNNEL_HBONE_CONTROL_RATE",
        ge=0,
    )
    workload_wait: Duration = setting(
        Duration(5),
        "how long a connection waits for its workload to appear in the config",
        env="PYZTUNNEL_WORKLOAD_WAIT",
        ge=0,
    )
    config_poll_interval: Duration = setting(
        Duration(0.5), "how often the LOCAL_XDS_PATH file is checked for changes", env="PYZTUNNEL_CONFIG_POLL", gt=0
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


def hbone_limits(settings: ProxySettings) -> Limits:
    """The HBONE connection rules' numbers, from the declared settings (the rest are ztunnel's, §3.3)."""
    return Limits(
        preface_timeout=float(settings.hbone_preface_timeout),
        max_pending_streams=settings.hbone_max_pending_streams,
        reset_burst=settings.hbone_reset_burst,
        reset_rate=float(settings.hbone_reset_rate),
        control_burst=settings.hbone_control_burst,
        control_rate=float(settings.hbone_control_rate),
    )

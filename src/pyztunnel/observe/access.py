"""ztunnel's access log (reference/ztunnel.md §6.3): `connection opened`, `connection complete`, `connection failed`.

Events go to the logger named `access` (ztunnel's target) with their fields in ztunnel's order, so the formatter of
`observe/logging.py` prints them exactly as ztunnel does, plain or `LOG_FORMAT=json`. Building the fields is pure
(`*_fields`), emitting them is a one-line wrapper; nothing here touches sockets or the event loop.

One `ConnectionRecord` per proxied connection carries everything both the access log and the metrics labels need
(`observe/metrics.py` derives its `TrafficLabels` from it), so the proxy fills one object and hands it to both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pyztunnel.observe.logging import Display, log_fields

Direction = Literal["outbound", "inbound"]

# ztunnel's response_flags label values (§6.1): "-" for none; the others count as failed connections.
NO_FLAGS = "-"
FAILED_FLAGS = frozenset(
    {"DENY", "CONNECT", "TLS_FAILURE", "H2_HANDSHAKE_FAILURE", "NETWORK_POLICY", "IDENTITY_ERROR", "CERT_REVOKED"}
)

log = logging.getLogger("access")


def format_addr(host: str, port: int) -> str:
    """`ip:port` as Rust's SocketAddr displays it (`[v6]:port` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class ConnectionRecord:
    """What the proxy knows about one connection; empty strings mean unknown (omitted from logs, `unknown` label).

    Byte counters follow ztunnel's internal view, independent of direction: `bytes_recv` counts request bytes
    (downstream → upstream), `bytes_sent` response bytes (upstream → downstream). The access log applies ztunnel's
    flip for outbound connections; metrics use them as is (`istio_tcp_received_bytes_total` = request bytes).
    """

    src_addr: str
    dst_addr: str
    direction: Direction
    start: float = field(default_factory=time.monotonic)  # time.monotonic() when handling began
    # Source workload. `src_workload` is the pod name the log prints; `src_workload_name` the metric label
    # `source_workload` (the deployment, ztunnel's workload_name), falling back to the pod name when unknown.
    src_workload: str = ""
    src_workload_name: str = ""
    src_namespace: str = ""
    src_identity: str = ""  # spiffe://…; printed only for mTLS connections
    src_cluster: str = ""
    src_canonical_service: str = ""
    src_canonical_revision: str = ""
    src_region: str = ""
    src_zone: str = ""
    # Destination. `dst_addr` is the L4 address connected to (…:15008 for HBONE), `dst_hbone_addr` the :authority.
    dst_hbone_addr: str = ""
    dst_service: str = ""  # service hostname (cart.shop.svc.cluster.local)
    dst_service_name: str = ""
    dst_service_namespace: str = ""
    dst_workload: str = ""
    dst_workload_name: str = ""
    dst_namespace: str = ""
    dst_identity: str = ""
    dst_cluster: str = ""
    dst_canonical_service: str = ""
    dst_canonical_revision: str = ""
    dst_region: str = ""
    dst_zone: str = ""
    mtls: bool = False
    bytes_sent: int = 0
    bytes_recv: int = 0
    response_flags: str = NO_FLAGS
    error: str | None = None

    @property
    def request_bytes(self) -> int:
        return self.bytes_recv

    @property
    def response_bytes(self) -> int:
        return self.bytes_sent


def _peer_fields(r: ConnectionRecord, out: dict[str, Any]) -> None:
    """src.* and dst.* in ztunnel's order; absent values are left out, as tracing drops `None` fields."""
    out["src.addr"] = Display(r.src_addr)
    if workload := r.src_workload or r.src_canonical_service:
        out["src.workload"] = workload
    if r.src_namespace:
        out["src.namespace"] = r.src_namespace
    if r.mtls and r.src_identity:
        out["src.identity"] = r.src_identity
    if r.src_cluster:
        out["src.cluster"] = r.src_cluster
    out["dst.addr"] = Display(r.dst_addr)
    if r.dst_hbone_addr:
        out["dst.hbone_addr"] = Display(r.dst_hbone_addr)
    if r.dst_service:
        out["dst.service"] = r.dst_service
    if workload := r.dst_workload or r.dst_canonical_service:
        out["dst.workload"] = workload
    if r.dst_namespace:
        out["dst.namespace"] = r.dst_namespace
    if r.mtls and r.dst_identity:
        out["dst.identity"] = r.dst_identity
    if r.dst_cluster:
        out["dst.cluster"] = r.dst_cluster
    out["direction"] = r.direction


def opened_fields(r: ConnectionRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _peer_fields(r, out)
    return out


def duration_ms(r: ConnectionRecord, now: float | None = None) -> int:
    """Whole milliseconds since `start`, truncated like Rust's `as_millis`."""
    elapsed = (time.monotonic() if now is None else now) - r.start
    return max(0, int(elapsed * 1000))


def complete_fields(r: ConnectionRecord, now: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _peer_fields(r, out)
    # The log un-flips Istio's metric for outbound: there bytes_sent is what the local app sent (request bytes).
    if r.direction == "outbound":
        out["bytes_sent"], out["bytes_recv"] = r.bytes_recv, r.bytes_sent
    else:
        out["bytes_sent"], out["bytes_recv"] = r.bytes_sent, r.bytes_recv
    out["duration"] = f"{duration_ms(r, now)}ms"
    if r.error is not None:
        out["error"] = r.error  # ztunnel's macro appends it after the other fields
    return out


def failed_fields(src_addr: str, dst_addr: str, direction: Direction, error: str) -> dict[str, Any]:
    return {"src.addr": Display(src_addr), "dst.addr": Display(dst_addr), "direction": direction, "error": error}


def log_opened(r: ConnectionRecord) -> None:
    """`connection opened` at DEBUG, when the connection is established."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("connection opened", extra={"fields": opened_fields(r)})


def log_complete(r: ConnectionRecord, now: float | None = None) -> None:
    """`connection complete`: INFO, or ERROR with `error=` when the connection failed."""
    level = logging.INFO if r.error is None else logging.ERROR
    if log.isEnabledFor(level):
        log_fields(log, level, "connection complete", complete_fields(r, now))


def log_failed(src_addr: str, dst_addr: str, direction: Direction, error: str) -> None:
    """`connection failed` at WARN: a failure before enough is known for a full record (ztunnel's log_early_deny)."""
    if log.isEnabledFor(logging.WARNING):
        log.warning("connection failed", extra={"fields": failed_fields(src_addr, dst_addr, direction, error)})

"""HBONE requests, sans-IO (reference/ztunnel.md §3): the ports, the HTTP/2 numbers of §3.3, and the CONNECT.

Client side: the CONNECT request (`:authority ip:port`, `forwarded`, `baggage`, `traceparent`). Server side: the
validation of a CONNECT and the status ztunnel answers (200/400/401/503). The HTTP/2 connection carrying them is
`protocols.h2wire` (h2, made lean and bounded) under `protocols.hbone_conn` (the connection's rules). No sockets, no
clock, no randomness here: callers pass random bytes in.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Iterable, Sequence

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
ILLEGAL_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})

KIB = 1024
MIB = 1024 * KIB
STREAM_WINDOW = 4 * MIB
CONNECTION_WINDOW = 16 * MIB
FRAME_SIZE = 1 * MIB
CLIENT_MAX_HEADER_LIST = 16 * KIB
SERVER_MAX_HEADER_LIST = 64 * KIB
SERVER_MAX_CONCURRENT_STREAMS = 200
CLIENT_MAX_STREAMS_PER_CONNECTION = 100
PING_INTERVAL = 10.0  # keepalive PING every 10 s; no ACK within 20 s ends the connection (§3.3)
PING_TIMEOUT = 20.0
CLOSE_ROUND_TRIP_TIMEOUT = 1.0  # a connection going away waits this long at most for its last PING's ACK
DEFAULT_H2_WINDOW = 65535

Headers = list[tuple[bytes, bytes]]


def format_authority(ip: str, port: int) -> str:
    """`ip:port`, IPv6 as `[addr]:port` (compressed form)."""
    if ":" in ip:
        return f"[{ipaddress.IPv6Address(ip)}]:{port}"
    return f"{ip}:{port}"


def parse_authority(text: str) -> tuple[str, int] | None:
    """(ip, port) of an `ip:port` / `[v6]:port` authority, or None if malformed (hostnames are malformed here)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            return None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    try:
        ip = _canonical_ip(host)
    except ValueError:
        return None
    if text.startswith("[") != (":" in ip):
        return None
    return ip, port


@functools.lru_cache(maxsize=4096)
def _canonical_ip(host: str) -> str:
    # An inbound connection keeps the addresses of its CONNECT for policy re-checks: one string per address, not per
    # connection (and a parse saved). Bounded: the peer chooses them. A ValueError is not cached.
    return str(ipaddress.ip_address(host))


def traceparent(random16: bytes, random8: bytes) -> str:
    """`00-<32 hex trace id>-<16 hex parent id>-00`, from caller-supplied random bytes."""
    return f"00-{random16.hex()}-{random8.hex()}-00"


@dataclasses.dataclass(frozen=True)
class BaggageInfo:
    cluster: str = ""
    namespace: str = ""
    workload_type: str = ""  # deployment, pod, …
    workload_name: str = ""
    service_name: str = ""
    service_version: str = ""
    region: str = ""
    zone: str = ""


def baggage(info: BaggageInfo) -> str:
    """ztunnel's baggage value; empty parts omitted (§3.2)."""
    parts = [
        ("k8s.cluster.name", info.cluster),
        ("k8s.namespace.name", info.namespace),
        (f"k8s.{info.workload_type or 'pod'}.name", info.workload_name),
        ("service.name", info.service_name),
        ("service.version", info.service_version),
        ("cloud.region", info.region),
        ("cloud.availability_zone", info.zone),
    ]
    return ",".join(f"{k}={v}" for k, v in parts if v)


def forwarded(src_ip: str, src_port: int, service_host: str | None = None) -> str:
    value = f'for="{format_authority(src_ip, src_port)}"'
    if service_host:
        value += f";host={service_host}"
    return value


def connect_headers(
    authority: str,
    *,
    forwarded_for: str,
    baggage_value: str,
    traceparent_value: str,
) -> Headers:
    """Headers of an HBONE CONNECT (HTTP/2 CONNECT carries only :method and :authority pseudo-headers)."""
    headers: Headers = [
        (b":method", b"CONNECT"),
        (b":authority", authority.encode()),
        (b"forwarded", forwarded_for.encode()),
        (b"traceparent", traceparent_value.encode()),
    ]
    if baggage_value:
        headers.append((b"baggage", baggage_value.encode()))
    return headers


def status_of(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else None
    return None


def response_headers(status: int, baggage_value: str = "") -> Headers:
    headers: Headers = [(b":status", str(status).encode())]
    if baggage_value and status == 200:
        headers.append((b"baggage", baggage_value.encode()))
    return headers


@dataclasses.dataclass(frozen=True)
class ConnectRequest:
    """A valid CONNECT, as the server sees it."""

    ip: str
    port: int
    authority: str
    forwarded: str = ""
    baggage: str = ""
    traceparent: str = ""


@dataclasses.dataclass(frozen=True)
class Reject:
    """Answer `status` and do not connect; `reason` goes into the access log's error."""

    status: int
    reason: str
    response_flags: str = "-"


def parse_connect(headers: Sequence[tuple[bytes, bytes]], arrived_ip: str | None) -> ConnectRequest | Reject:
    """Validate a CONNECT received on a connection that arrived at `arrived_ip` (None: do not check, direct mode)."""
    fields: dict[bytes, bytes] = {}
    for name, value in headers:
        fields.setdefault(name, value)
    method = fields.get(b":method", b"")
    if method != b"CONNECT":
        return Reject(400, f"expected CONNECT, got {method.decode(errors='replace')!r}")
    authority_raw = fields.get(b":authority", b"").decode(errors="replace")
    parsed = parse_authority(authority_raw)
    if parsed is None:
        return Reject(400, f"bad authority {authority_raw!r}")
    ip, port = parsed
    if port in ILLEGAL_PORTS:
        return Reject(400, f"illegal port {port}")
    if arrived_ip is not None and arrived_ip != ip and ipaddress.ip_address(arrived_ip) != ipaddress.ip_address(ip):
        return Reject(400, f"authority ip {ip} does not match the connection's destination {arrived_ip}")
    return ConnectRequest(
        ip=ip,
        port=port,
        authority=authority_raw,
        forwarded=fields.get(b"forwarded", b"").decode(errors="replace"),
        baggage=fields.get(b"baggage", b"").decode(errors="replace"),
        traceparent=fields.get(b"traceparent", b"").decode(errors="replace"),
    )


def forwarded_for(value: str) -> tuple[str, int] | None:
    """The original client `ip:port` from a `forwarded: for="…"` value, if well formed."""
    for part in value.split(";"):
        key, _, raw = part.strip().partition("=")
        if key.lower() == "for":
            return parse_authority(raw.strip().strip('"'))
    return None


# Statuses of the later inbound checks, with the reasons the access log shows.
UNKNOWN_WORKLOAD = Reject(503, "unknown destination workload")
UPSTREAM_CONNECT_FAILED_STATUS = 503
DENIED_STATUS = 401

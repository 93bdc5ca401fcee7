"""One record per proxied connection and what the proxy reports from it: ztunnel's access-log lines (§6.3) and the
per-connection metrics (§6.1).

The proxy fills a `ConnRecord` as the connection goes (addresses, workloads, identities, bytes, error, response flag)
and calls `Telemetry.opened/complete/failed`. This module is the only place that turns records into log lines and
metric updates, so the observe package's sinks plug in here.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pyztunnel.observe.logging import Display
from pyztunnel.workloads.model import Service, Workload

access_log = logging.getLogger("access")

OUTBOUND = "outbound"
INBOUND = "inbound"

# response_flags (§6.1) that count as a failed connection
FAILURE_FLAGS = frozenset(
    {"DENY", "CONNECT", "TLS_FAILURE", "H2_HANDSHAKE_FAILURE", "NETWORK_POLICY", "IDENTITY_ERROR", "CERT_REVOKED"}
)


@dataclasses.dataclass
class ConnRecord:
    direction: str
    src_addr: str = ""
    dst_addr: str = ""
    hbone_addr: str = ""
    src_workload: Workload | None = None
    dst_workload: Workload | None = None
    dst_service: Service | None = None
    src_identity: str | None = None
    dst_identity: str | None = None
    bytes_sent: int = 0
    bytes_recv: int = 0
    error: str | None = None
    response_flags: str = "-"
    mtls: bool = False
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def fail(self, error: str, flags: str = "-") -> None:
        if self.error is None:
            self.error = error
        if self.response_flags == "-":
            self.response_flags = flags

    def fields(self) -> dict[str, Any]:
        """The access-log fields, in ztunnel's order (identities only with mTLS)."""
        out: dict[str, Any] = {"src.addr": Display(self.src_addr)}
        src, dst = self.src_workload, self.dst_workload
        if src is not None:
            out["src.workload"] = src.name
            out["src.namespace"] = src.namespace
        if self.src_identity and self.mtls:
            out["src.identity"] = self.src_identity
        if src is not None and src.cluster_id:
            out["src.cluster"] = src.cluster_id
        out["dst.addr"] = Display(self.dst_addr)
        if self.hbone_addr:
            out["dst.hbone_addr"] = Display(self.hbone_addr)
        if self.dst_service is not None:
            out["dst.service"] = self.dst_service.hostname
        if dst is not None:
            out["dst.workload"] = dst.name
            out["dst.namespace"] = dst.namespace
        if self.dst_identity and self.mtls:
            out["dst.identity"] = self.dst_identity
        if dst is not None and dst.cluster_id:
            out["dst.cluster"] = dst.cluster_id
        out["direction"] = self.direction
        out["bytes_sent"] = self.bytes_sent
        out["bytes_recv"] = self.bytes_recv
        out["duration"] = f"{self.duration_ms}ms"
        if self.error is not None:
            out["error"] = self.error
        return out


class MetricsSink(Protocol):
    def connection_opened(self, record: ConnRecord) -> None: ...

    def connection_closed(self, record: ConnRecord) -> None: ...


class Telemetry:
    """Access logs and counters for the proxy. `metrics` (optional) receives every opened/closed record."""

    def __init__(self, metrics: MetricsSink | None = None) -> None:
        self.metrics = metrics
        self.opened_total = 0
        self.closed_total = 0
        self.failed_by_flag: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.open = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Telemetry], bool]) -> None:
        """Wait until `predicate(self)` holds, re-checked after every record (tests, admin). Bound it by the caller."""
        while not predicate(self):
            await self._changed.wait()

    def opened(self, record: ConnRecord) -> None:
        self.opened_total += 1
        self.open += 1
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("connection opened", extra={"fields": record.fields()})
        if self.metrics is not None:
            self.metrics.connection_opened(record)
        self._notify()

    def complete(self, record: ConnRecord) -> None:
        self.closed_total += 1
        self.open -= 1
        if record.response_flags in FAILURE_FLAGS:
            self.failed_by_flag[record.response_flags] += 1
        if record.error is not None:
            self.errors[record.error.split(":")[0]] += 1
            access_log.error("connection complete", extra={"fields": record.fields()})
        else:
            access_log.info("connection complete", extra={"fields": record.fields()})
        if self.metrics is not None:
            self.metrics.connection_closed(record)
        self._notify()

    def failed(self, record: ConnRecord) -> None:
        """A failure before the connection had its context (TLS handshake, garbage): ztunnel's `connection failed`."""
        if record.response_flags in FAILURE_FLAGS:
            self.failed_by_flag[record.response_flags] += 1
        self.errors[(record.error or "").split(":")[0]] += 1
        access_log.warning(
            "connection failed",
            extra={
                "fields": {
                    "src.addr": Display(record.src_addr),
                    "dst.addr": Display(record.dst_addr),
                    "direction": record.direction,
                    "error": record.error or "",
                }
            },
        )
        if self.metrics is not None:
            self.metrics.connection_closed(record)
        self._notify()

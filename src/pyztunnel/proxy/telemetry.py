"""What the proxy reports per connection: ztunnel's access-log lines (observe.access) and metrics (observe.metrics),
from one `ConnectionRecord` per connection.

The proxy fills the record as the connection goes (`describe_src/describe_dst` from the workload model, addresses,
identities, bytes, `fail(...)`) and calls `Telemetry.opened/complete/failed`. This module is the only place the
data path talks to the observe package. Bytes follow observe's convention: `bytes_recv` = request bytes (downstream
→ upstream), `bytes_sent` = response bytes; the access log flips them for outbound as ztunnel does.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from pyztunnel.identity.spiffe import Identity
from pyztunnel.observe import access
from pyztunnel.observe.access import FAILED_FLAGS, NO_FLAGS, ConnectionRecord, Direction
from pyztunnel.observe.metrics import Metrics, labels_for
from pyztunnel.protocols import hbone
from pyztunnel.workloads.model import Service, Workload

OUTBOUND: Direction = "outbound"
INBOUND: Direction = "inbound"


def new_record(direction: Direction, src_addr: str = "", dst_addr: str = "", *, mtls: bool = False) -> ConnectionRecord:
    return ConnectionRecord(src_addr=src_addr, dst_addr=dst_addr, direction=direction, mtls=mtls)


def fail(record: ConnectionRecord, error: str, flags: str = NO_FLAGS) -> None:
    """The first error and the first response flag stick (later ones are consequences)."""
    if record.error is None:
        record.error = error
    if record.response_flags == NO_FLAGS:
        record.response_flags = flags


def identity_of(workload: Workload) -> Identity:
    return Identity.for_workload(workload.namespace, workload.service_account, workload.trust_domain)


def baggage_for(workload: Workload, cluster: str) -> str:
    """The `baggage` a workload's HBONE requests (and responses) carry (§3.2): its telemetry identity."""
    return hbone.baggage(
        hbone.BaggageInfo(
            cluster=workload.cluster_id or cluster,
            namespace=workload.namespace,
            workload_type=workload.workload_type or "pod",
            workload_name=workload.workload_name or workload.name,
            service_name=workload.canonical_name,
            service_version=workload.canonical_revision,
            region=workload.locality.region,
            zone=workload.locality.zone,
        )
    )


def describe_src(record: ConnectionRecord, workload: Workload | None) -> None:
    if workload is None:
        return
    record.src_workload = workload.name
    record.src_workload_name = workload.workload_name
    record.src_namespace = workload.namespace
    record.src_cluster = workload.cluster_id
    record.src_canonical_service = workload.canonical_name
    record.src_canonical_revision = workload.canonical_revision
    record.src_region = workload.locality.region
    record.src_zone = workload.locality.zone


def describe_dst(record: ConnectionRecord, workload: Workload | None, service: Service | None = None) -> None:
    if service is not None:
        record.dst_service = service.hostname
        record.dst_service_name = service.name
        record.dst_service_namespace = service.namespace
    if workload is None:
        return
    record.dst_workload = workload.name
    record.dst_workload_name = workload.workload_name
    record.dst_namespace = workload.namespace
    record.dst_cluster = workload.cluster_id
    record.dst_canonical_service = workload.canonical_name
    record.dst_canonical_revision = workload.canonical_revision
    record.dst_region = workload.locality.region
    record.dst_zone = workload.locality.zone


class Telemetry:
    """Access logs and metrics for one proxy process, plus counts the tests and the admin page can read."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.opened_total = 0
        self.closed_total = 0
        self.failed_by_flag: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self._changed = asyncio.Event()
        self._open: set[int] = set()  # ids of records opened and not yet complete

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Telemetry], bool]) -> None:
        """Wait until `predicate(self)` holds, re-checked after every record (tests, admin). Bound it by the caller."""
        while not predicate(self):
            await self._changed.wait()

    def _count_close(self, record: ConnectionRecord) -> None:
        if record.response_flags in FAILED_FLAGS:
            self.failed_by_flag[record.response_flags] += 1
        if record.error is not None:
            self.errors[record.error.split(":")[0]] += 1

    def opened(self, record: ConnectionRecord) -> None:
        if id(record) in self._open:
            return
        self._open.add(id(record))
        self.opened_total += 1
        access.log_opened(record)
        if self.metrics is not None:
            self.metrics.connection_opened(labels_for(record))
        self._notify()

    def complete(self, record: ConnectionRecord) -> None:
        """The connection ended (also when it failed before it was opened: it is opened first, so the counters and
        `istio_tcp_sockets_open` stay balanced)."""
        if id(record) not in self._open:
            self.opened(record)
        self._open.discard(id(record))
        self.closed_total += 1
        self._count_close(record)
        access.log_complete(record)
        if self.metrics is not None:
            self.metrics.connection_closed(
                labels_for(record), record.bytes_sent, record.bytes_recv, record.response_flags
            )
        self._notify()

    def failed(self, record: ConnectionRecord) -> None:
        """A failure before the connection had its context (TLS handshake, garbage): ztunnel's `connection failed`.
        A failure with a response flag still counts in `istio_tcp_connections_failed_total`."""
        self._count_close(record)
        access.log_failed(record.src_addr, record.dst_addr, record.direction, record.error or "")
        if self.metrics is not None and record.response_flags in FAILED_FLAGS:
            labels = labels_for(record)
            self.metrics.connection_opened(labels)
            self.metrics.connection_closed(labels, 0, 0, record.response_flags)
        self._notify()

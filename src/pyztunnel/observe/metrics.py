"""ztunnel's Prometheus metrics (reference/ztunnel.md §6.1): same names, types, label names and label order.

The counters live in plain dicts keyed by a `TrafficLabels` tuple and are exported by one custom collector on a
prometheus-client `CollectorRegistry`. Why not prometheus-client's `Counter`: the proxy adds bytes on every relay
chunk, and a dict update is several times cheaper than `Counter.labels(...).inc()` with its lock; and a custom
collector emits no `_created` series, which ztunnel does not have. The event loop is single-threaded, so no lock.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyztunnel.observe.access import FAILED_FLAGS, NO_FLAGS, ConnectionRecord
from pyztunnel.observe.exposition import encode
from pyztunnel.protocols.xds import Stats as XdsStats

UNKNOWN = "unknown"  # ztunnel's DefaultedUnknown: an empty label value is exported as `unknown`

PLAIN_CONTENT_TYPE = "text/plain; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text;charset=utf-8;version=1.0.0"


class TrafficLabels(NamedTuple):
    """ztunnel's CommonTrafficLabels, in its order (the locality labels last, as its flattened LocalityLabels)."""

    reporter: str
    source_workload: str
    source_canonical_service: str
    source_canonical_revision: str
    source_workload_namespace: str
    source_principal: str
    source_app: str
    source_version: str
    source_cluster: str
    destination_service: str
    destination_service_namespace: str
    destination_service_name: str
    destination_workload: str
    destination_canonical_service: str
    destination_canonical_revision: str
    destination_workload_namespace: str
    destination_principal: str
    destination_app: str
    destination_version: str
    destination_cluster: str
    request_protocol: str
    response_flags: str
    connection_security_policy: str
    source_region: str
    source_zone: str
    destination_region: str
    destination_zone: str


TRAFFIC_LABEL_NAMES: tuple[str, ...] = TrafficLabels._fields


def _v(value: str) -> str:
    return value or UNKNOWN


def labels_for(r: ConnectionRecord) -> TrafficLabels:
    """The labels of a connection's counters; `response_flags` is `-` (the flag is applied at close, as ztunnel)."""
    return TrafficLabels(
        reporter="source" if r.direction == "outbound" else "destination",
        source_workload=_v(r.src_workload_name or r.src_workload),
        source_canonical_service=_v(r.src_canonical_service),
        source_canonical_revision=_v(r.src_canonical_revision),
        source_workload_namespace=_v(r.src_namespace),
        # ztunnel takes source_principal only from the peer's mTLS certificate, i.e. on inbound (§6.1).
        source_principal=_v(r.src_identity if r.mtls and r.direction == "inbound" else ""),
        source_app=_v(r.src_canonical_service),
        source_version=_v(r.src_canonical_revision),
        source_cluster=_v(r.src_cluster),
        destination_service=_v(r.dst_service),
        destination_service_namespace=_v(r.dst_service_namespace),
        destination_service_name=_v(r.dst_service_name),
        destination_workload=_v(r.dst_workload_name or r.dst_workload),
        destination_canonical_service=_v(r.dst_canonical_service),
        destination_canonical_revision=_v(r.dst_canonical_revision),
        destination_workload_namespace=_v(r.dst_namespace),
        destination_principal=_v(r.dst_identity),
        destination_app=_v(r.dst_canonical_service),
        destination_version=_v(r.dst_canonical_revision),
        destination_cluster=_v(r.dst_cluster),
        request_protocol="tcp",
        response_flags=NO_FLAGS,
        connection_security_policy="mutual_tls" if r.mtls else UNKNOWN,
        source_region=_v(r.src_region),
        source_zone=_v(r.src_zone),
        destination_region=_v(r.dst_region),
        destination_zone=_v(r.dst_zone),
    )


class ConnectionCounters:
    """One live connection's byte counts. The relay adds to `sent`/`recv` (a plain attribute add per chunk, the
    cheapest thing Python offers); scrapes include live connections, so the byte metrics grow while a connection
    runs, as ztunnel's do; `Metrics.connection_closed` folds the counts into the totals."""

    __slots__ = ("__weakref__", "labels", "recv", "sent")

    def __init__(self, labels: TrafficLabels) -> None:
        self.labels = labels
        self.sent = 0  # response bytes (istio_tcp_sent_bytes_total)
        self.recv = 0  # request bytes (istio_tcp_received_bytes_total)


class Metrics:
    """Every metric pyztunnel's proxy exports, on `self.registry`."""

    def __init__(self, tag: str = "unknown", *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.tag = tag
        self.opened: dict[TrafficLabels, int] = {}
        self.closed: dict[TrafficLabels, int] = {}
        self.failed: dict[TrafficLabels, int] = {}
        self.received_bytes: dict[TrafficLabels, int] = {}
        self.sent_bytes: dict[TrafficLabels, int] = {}
        self.sockets_open: dict[str, int] = {"source": 0, "destination": 0}
        # Weak: a handle dropped without connection_closed (a caller closing by labels) cannot leak.
        self.live: weakref.WeakSet[ConnectionCounters] = weakref.WeakSet()
        self.active_proxies = 0
        self.pending_proxies = 0
        self.proxies_started = 0
        self.proxies_stopped = 0
        self.xds: XdsStats | None = None  # the XDS client's counters, when XDS is on
        self.registry.register(_Collector(self))
        if process_metrics:
            # process_open_fds and process_max_fds are ztunnel's too; the other process_* series come for free.
            ProcessCollector(registry=self.registry)

    # Traffic: connection_opened and connection_closed once per connection; bytes through the returned counters
    # (or add_bytes, or the sent/recv of connection_closed).
    def connection_opened(self, labels: TrafficLabels) -> ConnectionCounters:
        self.opened[labels] = self.opened.get(labels, 0) + 1
        self.sockets_open[labels.reporter] += 1
        counters = ConnectionCounters(labels)
        self.live.add(counters)
        return counters

    def add_bytes(self, labels: TrafficLabels, sent: int = 0, recv: int = 0) -> None:
        """Count relayed bytes: `recv` request bytes (received_bytes), `sent` response bytes (sent_bytes)."""
        if recv:
            self.received_bytes[labels] = self.received_bytes.get(labels, 0) + recv
        if sent:
            self.sent_bytes[labels] = self.sent_bytes.get(labels, 0) + sent

    def connection_closed(
        self,
        conn: TrafficLabels | ConnectionCounters,
        sent: int = 0,
        recv: int = 0,
        response_flags: str = NO_FLAGS,
    ) -> None:
        """Record a closed connection, given its counters (from connection_opened) or its labels. `sent`/`recv` are
        bytes not counted yet; they go under the connection's labels, as ztunnel counts bytes live. `response_flags`
        marks the close only (closed_total, failed_total), as ztunnel applies the flag at record time."""
        if isinstance(conn, ConnectionCounters):
            self.live.discard(conn)
            labels = conn.labels
            sent, recv = sent + conn.sent, recv + conn.recv
            conn.sent = conn.recv = 0
        else:
            labels = conn
        self.add_bytes(labels, sent, recv)
        self.sockets_open[labels.reporter] -= 1
        final = labels if response_flags == NO_FLAGS else labels._replace(response_flags=response_flags)
        self.closed[final] = self.closed.get(final, 0) + 1
        if response_flags in FAILED_FLAGS:
            self.failed[final] = self.failed.get(final, 0) + 1

    # In-pod workload manager.
    def proxy_started(self) -> None:
        self.proxies_started += 1

    def proxy_stopped(self) -> None:
        self.proxies_stopped += 1

    def set_proxy_counts(self, active: int, pending: int) -> None:
        self.active_proxies, self.pending_proxies = active, pending

    def exposition(self, openmetrics: bool = False) -> bytes:
        """The registry as Prometheus text, or OpenMetrics; labels in ztunnel's order."""
        return encode(self.registry, openmetrics)


def _counter(name: str, help_text: str, values: dict[TrafficLabels, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=TRAFFIC_LABEL_NAMES)
    for labels, value in values.items():
        family.add_metric(labels, value)
    return family


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter("istio_tcp_connections_opened", "The total number of TCP connections opened", m.opened)
        yield _counter("istio_tcp_connections_closed", "The total number of TCP connections closed", m.closed)
        yield _counter(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            _with_live(m.received_bytes, m.live, "recv"),
        )
        yield _counter(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            _with_live(m.sent_bytes, m.live, "sent"),
        )
        yield _counter("istio_tcp_connections_failed", "The total number of TCP connections that failed", m.failed)
        sockets = GaugeMetricFamily(
            "istio_tcp_sockets_open", "The current number of open TCP sockets", labels=["reporter"]
        )
        for reporter, count in m.sockets_open.items():
            sockets.add_metric([reporter], count)
        yield sockets
        if m.xds is not None:
            yield from _xds(m.xds)
        build = GaugeMetricFamily("istio_build", "Istio component build info", labels=["component", "tag"])
        build.add_metric(["ztunnel", m.tag], 1)
        yield build
        yield from _plain(
            (
                (
                    "workload_manager_active_proxy_count",
                    "gauge",
                    "The total number current workloads with active proxies",
                    m.active_proxies,
                ),
                (
                    "workload_manager_pending_proxy_count",
                    "gauge",
                    "The total number current workloads with pending proxies",
                    m.pending_proxies,
                ),
                (
                    "workload_manager_proxies_started",
                    "counter",
                    "The total number of proxies that were started",
                    m.proxies_started,
                ),
                (
                    "workload_manager_proxies_stopped",
                    "counter",
                    "The total number of proxies that were stopped",
                    m.proxies_stopped,
                ),
            )
        )


def _xds(stats: XdsStats) -> Iterator[Metric]:
    """ztunnel's src/xds/metrics.rs: names, help texts and labels (`reason`; `url` = the type URL)."""
    for name, help_text, label, values in (
        (
            "istio_xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            "reason",
            stats.terminations,
        ),
        ("istio_xds_message", "Total number of messages received (unstable)", "url", stats.messages),
        ("istio_xds_message_bytes", "Total number of bytes received (unstable)", "url", stats.message_bytes),
    ):
        family = CounterMetricFamily(name, help_text, labels=[label])
        for value, count in values.items():
            family.add_metric([value], count)
        yield family


def _with_live(
    totals: dict[TrafficLabels, int], live: Iterable[ConnectionCounters], attr: str
) -> dict[TrafficLabels, int]:
    out = dict(totals)
    for conn in live:
        if n := getattr(conn, attr):
            out[conn.labels] = out.get(conn.labels, 0) + n
    return out


def _plain(rows: Iterable[tuple[str, str, str, int]]) -> Iterator[Metric]:
    for name, kind, help_text, value in rows:
        family: Metric
        if kind == "counter":
            family = CounterMetricFamily(name, help_text, value=value)
        else:
            family = GaugeMetricFamily(name, help_text, value=value)
        yield family


def wants_openmetrics(accept_headers: Iterable[str]) -> bool:
    """ztunnel's content negotiation: OpenMetrics when any Accept entry's media type is application/openmetrics-text."""
    for header in accept_headers:
        for entry in header.split(","):
            if entry.split(";", 1)[0].strip().lower() == "application/openmetrics-text":
                return True
    return False


def tag_from_env() -> str:
    """The `istio_build{tag}` value: the DaemonSet version (PYZTUNNEL_VERSION), else the package version."""
    from pyztunnel import __version__

    return os.environ.get("PYZTUNNEL_VERSION") or __version__

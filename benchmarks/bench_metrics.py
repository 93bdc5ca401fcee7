"""Cost of the proxy's per-chunk metric update and per-connection access-log line.

Peer: prometheus-client's own labelled Counter (`.labels(...).inc(n)`, and with the child cached), which is what
observe/metrics.py would otherwise use. Short: about two seconds in all.
"""

from __future__ import annotations

import io
import logging
import timeit

from prometheus_client import CollectorRegistry, Counter

from pyztunnel.observe import access
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.observe.logging import ZtunnelFormatter
from pyztunnel.observe.metrics import TRAFFIC_LABEL_NAMES, Metrics, labels_for

N = 200_000


def _ns(stmt: object, number: int = N) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=3))  # type: ignore[arg-type]
    return best / number * 1e9


def run(args: list[str]) -> dict[str, object]:
    record = ConnectionRecord(
        "10.244.1.5:40000", "10.244.2.7:15008", "outbound", src_workload="web-1", src_namespace="shop",
        dst_hbone_addr="10.244.2.7:8080", dst_service="cart.shop.svc.cluster.local", dst_workload="cart-0",
        dst_namespace="shop", mtls=True, bytes_recv=84, bytes_sent=158,
    )  # fmt: skip
    labels = labels_for(record)
    ours = Metrics(process_metrics=False)
    ours_ns = _ns(lambda: ours.add_bytes(labels, sent=16384))
    conn = ours.connection_opened(labels)

    def live_add() -> None:
        conn.sent += 16384

    live_ns = _ns(live_add)

    counter = Counter("bench_sent_bytes", "peer", TRAFFIC_LABEL_NAMES, registry=CollectorRegistry())
    peer_ns = _ns(lambda: counter.labels(*labels).inc(16384))
    child = counter.labels(*labels)
    peer_cached_ns = _ns(lambda: child.inc(16384))

    logger = logging.getLogger("access")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(ZtunnelFormatter())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        log_ns = _ns(lambda: access.log_complete(record, now=record.start + 0.012), number=N // 10)
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved

    result: dict[str, object] = {
        "live_counter_add_ns": round(live_ns),
        "add_bytes_ns": round(ours_ns),
        "prometheus_client_labels_inc_ns": round(peer_ns),
        "prometheus_client_cached_child_inc_ns": round(peer_cached_ns),
        "ratio_cached_child_vs_live_counter": round(peer_cached_ns / live_ns, 2),
        "ratio_labels_inc_vs_add_bytes": round(peer_ns / ours_ns, 2),
        "access_log_line_us": round(log_ns / 1000, 2),
    }
    print("metric update per relay chunk:")
    print(f"  ours, live ConnectionCounters attribute add: {live_ns:.0f} ns")
    print(
        f"  peer, prometheus-client cached child .inc(): {peer_cached_ns:.0f} ns ({peer_cached_ns / live_ns:.1f}x ours)"
    )
    print(f"  ours, Metrics.add_bytes(labels, …): {ours_ns:.0f} ns")
    print(f"  peer, prometheus-client .labels(…).inc(): {peer_ns:.0f} ns ({peer_ns / ours_ns:.1f}x add_bytes)")
    print(f"access log 'connection complete' line, formatted: {log_ns / 1000:.1f} µs")
    return result

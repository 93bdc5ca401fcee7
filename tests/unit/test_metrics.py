"""Metrics: ztunnel's names, types, label names and order, `unknown` defaults, failure flags; parsed from the text."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.observe.exposition import encode_families
from pyztunnel.observe.metrics import TRAFFIC_LABEL_NAMES, Metrics, labels_for, wants_openmetrics

# reference/ztunnel.md §6.1, CommonTrafficLabels in declaration order.
ZTUNNEL_LABELS = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
]


def inbound() -> ConnectionRecord:
    return ConnectionRecord(
        src_addr="10.244.2.3:5000",
        dst_addr="10.244.1.4:8080",
        direction="inbound",
        src_workload="client-abc",
        src_workload_name="client",
        src_namespace="default",
        src_identity="spiffe://cluster.local/ns/default/sa/client",
        src_canonical_service="client",
        src_canonical_revision="v1",
        dst_service="httpbin.default.svc.cluster.local",
        dst_service_name="httpbin",
        dst_service_namespace="default",
        dst_workload="httpbin-0",
        dst_namespace="default",
        dst_identity="spiffe://cluster.local/ns/default/sa/httpbin",
        dst_cluster="Kubernetes",
        mtls=True,
    )


def families(m: Metrics) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        out[fam.name] = (fam.type, [(s.name, s.labels, s.value) for s in fam.samples])
    return out


def test_label_names_and_order_are_ztunnels() -> None:
    assert tuple(ZTUNNEL_LABELS) == TRAFFIC_LABEL_NAMES


def test_exposition_names_types_and_values() -> None:
    m = Metrics(tag="1.2.3", process_metrics=False)
    labels = labels_for(inbound())
    m.connection_opened(labels)
    m.add_bytes(labels, sent=100, recv=7)
    m.connection_closed(labels, sent=1, recv=2)
    fams = families(m)
    assert fams["istio_tcp_connections_opened"][0] == "counter"
    (name, got, value) = fams["istio_tcp_connections_opened"][1][0]
    assert name == "istio_tcp_connections_opened_total" and value == 1
    assert got["reporter"] == "destination" and got["source_workload"] == "client"
    assert got["source_principal"] == "spiffe://cluster.local/ns/default/sa/client"
    assert got["destination_service_name"] == "httpbin" and got["destination_workload"] == "httpbin-0"
    assert got["connection_security_policy"] == "mutual_tls" and got["response_flags"] == "-"
    assert got["source_cluster"] == "unknown" and got["destination_zone"] == "unknown"
    assert fams["istio_tcp_sent_bytes"][1][0][2] == 101  # response direction
    assert fams["istio_tcp_received_bytes"][1][0][2] == 9  # request direction
    assert fams["istio_tcp_connections_closed"][1][0][2] == 1
    assert fams["istio_tcp_connections_failed"][1] == []  # "-" is not a failure
    assert fams["istio_tcp_sockets_open"] == (
        "gauge",
        [
            ("istio_tcp_sockets_open", {"reporter": "source"}, 0),
            ("istio_tcp_sockets_open", {"reporter": "destination"}, 0),
        ],
    )
    assert fams["istio_build"] == ("gauge", [("istio_build", {"component": "ztunnel", "tag": "1.2.3"}, 1)])
    text = m.exposition().decode()
    assert "_created" not in text
    # Labels are written in ztunnel's order, not prometheus-client's alphabetical one.
    line = next(x for x in text.splitlines() if x.startswith("istio_tcp_connections_opened_total{"))
    assert re.findall(r"(\w+)=\"", line) == ZTUNNEL_LABELS


def test_workload_manager_metrics_have_no_istio_prefix() -> None:
    m = Metrics(process_metrics=False)
    m.proxy_started()
    m.proxy_started()
    m.proxy_stopped()
    m.set_proxy_counts(active=1, pending=3)
    fams = families(m)
    assert fams["workload_manager_active_proxy_count"] == ("gauge", [("workload_manager_active_proxy_count", {}, 1)])
    assert fams["workload_manager_pending_proxy_count"][1][0][2] == 3
    assert fams["workload_manager_proxies_started"] == (
        "counter",
        [("workload_manager_proxies_started_total", {}, 2)],
    )
    assert fams["workload_manager_proxies_stopped"][1][0][2] == 1


@pytest.mark.parametrize("flag", ["DENY", "CONNECT", "TLS_FAILURE", "NETWORK_POLICY", "IDENTITY_ERROR"])
def test_failed_counts_only_listed_flags(flag: str) -> None:
    m = Metrics(process_metrics=False)
    labels = labels_for(inbound())
    m.connection_opened(labels)
    m.connection_closed(labels, response_flags=flag)
    m.connection_opened(labels)
    m.connection_closed(labels, response_flags="-")
    fams = families(m)
    failed = fams["istio_tcp_connections_failed"][1]
    assert [(s[1]["response_flags"], s[2]) for s in failed] == [(flag, 1)]
    closed = {s[1]["response_flags"]: s[2] for s in fams["istio_tcp_connections_closed"][1]}
    assert closed == {flag: 1, "-": 1}
    # opened is counted under "-", as ztunnel applies the flag at record time only
    assert [s[1]["response_flags"] for s in fams["istio_tcp_connections_opened"][1]] == ["-"]


def test_source_principal_only_from_an_inbound_peer_certificate() -> None:
    record = inbound()
    assert labels_for(record).source_principal == "spiffe://cluster.local/ns/default/sa/client"
    record.mtls = False
    assert labels_for(record).source_principal == "unknown"
    record.mtls, record.direction = True, "outbound"
    labels = labels_for(record)
    assert labels.source_principal == "unknown" and labels.reporter == "source"
    assert labels.destination_principal == "spiffe://cluster.local/ns/default/sa/httpbin"


def test_sockets_open_tracks_live_connections_per_reporter() -> None:
    m = Metrics(process_metrics=False)
    out = labels_for(ConnectionRecord("a:1", "b:2", "outbound"))
    m.connection_opened(out)
    m.connection_opened(out)
    m.connection_closed(out)
    assert m.sockets_open == {"source": 1, "destination": 0}
    assert out.source_principal == "unknown" and out.connection_security_policy == "unknown"


def test_openmetrics_and_content_negotiation() -> None:
    m = Metrics(process_metrics=True)
    text = m.exposition(openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE istio_tcp_connections_opened counter" in text
    assert "process_open_fds" in text and "process_max_fds" in text
    assert wants_openmetrics(["application/json", "application/openmetrics-text; other stuff"])
    assert wants_openmetrics(["application/vnd.google.protobuf;q=0.6,application/openmetrics-text;version=1.0.0"])
    assert not wants_openmetrics(["text/plain", "application/json"])
    assert not wants_openmetrics([])


def test_encoding_escapes_and_integers() -> None:
    from prometheus_client.core import GaugeMetricFamily

    fam = GaugeMetricFamily("g", "help with \\ and\nnewline", labels=["a"])
    fam.add_metric(['q"uote\\n'], 1.5)
    fam.add_metric(["x"], 3)
    text = encode_families([fam]).decode()
    assert text == ('# HELP g help with \\\\ and\\nnewline\n# TYPE g gauge\ng{a="q\\"uote\\\\n"} 1.5\ng{a="x"} 3\n')
    parsed = next(iter(text_string_to_metric_families(text)))
    assert parsed.samples[0].labels == {"a": 'q"uote\\n'}


def test_live_counters_show_in_scrapes_and_fold_at_close() -> None:
    m = Metrics(process_metrics=False)
    labels = labels_for(inbound())
    conn = m.connection_opened(labels)
    conn.recv += 10
    conn.sent += 1000
    m.add_bytes(labels, recv=1)  # another path adding to the same labels
    fams = families(m)
    assert fams["istio_tcp_received_bytes"][1][0][2] == 11
    assert fams["istio_tcp_sent_bytes"][1][0][2] == 1000
    conn.recv += 5
    m.connection_closed(conn, recv=1, response_flags="DENY")
    assert len(m.live) == 0 and m.received_bytes[labels] == 17 and m.sent_bytes[labels] == 1000
    fams = families(m)
    assert fams["istio_tcp_received_bytes"][1][0][2] == 17  # not counted twice once closed
    assert fams["istio_tcp_connections_failed"][1][0][1]["response_flags"] == "DENY"


def test_a_handle_dropped_without_close_does_not_leak() -> None:
    import gc

    m = Metrics(process_metrics=False)
    labels = labels_for(inbound())
    m.connection_opened(labels)  # handle ignored; closed by labels below
    m.connection_closed(labels, sent=3, recv=4)
    gc.collect()
    assert len(m.live) == 0 and m.sent_bytes[labels] == 3 and m.received_bytes[labels] == 4

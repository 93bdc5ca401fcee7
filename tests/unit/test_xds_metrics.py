"""ztunnel's istio_xds_* metrics (src/xds/metrics.rs): names, label names, values from the client's counters."""

from __future__ import annotations

from google.protobuf import any_pb2

from pyztunnel.observe.metrics import Metrics
from pyztunnel.protocols import xds
from pyztunnel.protocols._pb import discovery_pb2


def test_xds_counters_are_exported_with_ztunnels_names_and_labels() -> None:
    metrics = Metrics(process_metrics=False)
    text = metrics.exposition().decode()
    assert "istio_xds_" not in text  # XDS off: no series
    state = xds.ClientState(xds.node("n", {}))
    metrics.xds = state.stats
    state.start_stream()
    update = state.receive_message(xds_response())
    state.answer(update)
    state.end_stream(xds.Termination.RECONNECT)
    text = metrics.exposition().decode()
    assert 'istio_xds_connection_terminations_total{reason="Reconnect"} 1' in text
    assert f'istio_xds_message_total{{url="{xds.ADDRESS_TYPE}"}} 1' in text
    assert f'istio_xds_message_bytes_total{{url="{xds.ADDRESS_TYPE}"}} 5' in text
    assert "# TYPE istio_xds_message_bytes_total counter" in text


def xds_response() -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=xds.ADDRESS_TYPE,
        nonce="1",
        resources=[discovery_pb2.Resource(name="w", resource=any_pb2.Any(type_url=xds.ADDRESS_TYPE, value=b"12345"))],
    )

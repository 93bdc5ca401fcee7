"""The delta XDS server's bookkeeping (protocols/xds_server.py), and the client's against it, with serialized
messages between them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyztunnel.protocols import xds, xds_server
from pyztunnel.protocols._pb import discovery_pb2

A = xds.ADDRESS_TYPE
Z = xds.AUTHORIZATION_TYPE
Entry = xds_server.Entry


def wire(message: discovery_pb2.DeltaDiscoveryRequest) -> bytes:
    return message.SerializeToString()


def subscribe(stream: xds_server.Stream, type_url: str, **fields: object) -> list[discovery_pb2.DeltaDiscoveryResponse]:
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **fields)  # type: ignore[arg-type]
    events, out = stream.receive(wire(request))
    assert [e.kind for e in events] == ["subscribe"]
    return out


def ack(stream: xds_server.Stream, response: discovery_pb2.DeltaDiscoveryResponse, error: str = "") -> xds_server.Event:
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
    if error:
        request.error_detail.message = error
    events, out = stream.receive(wire(request))
    assert not out
    return events[0]


def catalog_with(**workloads: bytes) -> xds_server.Catalog:
    catalog = xds_server.Catalog()
    for name, payload in workloads.items():
        catalog.put(A, name, Entry.of(payload))
    catalog.commit()
    return catalog


def test_a_subscription_gets_everything_then_only_changes() -> None:
    catalog = catalog_with(w1=b"a", w2=b"b")
    stream = xds_server.Stream(catalog)
    (first,) = subscribe(stream, A)
    assert sorted(r.name for r in first.resources) == ["w1", "w2"]
    assert first.resources[0].resource.type_url == A and first.system_version_info == "1"
    assert ack(stream, first).kind == "ack"
    assert stream.synced(A) == 1
    catalog.put(A, "w1", Entry.of(b"a2"))
    catalog.put(A, "w2", None)
    catalog.put(A, "w3", Entry.of(b"c"))
    catalog.put(A, "w3", Entry.of(b"c"))  # the same again: no change
    assert catalog.commit() == 2
    (push,) = stream.push()
    assert sorted(r.name for r in push.resources) == ["w1", "w3"]
    assert list(push.removed_resources) == ["w2"]
    assert stream.synced(A) == 1  # not yet acked
    ack(stream, push)
    assert stream.synced(A) == 2


def test_an_empty_catalog_still_answers_the_subscription() -> None:
    stream = xds_server.Stream(xds_server.Catalog())
    (first,) = subscribe(stream, Z)
    assert not first.resources and first.nonce
    ack(stream, first)
    assert stream.synced(Z) == 0
    assert stream.push() == []


def test_a_type_without_changes_follows_the_generation_without_a_response() -> None:
    catalog = catalog_with(w1=b"a")
    stream = xds_server.Stream(catalog)
    ack(stream, subscribe(stream, A)[0])
    ack(stream, subscribe(stream, Z)[0])
    assert stream.current()
    catalog.put(Z, "ns/deny", Entry.of(b"p"))
    catalog.commit()
    (push,) = stream.push()
    assert push.type_url == Z
    assert stream.synced(A) == 2 and stream.synced(Z) == 1 and not stream.current()
    ack(stream, push)
    assert stream.current()


def test_a_push_while_one_is_in_flight_is_covered_by_the_last_ack() -> None:
    catalog = catalog_with(w1=b"a")
    stream = xds_server.Stream(catalog)
    first = subscribe(stream, A)[0]
    catalog.put(Z, "ns/p", Entry.of(b"p"))  # a change of another type: nothing new for A
    catalog.commit()
    assert stream.push() == []
    ack(stream, first)
    assert stream.synced(A) == 2


def test_a_nack_keeps_the_older_generation_and_the_next_push_offers_it_again() -> None:
    catalog = catalog_with(w1=b"a")
    stream = xds_server.Stream(catalog)
    ack(stream, subscribe(stream, A)[0])
    catalog.put(A, "w1", Entry.of(b"bad"))
    catalog.commit()
    (push,) = stream.push()
    event = ack(stream, push, error="w1: invalid address")
    assert event.kind == "nack" and event.error == "w1: invalid address"
    assert stream.synced(A) == 1
    assert stream.subscriptions[A].last_nack == "w1: invalid address"
    catalog.put(A, "w9", Entry.of(b"z"))
    catalog.commit()
    (again,) = stream.push()
    assert sorted(r.name for r in again.resources) == ["w1", "w9"]


def test_initial_resource_versions_spare_what_the_client_has_and_remove_what_is_gone() -> None:
    catalog = catalog_with(w1=b"a", w2=b"b")
    held = {"w1": Entry.of(b"a").version, "w2": "old", "gone": "x"}
    (first,) = subscribe(xds_server.Stream(catalog), A, initial_resource_versions=held)
    assert [r.name for r in first.resources] == ["w2"]
    assert list(first.removed_resources) == ["gone"]


def test_a_stale_nonce_is_ignored() -> None:
    catalog = catalog_with(w1=b"a")
    stream = xds_server.Stream(catalog)
    first = subscribe(stream, A)[0]
    ack(stream, first)
    assert ack(stream, first).kind == "stale"


def test_on_demand_subscribes_to_nothing_then_by_name() -> None:
    catalog = catalog_with(w1=b"a", w2=b"b")
    stream = xds_server.Stream(catalog)
    (first,) = subscribe(stream, A, resource_names_subscribe=["*"], resource_names_unsubscribe=["*"])
    assert not first.resources
    events, out = stream.receive(
        wire(
            discovery_pb2.DeltaDiscoveryRequest(type_url=A, response_nonce=first.nonce, resource_names_subscribe=["w2"])
        )
    )
    assert [e.kind for e in events] == ["ack"]
    assert [r.name for r in out[0].resources] == ["w2"]


def test_the_node_is_recorded_from_the_first_request() -> None:
    stream = xds_server.Stream(xds_server.Catalog())
    subscribe(
        stream, A, node=xds.node("ztunnel~10.0.0.9~zt.istio-system~istio-system.svc.cluster.local", {"NAME": "zt"})
    )
    assert stream.node_id.startswith("ztunnel~10.0.0.9~") and stream.metadata["NAME"] == "zt"


def test_a_stream_far_behind_the_log_is_compared_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xds_server, "LOG_LIMIT", 3)
    catalog = catalog_with(w0=b"0")
    stream = xds_server.Stream(catalog)
    ack(stream, subscribe(stream, A)[0])
    for i in range(1, 6):
        catalog.put(A, f"w{i}", Entry.of(bytes([i])))
        catalog.commit()
    assert catalog.changed_since(A, 1) is None
    (push,) = stream.push()
    assert sorted(r.name for r in push.resources) == ["w1", "w2", "w3", "w4", "w5"]


# --- the client's and the server's state machines against each other ----------------------------------------------

NAMES = st.sampled_from([f"w{i}" for i in range(6)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from([A, Z]), NAMES, st.binary(max_size=3)),
        st.tuples(st.just("del"), st.sampled_from([A, Z]), NAMES, st.just(b"")),
        st.tuples(st.just("reconnect"), st.just(A), st.just(""), st.just(b"")),
        st.tuples(st.just("reject"), st.just(A), NAMES, st.just(b"")),
    ),
    max_size=25,
)


def exchange(client: xds.ClientState, stream: xds_server.Stream, rejecting: set[str]) -> None:
    """Deliver everything in flight in both directions until the stream is quiet."""
    responses = []
    for request in client.start_stream() if not client.connected else []:
        responses += stream.receive(request.SerializeToString())[1]
    responses += stream.push()
    while responses:
        response = responses.pop(0)
        update = client.receive(response.SerializeToString())
        rejects = [(r.name, "rejected by the test") for r in update.upserts if r.name in rejecting]
        answer = client.answer(update, rejects)
        responses += stream.receive(answer.request.SerializeToString())[1]


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_client_and_server_converge_through_changes_reconnects_and_rejects(
    ops: list[tuple[str, str, str, bytes]],
) -> None:
    catalog = xds_server.Catalog()
    client = xds.ClientState(xds.node("ztunnel~1.1.1.1~p.ns~ns.svc.cluster.local", {}))
    stream = xds_server.Stream(catalog)
    rejecting: set[str] = set()
    exchange(client, stream, rejecting)
    for op, type_url, name, payload in ops:
        if op == "put":
            catalog.put(type_url, name, Entry.of(payload))
        elif op == "del":
            catalog.put(type_url, name, None)
        elif op == "reconnect":
            client.end_stream(xds.Termination.RECONNECT)
            stream = xds_server.Stream(catalog)
        else:
            rejecting.add(name)
        catalog.commit()
        exchange(client, stream, rejecting)
    assert client.ready
    for type_url in (A, Z):
        want = {n: e.version for n, e in catalog.resources[type_url].items()}
        got = client.versions[type_url]
        # everything the server has is held at its version, except a rejected one, which may lag behind
        assert {n: v for n, v in got.items() if n not in rejecting} == {
            n: v for n, v in want.items() if n not in rejecting
        }
        assert set(got) <= set(want)
    if not rejecting:
        assert stream.current()

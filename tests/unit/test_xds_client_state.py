"""The delta XDS client's bookkeeping (protocols/xds.py), with serialized responses in and requests out."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from pyztunnel.protocols import xds
from pyztunnel.protocols._pb import discovery_pb2

A = xds.ADDRESS_TYPE
Z = xds.AUTHORIZATION_TYPE


def response(
    type_url: str,
    nonce: str,
    resources: dict[str, tuple[str, bytes]] | None = None,
    removed: tuple[str, ...] = (),
    any_type: str | None = None,
) -> bytes:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url,
        nonce=nonce,
        system_version_info="7",
        removed_resources=removed,
        resources=[
            discovery_pb2.Resource(
                name=name, version=version, resource=any_pb2.Any(type_url=any_type or type_url, value=payload)
            )
            for name, (version, payload) in (resources or {}).items()
        ],
    ).SerializeToString()


def new_state() -> xds.ClientState:
    return xds.ClientState(xds.node("ztunnel~10.0.0.1~zt-1.istio-system~istio-system.svc.cluster.local", {"A": "b"}))


def test_a_stream_starts_with_one_wildcard_request_per_type_carrying_the_node() -> None:
    state = new_state()
    first = state.start_stream()
    assert [r.type_url for r in first] == [A, Z]
    for request in first:
        assert request.node.id.startswith("ztunnel~10.0.0.1~")
        assert request.node.metadata["A"] == "b"
        assert not request.resource_names_subscribe and not request.resource_names_unsubscribe
        assert not request.initial_resource_versions and not request.response_nonce


def test_a_response_is_acked_with_its_nonce_and_its_versions_kept() -> None:
    state = new_state()
    state.start_stream()
    update = state.receive(response(A, "n1", {"w1": ("v1", b"\x01"), "w2": ("v2", b"\x02\x03")}))
    assert [r.name for r in update.upserts] == ["w1", "w2"]
    assert update.payload_bytes == 3 and update.system_version == "7"
    answer = state.answer(update)
    wire = answer.request.SerializeToString()
    ack = discovery_pb2.DeltaDiscoveryRequest.FromString(wire)
    assert ack.type_url == A and ack.response_nonce == "n1" and not ack.HasField("error_detail")
    assert not ack.HasField("node")  # only the first request of a stream carries it
    assert state.versions[A] == {"w1": "v1", "w2": "v2"}
    assert state.stats.messages == {A: 1} and state.stats.message_bytes == {A: 3}


def test_removed_resources_are_dropped() -> None:
    state = new_state()
    state.start_stream()
    state.answer(state.receive(response(A, "n1", {"w1": ("v1", b"x"), "w2": ("v1", b"y")})))
    update = state.receive(response(A, "n2", removed=("w1", "never-had")))
    assert update.removes == ("w1", "never-had")
    state.answer(update)
    assert state.versions[A] == {"w2": "v1"}


def test_a_nack_names_each_rejected_resource_and_keeps_its_last_good_version() -> None:
    state = new_state()
    state.start_stream()
    state.answer(state.receive(response(A, "n1", {"w1": ("v1", b"x")})))
    update = state.receive(response(A, "n2", {"w1": ("v2", b"bad"), "w3": ("v1", b"ok")}))
    answer = state.answer(update, [("w1", "invalid address")])
    nack = discovery_pb2.DeltaDiscoveryRequest.FromString(answer.request.SerializeToString())
    assert not answer.acked and nack.response_nonce == "n2"
    assert nack.error_detail.message == "w1: invalid address"
    assert state.versions[A] == {"w1": "v1", "w3": "v1"}  # w1 stays at its last good version, w3 applied
    assert state.last_nack[A] == "w1: invalid address"
    assert state.stats.nacks == 1


@pytest.mark.parametrize(
    ("resources", "any_type", "reason"),
    [
        ({"w1": ("v1", b"x")}, Z, "resource of type"),
    ],
)
def test_a_resource_of_another_type_is_rejected(
    resources: dict[str, tuple[str, bytes]], any_type: str, reason: str
) -> None:
    state = new_state()
    state.start_stream()
    update = state.receive(response(A, "n1", resources, any_type=any_type))
    assert not update.upserts and update.rejected[0][0] == "w1" and reason in update.rejected[0][1]
    assert not state.answer(update).acked


def test_a_resource_without_payload_and_a_duplicate_name_are_rejected() -> None:
    state = new_state()
    state.start_stream()
    raw = discovery_pb2.DeltaDiscoveryResponse(
        type_url=A,
        nonce="n1",
        resources=[
            discovery_pb2.Resource(name="empty", version="1"),
            discovery_pb2.Resource(name="w", version="1", resource=any_pb2.Any(type_url=A, value=b"a")),
            discovery_pb2.Resource(name="w", version="2", resource=any_pb2.Any(type_url=A, value=b"b")),
        ],
    ).SerializeToString()
    update = state.receive(raw)
    assert [r.version for r in update.upserts] == ["1"]
    assert dict(update.rejected) == {
        "empty": "XDS payload without resource",
        "w": "duplicate resource name in one response",
    }
    answer = state.answer(update)
    assert answer.error == "empty: XDS payload without resource; w: duplicate resource name in one response"
    assert state.versions[A] == {}  # the name had a bad twin: nothing of it is taken


def test_an_unknown_type_is_nacked() -> None:
    state = new_state()
    state.start_stream()
    update = state.receive(response("type.googleapis.com/other.Thing", "n1", {"x": ("1", b"")}))
    answer = state.answer(update)
    assert not answer.acked and "unknown type" in answer.error


def test_garbage_and_out_of_turn_responses_are_protocol_errors() -> None:
    state = new_state()
    state.start_stream()
    with pytest.raises(xds.ProtocolError, match="undecodable"):
        state.receive(b"\xff\xff\xff\xff")
    update = state.receive(response(A, "n1"))
    with pytest.raises(xds.ProtocolError, match="before the previous one was answered"):
        state.receive(response(A, "n2"))
    state.answer(update)
    with pytest.raises(xds.ProtocolError):
        state.answer(update)


def test_ready_after_the_first_ack_of_each_type_and_only_once() -> None:
    state = new_state()
    state.start_stream()
    first = state.receive(response(A, "n1", {"w": ("1", b"x")}))
    assert not state.answer(first, [("w", "bad")]).became_ready  # a NACK does not count (ztunnel)
    assert not state.answer(state.receive(response(A, "n2"))).became_ready
    assert state.expecting == {Z}
    assert state.answer(state.receive(response(Z, "n3"))).became_ready
    assert state.ready
    assert not state.answer(state.receive(response(Z, "n4"))).became_ready


def test_a_reconnect_sends_what_we_hold_as_initial_resource_versions() -> None:
    state = new_state()
    state.start_stream()
    state.answer(state.receive(response(A, "n1", {"w1": ("v1", b"x"), "s1": ("v9", b"y")})))
    state.answer(state.receive(response(Z, "n2", {"ns/p": ("v3", b"z")})))
    assert state.end_stream(xds.Termination.RECONNECT) == xds.INITIAL_BACKOFF
    again = state.start_stream()
    wire = [discovery_pb2.DeltaDiscoveryRequest.FromString(r.SerializeToString()) for r in again]
    assert dict(wire[0].initial_resource_versions) == {"w1": "v1", "s1": "v9"}
    assert dict(wire[1].initial_resource_versions) == {"ns/p": "v3"}
    assert wire[0].node.id == state.node.id
    assert state.stats.terminations == {"Reconnect": 1}


@pytest.mark.parametrize(
    ("code", "details", "got_response", "reason"),
    [
        (None, "", True, xds.Termination.COMPLETE),
        ("UNAVAILABLE", "failed to connect to all addresses", False, xds.Termination.CONNECTION_ERROR),
        ("UNAVAILABLE", "Socket closed", True, xds.Termination.ERROR),
        ("UNAVAILABLE", "transport is closing", True, xds.Termination.RECONNECT),
        ("UNAVAILABLE", "received prior goaway: code: NO_ERROR", False, xds.Termination.RECONNECT),
        ("CANCELLED", "", True, xds.Termination.RECONNECT),
        ("UNKNOWN", "", False, xds.Termination.RECONNECT),
        ("DEADLINE_EXCEEDED", "", True, xds.Termination.RECONNECT),
        ("UNAUTHENTICATED", "bad token", False, xds.Termination.ERROR),
        ("RESOURCE_EXHAUSTED", "message larger than max", True, xds.Termination.ERROR),
        ("LOCAL", "undecodable response", True, xds.Termination.ERROR),
    ],
)
def test_stream_ends_are_classified_as_ztunnel_does(
    code: str | None, details: str, got_response: bool, reason: xds.Termination
) -> None:
    assert xds.classify(code, details, got_response=got_response) is reason


def test_backoff_doubles_from_10ms_to_15s_and_resets_after_progress() -> None:
    backoff = xds.Backoff()
    delays = [backoff.next_delay(xds.Termination.CONNECTION_ERROR, False) for _ in range(14)]
    assert delays[:4] == [0.02, 0.04, 0.08, 0.16]
    assert delays[-1] == 15.0 and max(delays) == 15.0
    assert backoff.next_delay(xds.Termination.ERROR, True) == 0.02  # a stream that achieved something resets it
    assert backoff.next_delay(xds.Termination.COMPLETE, True) == 0.0  # a clean end after progress: at once
    assert backoff.next_delay(xds.Termination.COMPLETE, False) == 0.02  # a server that hangs up at once: backoff
    assert backoff.next_delay(xds.Termination.RECONNECT, False) == 0.01


@given(st.floats(min_value=0.0, max_value=0.5), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_jitter_stays_within_its_fraction(jitter: float, draws: list[float]) -> None:
    it = iter(draws * 2)
    backoff = xds.Backoff(jitter=jitter, rand=lambda: next(it))
    plain = xds.Backoff()
    for _ in draws:
        got = backoff.next_delay(xds.Termination.ERROR, False)
        want = plain.next_delay(xds.Termination.ERROR, False)
        assert want * (1 - jitter) - 1e-12 <= got <= want * (1 + jitter) + 1e-12


def test_the_error_detail_is_bounded() -> None:
    message = xds.error_detail((f"workload-{i}", "invalid address length 3") for i in range(10_000))
    assert len(message) < xds.MAX_ERROR_DETAIL + 100
    assert message.startswith("workload-0: invalid address length 3; workload-1:")
    assert message.endswith("more)")

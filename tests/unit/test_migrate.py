"""Connection migration protocol (lifecycle.migrate): messages as bytes, both state machines, validation."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pyztunnel.lifecycle import migrate, migrate_header
from pyztunnel.lifecycle.handoff import ProtocolError, decode, encode
from pyztunnel.lifecycle.migrate import Giver, Taker
from pyztunnel.lifecycle.migrate_header import ConnFacts, ConnHeader, Ends
from pyztunnel.lifecycle.peerauth import Handshake

NODE_KEY = bytes(range(32))

NS: tuple[int, int] = (3, 4026531840)
OTHER_NS: tuple[int, int] = (3, 4026532000)
DOWN = Ends(("10.244.1.5", 15006), ("10.0.0.9", 40000))
UP = Ends(("10.244.1.5", 51000), ("10.244.1.5", 8080))


def facts(ends: Ends, **over: Any) -> ConnFacts:
    base: dict[str, Any] = {
        "family": socket.AF_INET,
        "type": socket.SOCK_STREAM,
        "accepting": False,
        "tcp_state": migrate_header.TCP_ESTABLISHED,
        "local": ends.local,
        "peer": ends.peer,
        "netns": NS,
    }
    base.update(over)
    return ConnFacts(**base)


def header(ident: int = 1, uid: str = "pod-a", **over: Any) -> ConnHeader:
    base: dict[str, Any] = {
        "id": ident,
        "uid": uid,
        "kind": "inbound-plaintext",
        "down": DOWN,
        "up": UP,
        "elapsed": 12.5,
        "context": {"src_addr": "10.0.0.9:40000", "bytes_recv": 10, "error": None},
    }
    base.update(over)
    return ConnHeader(**base)


def registered_pair(taker_pods: dict[str, tuple[int, int]] | None = None) -> tuple[Giver, Taker]:
    giver, taker = Giver(NODE_KEY), Taker(taker_pods or {"pod-a": NS}, NODE_KEY)
    serves = {"pod-a": NS, "pod-b": NS}
    reply = giver.receive(taker.start(), serves)
    step = taker.receive(reply.send[0], [])
    take = decode(step.send[0])
    assert take.pop("proof")
    assert take == {"type": "take", "pods": [{"uid": u, "netns": list(n)} for u, n in taker.pods.items()]}
    reply = giver.receive(step.send[0], serves)
    assert reply.registered is not None
    assert taker.receive(reply.send[0], []).registered == sorted(reply.registered)
    return giver, taker


def test_registration_names_only_pods_both_sides_have_in_the_same_netns() -> None:
    giver, taker = registered_pair({"pod-a": NS, "pod-b": OTHER_NS, "pod-c": NS})
    assert giver.pods == {"pod-a": NS}  # pod-b: another netns; pod-c: not served here
    assert taker.state == "waiting" and giver.state == "registered"


def test_a_batch_is_held_until_commit_then_resumed() -> None:
    giver, taker = registered_pair()
    msg = giver.batch([header(1), header(2)])
    step = taker.receive(msg, [facts(DOWN), facts(UP), facts(DOWN), facts(UP)])
    assert [(h.id, d, u) for h, d, u in step.hold] == [(1, 0, 1), (2, 2, 3)]
    assert step.commit == [] and step.reject == []  # nothing resumes before the old instance commits
    assert decode(step.send[0]) == {"type": "taken", "batch": 1, "taken": [1, 2], "refused": []}
    decision = giver.answer(step.send[0])
    assert decision.release == [1, 2] and decision.keep == []
    done = taker.receive(decision.send, [])
    assert done.commit == [1, 2] and done.drop == []
    assert taker.receive(giver.done(), []).finished


def test_header_round_trips_with_its_context() -> None:
    giver, taker = registered_pair()
    sent = header(7, kind="outbound-passthrough", elapsed=3600.25)
    step = taker.receive(giver.batch([sent]), [facts(DOWN), facts(UP)])
    assert step.hold[0][0] == sent


@pytest.mark.parametrize(
    ("down", "up", "reason"),
    [
        (facts(DOWN, netns=OTHER_NS), facts(UP), "down: in network namespace"),
        (facts(DOWN), facts(UP, netns=None), "up: network namespace unknown"),
        (facts(DOWN, tcp_state=8), facts(UP), "not an established connection (TCP state 8)"),
        (facts(DOWN, accepting=True), facts(UP), "a listening socket"),
        (facts(DOWN, type=socket.SOCK_DGRAM), facts(UP), "not a stream socket"),
        (facts(DOWN, family=socket.AF_UNIX), facts(UP), "not an inet socket"),
        (facts(DOWN), facts(DOWN), "up: connection"),  # the other leg's socket, not the announced one
        (ConnFacts(error="not a socket (Bad file descriptor)"), facts(UP), "down: not a socket"),
    ],
)
def test_a_wrong_socket_is_refused_and_the_old_instance_keeps_it(down: ConnFacts, up: ConnFacts, reason: str) -> None:
    giver, taker = registered_pair()
    step = taker.receive(giver.batch([header(1), header(2)]), [down, up, facts(DOWN), facts(UP)])
    assert step.reject == [0, 1] and [h.id for h, _, _ in step.hold] == [2]
    assert reason in taker.reasons[1]
    decision = giver.answer(step.send[0])
    assert decision.release == [2] and decision.keep == [1] and reason in decision.refused[1]


def test_a_pod_not_asked_for_is_refused() -> None:
    giver, taker = registered_pair()
    step = taker.receive(giver.batch([header(1, uid="pod-b")]), [facts(DOWN), facts(UP)])
    assert step.reject == [0, 1] and "not asked for" in taker.reasons[1]


def test_fd_count_mismatch_rejects_everything() -> None:
    giver, taker = registered_pair()
    step = taker.receive(giver.batch([header(1)]), [facts(DOWN)])
    assert step.finished and step.reject == [0] and step.hold == []
    assert "1 connections announced, 1 fds received" in taker.reasons[-1]


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "1"},
        {"kind": "hbone"},
        {"elapsed": -1},
        {"elapsed": True},
        {"down": {"local": ["1.2.3.4", 70000], "peer": ["1.2.3.4", 1]}},
        {"context": {"nested": {"a": 1}}},
    ],
)
def test_malformed_headers_are_protocol_errors(bad: dict[str, Any]) -> None:
    _, taker = registered_pair()
    item = {**header(1).to_json(), **bad}
    msg = encode({"type": "connections", "batch": 1, "connections": [item]})
    step = taker.receive(msg, [facts(DOWN), facts(UP)])
    assert step.finished and step.reject == [0, 1]


def test_no_answer_in_time_keeps_the_batch_and_the_taker_drops_it() -> None:
    giver, taker = registered_pair()
    step = taker.receive(giver.batch([header(1)]), [facts(DOWN), facts(UP)])
    decision = giver.timeout()
    assert decision.release == [] and decision.keep == [1]
    assert decode(decision.send) == {"type": "abort", "batch": 1}
    late = taker.receive(decision.send, [])
    assert late.commit == [] and late.drop == [1]
    assert step.hold  # it was held, never resumed


def test_a_taker_that_gave_up_drops_what_it_held() -> None:
    giver, taker = registered_pair()
    taker.receive(giver.batch([header(1), header(2)]), [facts(DOWN), facts(UP)] * 2)
    assert taker.give_up() == [1, 2]


@pytest.mark.parametrize(
    "answer",
    [
        {"type": "taken", "batch": 2, "taken": [1]},  # another batch
        {"type": "adopted", "batch": 1},  # another message
        {"type": "taken", "batch": 1, "taken": "all"},
    ],
)
def test_a_lying_answer_releases_nothing(answer: dict[str, Any]) -> None:
    giver, _ = registered_pair()
    giver.batch([header(1), header(2)])
    decision = giver.answer(encode(answer))
    assert decision.release == [] and decision.keep == [1, 2]
    assert decode(decision.send)["type"] == "abort"


def test_only_offered_ids_are_released() -> None:
    giver, _ = registered_pair()
    giver.batch([header(1)])
    decision = giver.answer(encode({"type": "taken", "batch": 1, "taken": [1, 99, "x"], "refused": []}))
    assert decision.release == [1]


def test_commit_of_ids_not_held_resumes_nothing_extra() -> None:
    giver, taker = registered_pair()
    taker.receive(giver.batch([header(1)]), [facts(DOWN), facts(UP)])
    step = taker.receive(encode({"type": "commit", "batch": 1, "ids": [1, 5]}), [])
    assert step.commit == [1]


def test_versions_and_phases_must_match() -> None:
    giver = Giver(NODE_KEY)
    step = giver.receive(encode({"type": "hello", "version": 1, "phase": "connections"}), {})
    assert step.close and decode(step.send[0])["type"] == "error"
    taker = Taker({"pod-a": NS}, NODE_KEY)
    taker.start()
    # An old instance that only knows the listener handoff answers with its own hello, without the phase.
    step_t = taker.receive(encode({"type": "hello", "version": 2}), [])
    assert step_t.finished and "peer speaks None version 2" in taker.reasons[-1]
    assert migrate.is_connections_hello(decode(migrate.hello(Handshake(NODE_KEY, "new"))))
    assert not migrate.is_connections_hello({"type": "hello", "version": 2})


def test_a_taker_without_the_nodes_key_is_not_registered() -> None:
    giver, impostor = Giver(NODE_KEY), Taker({"pod-a": NS}, bytes(32))
    reply = giver.receive(impostor.start(), {"pod-a": NS})
    assert impostor.receive(reply.send[0], []).finished  # the genuine old one is not believed either (other key)
    forged = Handshake(bytes(32), "new")
    forged.peer_nonce = decode(reply.send[0])["nonce"]
    step = giver.receive(
        encode({"type": "take", "pods": [{"uid": "pod-a", "netns": list(NS)}], **forged.proof_field()}), {"pod-a": NS}
    )
    assert step.close and step.registered is None and giver.pods == {}
    assert "did not prove" in decode(step.send[0])["reason"]


def test_a_registered_taker_answers_a_ping_and_nothing_else_is_a_pong() -> None:
    giver, taker = registered_pair()
    step = taker.receive(giver.ping(), [])
    giver.pong(step.send[0])
    assert taker.state == "waiting" and giver.state == "registered"  # a batch may follow
    with pytest.raises(ProtocolError):
        giver.pong(encode({"type": "taken", "batch": 1, "taken": []}))


def test_at_most_100_connections_per_message() -> None:
    giver, _ = registered_pair()
    with pytest.raises(ValueError):
        giver.batch([header(i) for i in range(101)])


def test_fds_with_a_control_message_are_refused() -> None:
    giver, taker = registered_pair()
    step = taker.receive(giver.done(), [facts(DOWN)])
    assert step.finished and step.reject == [0]


def test_the_access_log_record_travels_whole() -> None:
    from pyztunnel.observe.access import ConnectionRecord
    from pyztunnel.proxy.migrated import record_context, record_from

    record = ConnectionRecord("10.0.0.9:40000", "10.244.1.5:8080", "inbound", start=100.0)
    record.dst_workload, record.dst_namespace, record.src_identity = "gateway-1", "istio-system", "spiffe://x/y"
    context = record_context(record, bytes_recv=1234, bytes_sent=5678)
    sent = header(1, context=context, elapsed=42.5)
    # Through the wire format and the taker's parser, as the new instance gets it.
    giver, taker = registered_pair()
    received = taker.receive(giver.batch([sent]), [facts(DOWN), facts(UP)]).hold[0][0]
    rebuilt = record_from(received, now=1000.0)
    assert rebuilt.start == 1000.0 - 42.5 and rebuilt.direction == "inbound"
    assert (rebuilt.bytes_recv, rebuilt.bytes_sent) == (1234, 5678)
    for name in ("src_addr", "dst_addr", "dst_workload", "dst_namespace", "src_identity", "error", "response_flags"):
        assert getattr(rebuilt, name) == getattr(record, name)


def test_a_record_with_wrong_types_keeps_its_defaults() -> None:
    from pyztunnel.proxy.migrated import record_from

    rebuilt = record_from(header(1, kind="outbound-passthrough", context={"bytes_sent": "many", "mtls": 1}), now=5.0)
    assert rebuilt.bytes_sent == 0 and rebuilt.mtls is False and rebuilt.direction == "outbound"


def test_a_batch_whose_old_instance_vanished_undecided_is_the_takers() -> None:
    giver, taker = registered_pair()
    assert taker.orphaned() == []  # nothing held: nothing to take
    giver, taker = registered_pair()
    taker.receive(giver.batch([header(1), header(2)]), [facts(DOWN), facts(UP), facts(DOWN), facts(UP, netns=OTHER_NS)])
    assert taker.orphaned() == [1]  # what it held (2 was refused) ...
    assert taker.give_up() == [] and taker.state == "finished"  # ... once

"""The handoff protocol and its decisions, with bytes and facts only (no sockets)."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyztunnel.lifecycle import handoff
from pyztunnel.lifecycle.handoff import (
    ClientState,
    HandoffClient,
    HandoffServer,
    ListenerKey,
    Owned,
    PodRequest,
    SocketFacts,
    validate,
)
from pyztunnel.lifecycle.peerauth import Handshake

NODE_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

NS_A = (4, 4026531840)
NS_B = (4, 4026532999)


def listener(port: int, netns: tuple[int, int] = NS_A) -> SocketFacts:
    return SocketFacts(family=socket.AF_INET, type=socket.SOCK_STREAM, accepting=True, port=port, netns=netns)


KEY = ListenerKey("pod-a", 15001)


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (listener(15001), None),
        (SocketFacts(family=socket.AF_INET6, type=socket.SOCK_STREAM, accepting=True, port=15001, netns=NS_A), None),
        (SocketFacts(error="not a socket (Socket operation on non-socket)"), "not a socket"),
        (SocketFacts(family=socket.AF_UNIX, type=socket.SOCK_STREAM, accepting=True, netns=NS_A), "not an inet socket"),
        (SocketFacts(family=socket.AF_INET, type=socket.SOCK_DGRAM, port=15001, netns=NS_A), "not a stream socket"),
        (SocketFacts(family=socket.AF_INET, type=socket.SOCK_STREAM, port=15001, netns=NS_A), "not a listening socket"),
        (listener(15006), "bound to port 15006, not 15001"),
        (listener(15001, NS_B), "in network namespace 4026532999, not the pod's 4026531840"),
        (SocketFacts(family=socket.AF_INET, type=socket.SOCK_STREAM, accepting=True, port=15001), "namespace unknown"),
    ],
)
def test_validate(facts: SocketFacts, reason: str | None) -> None:
    got = validate(facts, KEY, NS_A)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def client_for(pods: list[PodRequest], key: bytes = NODE_KEY) -> HandoffClient:
    return HandoffClient(pods, key)


def server_for(inv: dict[str, Owned], key: bytes = NODE_KEY, **kw: int) -> HandoffServer:
    return HandoffServer(lambda: inv, key, **kw)


def old_hello(client: HandoffClient, key: bytes = NODE_KEY) -> bytes:
    """What a genuine old instance answers to this client's hello."""
    old = Handshake(key, "old")
    old.peer_hello({"nonce": client.auth.nonce})
    return handoff.hello(old)


def new_hello() -> tuple[Handshake, bytes]:
    """A new instance's hello, and its half of the handshake (for its proof later)."""
    new = Handshake(NODE_KEY, "new")
    return new, handoff.hello(new)


def inventory(pods: int, netns: tuple[int, int] = NS_A) -> dict[str, Owned]:
    return {f"pod-{i}": Owned(netns, handoff.PROXY_PORTS) for i in range(pods)}


def talk(client: HandoffClient, server: HandoffServer, facts_of: dict[ListenerKey, SocketFacts]) -> list[int]:
    """Run both machines against each other; returns the number of fds in each listeners message."""
    batches = []
    pending = [client.start()]
    while pending:
        out = server.receive(pending.pop(0))
        for header, keys in out.send:
            if keys:
                batches.append(len(keys))
            step = client.receive(header, [facts_of[k] for k in keys])
            pending.extend(step.send)
    return batches


def test_full_exchange_in_batches_of_at_most_200() -> None:
    inv = inventory(150)  # 450 listeners
    server = server_for(inv)
    client = client_for([PodRequest(uid, NS_A) for uid in inv])
    facts = {ListenerKey(uid, p): listener(p) for uid in inv for p in handoff.PROXY_PORTS}
    assert talk(client, server, facts) == [200, 200, 50]
    assert client.state is ClientState.FINISHED
    assert len(client.adopted) == 450 and client.to_bind() == {}
    released = server.receive(client.adopted_message(client.adopted))
    assert len(released.released) == 450 and not released.close  # the connection stays: it is the lease
    assert json.loads(released.send[0][0]) == {"type": "released"}
    assert len(server.leased) == 450


def test_the_lease_gives_the_listeners_back_once_when_the_connection_ends() -> None:
    inv = inventory(2)
    server = server_for(inv)
    client = client_for([PodRequest("pod-0", NS_A)])
    talk(client, server, {ListenerKey(uid, p): listener(p) for uid in inv for p in handoff.PROXY_PORTS})
    server.receive(client.adopted_message(client.adopted))
    assert server.gone() == sorted(ListenerKey("pod-0", p) for p in handoff.PROXY_PORTS)
    assert server.gone() == [] and server.leased == []


def test_a_message_on_the_lease_breaks_it_and_gives_the_listeners_back() -> None:
    inv = inventory(1)
    server = server_for(inv)
    client = client_for([PodRequest("pod-0", NS_A)])
    talk(client, server, {ListenerKey("pod-0", p): listener(p) for p in handoff.PROXY_PORTS})
    server.receive(client.adopted_message(client.adopted))
    out = server.receive(handoff.encode({"type": "adopted", "listeners": []}))
    assert out.close and len(out.reclaim) == 3 and out.released == []
    assert server.gone() == []


def test_nothing_is_released_before_adopted_so_nothing_is_reclaimed() -> None:
    inv = inventory(1)
    server = server_for(inv)
    client = client_for([PodRequest("pod-0", NS_A)])
    talk(client, server, {ListenerKey("pod-0", p): listener(p) for p in handoff.PROXY_PORTS})
    assert server.gone() == []  # the taker vanished holding the fds but never said adopted: we never stopped


def test_a_new_instance_without_the_nodes_key_is_offered_nothing() -> None:
    inv = inventory(1)
    server = server_for(inv)
    client = client_for([PodRequest("pod-0", NS_A)], key=OTHER_KEY)
    out = server.receive(client.start())
    step = client.receive(out.send[0][0], [])  # the old one proves itself with the node's key...
    assert step.finished and "did not prove" in client.to_bind()[ListenerKey("pod-0", 15001)]
    impostor = Handshake(OTHER_KEY, "new")  # ... and a new one that answers without it gets an error, no fd
    server = server_for(inv)
    answer = handoff.decode(server.receive(handoff.hello(impostor)).send[0][0])
    impostor.peer_nonce = answer["nonce"]  # it does not care whether the old one is genuine
    request = {"type": "request", "pods": [{"uid": "pod-0", "netns": list(NS_A)}], **impostor.proof_field()}
    out = server.receive(handoff.encode(request))
    assert out.close and [keys for _, keys in out.send] == [[]]
    assert json.loads(out.send[0][0]) == {
        "type": "error",
        "reason": "the new instance did not prove it holds this node's handoff key",
    }


def test_a_proof_cannot_be_replayed_into_another_exchange() -> None:
    inv = inventory(1)
    first, second = server_for(inv), server_for(inv)
    new, hello = new_hello()
    new.peer_hello(handoff.decode(first.receive(hello).send[0][0]))
    request = handoff.encode({"type": "request", "pods": [], **new.proof_field()})
    assert not first.receive(request).close  # valid where it was made
    second.receive(hello)  # the same hello again: the second server picks another nonce
    assert second.receive(request).close


def test_a_server_without_the_nodes_key_is_not_believed() -> None:
    client = client_for([PodRequest("pod-a", NS_A)])
    step = client.receive(old_hello(client, key=OTHER_KEY), [])
    assert step.finished and step.send == []
    assert "old instance did not prove" in client.to_bind()[KEY]
    client = client_for([PodRequest("pod-a", NS_A)])
    step = client.receive(handoff.encode({"type": "hello", "version": handoff.VERSION}), [])
    assert step.finished and "without a valid nonce" in client.to_bind()[KEY]


def test_unknown_pods_and_other_netns_are_not_offered() -> None:
    inv = inventory(2)
    server = server_for(inv)
    client = client_for([PodRequest("pod-0", NS_A), PodRequest("pod-1", NS_B), PodRequest("pod-9", NS_A)])
    facts = {ListenerKey(uid, p): listener(p) for uid in inv for p in handoff.PROXY_PORTS}
    talk(client, server, facts)
    to_bind = client.to_bind()
    assert {k.uid for k in client.adopted} == {"pod-0"}
    assert to_bind[ListenerKey("pod-1", 15008)] == "not offered: network namespace differs"
    assert to_bind[ListenerKey("pod-9", 15001)] == "not offered: unknown pod"
    assert len(to_bind) == 6


def test_lying_server_fds_are_rejected_one_by_one() -> None:
    client = client_for([PodRequest("pod-a", NS_A)])
    client.receive(old_hello(client), [])
    header = handoff.encode(
        {
            "type": "listeners",
            "listeners": [
                {"uid": "pod-a", "port": 15001},  # fine
                {"uid": "pod-a", "port": 15006},  # a listener of another pod's namespace
                {"uid": "pod-a", "port": 15008},  # a UDP socket
                {"uid": "pod-z", "port": 15001},  # a pod we never asked for
                {"uid": "pod-a", "port": 15001},  # the same again
            ],
        }
    )
    udp = SocketFacts(family=socket.AF_INET, type=socket.SOCK_DGRAM, port=15008, netns=NS_A)
    step = client.receive(header, [listener(15001), listener(15006, NS_B), udp, listener(15001), listener(15001)])
    assert step.keep == [(0, ListenerKey("pod-a", 15001))]
    assert [i for i, _ in step.reject] == [1, 2, 3, 4]
    assert "was not asked for" in step.reject[2][1] and step.reject[3][1] == "duplicate listener"
    client.receive(handoff.encode({"type": "done", "missing": []}), [])
    assert set(client.to_bind()) == {ListenerKey("pod-a", 15006), ListenerKey("pod-a", 15008)}
    assert "network namespace" in client.to_bind()[ListenerKey("pod-a", 15006)]


@pytest.mark.parametrize(
    ("msg", "nfds", "why"),
    [
        ({"type": "listeners", "listeners": [{"uid": "pod-a", "port": 15001}] * 3}, 2, "3 listeners announced, 2 fds"),
        ({"type": "listeners", "listeners": [{"uid": "pod-a", "port": "x"}]}, 1, "bad listener entry"),
        ({"type": "hello", "version": 2}, 0, "unexpected hello"),
        ({"type": "error", "reason": "busy"}, 0, "peer refused: busy"),
        ({"type": "done", "missing": []}, 1, "fds with done"),
    ],
)
def test_protocol_errors_reject_everything_in_the_message_and_fall_back(
    msg: dict[str, object], nfds: int, why: str
) -> None:
    client = client_for([PodRequest("pod-a", NS_A)])
    client.receive(old_hello(client), [])
    step = client.receive(handoff.encode(msg), [listener(15001)] * nfds)
    assert step.finished and step.keep == [] and len(step.reject) == nfds
    assert client.state is ClientState.FINISHED
    assert all(why in reason for reason in client.to_bind().values()) and len(client.to_bind()) == 3


def test_not_json_is_a_protocol_error() -> None:
    client = client_for([PodRequest("pod-a", NS_A)])
    step = client.receive(b"\xff\x00", [])
    assert step.finished and "not a JSON message" in client.to_bind()[KEY]


def test_version_mismatch_both_ways() -> None:
    client = client_for([PodRequest("pod-a", NS_A)])
    client.receive(handoff.encode({"type": "hello", "version": 99}), [])
    assert "version 99" in client.to_bind()[KEY]
    server = server_for(inventory(1))
    out = server.receive(handoff.encode({"type": "hello", "version": 1}))  # version 1 had no proof: refused
    assert out.close and json.loads(out.send[0][0])["type"] == "error"


def test_peer_gone_halfway_keeps_what_was_adopted() -> None:
    client = client_for([PodRequest("pod-a", NS_A), PodRequest("pod-b", NS_A)])
    client.receive(old_hello(client), [])
    header = handoff.encode(
        {"type": "listeners", "listeners": [{"uid": "pod-a", "port": p} for p in handoff.PROXY_PORTS]}
    )
    client.receive(header, [listener(p) for p in handoff.PROXY_PORTS])
    client.fail("handoff peer went away: closed")
    assert {k.uid for k in client.adopted} == {"pod-a"}
    assert set(client.to_bind().values()) == {"handoff peer went away: closed"}
    assert {k.uid for k in client.to_bind()} == {"pod-b"}


def test_server_releases_only_what_it_offered_and_rejects_out_of_order() -> None:
    inv = inventory(1)
    server = server_for(inv)
    assert json.loads(server.receive(handoff.encode({"type": "request", "pods": []})).send[0][0])["type"] == "error"
    server = server_for(inv)
    new, hello = new_hello()
    new.peer_hello(handoff.decode(server.receive(hello).send[0][0]))
    pods = [{"uid": "pod-0", "netns": list(NS_A), "ports": [15001]}]
    server.receive(handoff.encode({"type": "request", "pods": pods, **new.proof_field()}))
    out = server.receive(
        handoff.encode(
            {"type": "adopted", "listeners": [{"uid": "pod-0", "port": 15001}, {"uid": "pod-0", "port": 15006}]}
        )
    )
    assert out.released == [ListenerKey("pod-0", 15001)]


def test_batch_size_is_bounded() -> None:
    with pytest.raises(ValueError):
        server_for({}, batch=254)


# Whatever a peer sends, the client's bookkeeping holds --------------------------------------------------------------

ENTRY = st.fixed_dictionaries(
    {"uid": st.sampled_from(["pod-a", "pod-b", "pod-z", ""]), "port": st.sampled_from([15001, 15006, 15008, 1, 0])}
)
MESSAGE = st.one_of(
    st.just({"type": "hello", "version": 2}),
    st.fixed_dictionaries({"type": st.just("hello"), "version": st.integers(-1, 3)}),
    st.fixed_dictionaries({"type": st.just("listeners"), "listeners": st.lists(ENTRY, max_size=6)}),
    st.fixed_dictionaries({"type": st.just("listeners"), "listeners": st.one_of(st.none(), st.integers(), st.text())}),
    st.fixed_dictionaries(
        {"type": st.just("done"), "missing": st.lists(st.fixed_dictionaries({"uid": st.text(max_size=5)}))}
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["error", "released", "adopted", "x"])}),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
FACTS = st.one_of(
    st.builds(listener, st.sampled_from([15001, 15006, 15008])),
    st.builds(lambda p: listener(p, NS_B), st.sampled_from([15001, 15006])),
    st.just(SocketFacts(error="not a socket")),
    st.just(SocketFacts(family=socket.AF_INET, type=socket.SOCK_DGRAM, port=15001, netns=NS_A)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(MESSAGE.map(handoff.encode), st.binary(max_size=8)), st.lists(FACTS, max_size=6)),
        max_size=6,
    )
)
def test_any_peer_leaves_consistent_decisions(script: list[tuple[bytes, list[SocketFacts]]]) -> None:
    client = client_for([PodRequest("pod-a", NS_A), PodRequest("pod-b", NS_A, (15001,))])
    wanted = set(client.wanted())
    script = [(old_hello(client), []), *script]  # a genuine hello first, so that the rest reaches the listeners
    for data, facts in script:
        step = client.receive(data, facts)
        decided = sorted([i for i, _ in step.keep] + [i for i, _ in step.reject])
        assert decided == list(range(len(facts)))  # every fd kept or closed, exactly once
        assert all(key in wanted for _, key in step.keep)
        if client.state is ClientState.FINISHED:
            break
    client.fail("peer went away")
    to_bind = client.to_bind()
    assert client.adopted <= wanted
    assert set(to_bind) == wanted - client.adopted
    assert all(reason for reason in to_bind.values())

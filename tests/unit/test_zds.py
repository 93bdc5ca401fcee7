"""ZDS codec and state machines, with bytes (reference/ztunnel.md §2.2–2.3)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyztunnel.protocols import zds
from pyztunnel.protocols._pb import zds_pb2

INFO = zds.WorkloadInfo("httpbin-1", "default", "httpbin")
NS1 = (1, 100)
NS2 = (1, 200)


# ---------------------------------------------------------------------------------------------------------- codec


def test_hello_bytes_are_the_protobuf_wire_format() -> None:
    assert zds.encode_hello() == b"\x08\x01"  # field 1 varint V1
    assert zds.decode_hello(b"\x08\x01") == zds.Hello(1)


def test_ack_bytes_keep_an_empty_ack_present() -> None:
    assert zds.encode_ack() == b"\x0a\x00"  # field 1 (ack), length 0: the payload is set even when empty
    assert zds.decode_ack(b"\x0a\x00") == zds.Ack("")
    nack = zds.encode_ack(zds.Ack("failure to start proxy : boom"))
    assert zds.decode_ack(nack) == zds.Ack("failure to start proxy : boom")
    assert not zds.decode_ack(nack).ok


def test_snapshot_sent_and_del_field_numbers() -> None:
    assert zds.encode_request(zds.SnapshotSent()) == b"\x1a\x00"  # WorkloadRequest.snapshot_sent = 3
    # WorkloadRequest.del = 2, DelWorkload.uid = 2 (sic)
    assert zds.encode_request(zds.DelWorkload("u")) == b"\x12\x03\x12\x01u"
    assert zds.encode_request(zds.KeepWorkload("u")) == b"\x2a\x03\x0a\x01u"  # keep = 5, uid = 1


@pytest.mark.parametrize(
    ("request_", "fds"),
    [
        (zds.AddWorkload("uid-1", INFO), 1),
        (zds.KeepWorkload("uid-2"), 0),
        (zds.DelWorkload("uid-3"), 0),
        (zds.SnapshotSent(), 0),
    ],
)
def test_every_request_round_trips(request_: zds.Request, fds: int) -> None:
    data = zds.encode_request(request_)
    incoming = zds.decode_request(data, fd_count=fds)
    assert incoming.message == request_
    assert incoming.uses_fd is isinstance(request_, zds.AddWorkload)


def test_add_decodes_with_generated_message() -> None:
    msg = zds_pb2.WorkloadRequest()
    msg.add.uid = "abc"
    msg.add.workload_info.name = "n"
    msg.add.workload_info.namespace = "ns"
    msg.add.workload_info.service_account = "sa"
    assert zds.encode_request(zds.AddWorkload("abc", zds.WorkloadInfo("n", "ns", "sa"))) == msg.SerializeToString()


def test_add_without_workload_info_decodes_with_info_none() -> None:
    data = zds.encode_request(zds.AddWorkload("u", None))
    assert zds.decode_request(data, fd_count=1).message == zds.AddWorkload("u", None)


@pytest.mark.parametrize("fd_count", [0, 2, 3])
def test_add_needs_exactly_one_fd(fd_count: int) -> None:
    with pytest.raises(zds.FdMisuse, match="No control message"):
        zds.decode_request(zds.encode_request(zds.AddWorkload("u", INFO)), fd_count=fd_count)


@pytest.mark.parametrize("request_", [zds.KeepWorkload("u"), zds.DelWorkload("u"), zds.SnapshotSent()])
def test_other_requests_with_an_fd_are_errors(request_: zds.Request) -> None:
    with pytest.raises(zds.FdMisuse):
        zds.decode_request(zds.encode_request(request_), fd_count=1)


@pytest.mark.parametrize("request_", [zds.KeepWorkload("u"), zds.DelWorkload("u"), zds.SnapshotSent()])
def test_several_fds_count_as_none(request_: zds.Request) -> None:
    incoming = zds.decode_request(zds.encode_request(request_), fd_count=2)
    assert incoming.message == request_ and not incoming.uses_fd


def test_hello_and_ack_with_an_fd_are_errors() -> None:
    with pytest.raises(zds.FdMisuse):
        zds.decode_hello(zds.encode_hello(), fd_count=1)
    with pytest.raises(zds.FdMisuse):
        zds.decode_ack(zds.encode_ack(), fd_count=1)


@pytest.mark.parametrize("flag", [socket.MSG_TRUNC, socket.MSG_CTRUNC])
def test_truncation_flags_are_errors(flag: int) -> None:
    with pytest.raises(zds.MalformedMessage, match="truncated"):
        zds.decode_request(zds.encode_request(zds.SnapshotSent()), flags=flag)
    with pytest.raises(zds.MalformedMessage, match="truncated"):
        zds.decode_ack(zds.encode_ack(), flags=flag)
    with pytest.raises(zds.MalformedMessage, match="truncated"):
        zds.decode_hello(zds.encode_hello(), flags=flag)


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"])
def test_malformed_bytes(data: bytes) -> None:
    with pytest.raises(zds.MalformedMessage):
        zds.decode_request(data)
    with pytest.raises(zds.MalformedMessage):
        zds.decode_ack(data)


def test_messages_without_payload() -> None:
    with pytest.raises(zds.MalformedMessage, match="without a payload"):
        zds.decode_request(b"\x20\x01")  # only an unknown field 4
    with pytest.raises(zds.MalformedMessage, match="without an Ack"):
        zds.decode_ack(b"\x10\x01")
    with pytest.raises(zds.MalformedMessage, match="without a version"):
        zds.decode_hello(b"\x08\x00")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), fds=st.integers(0, 3), flags=st.sampled_from([0, socket.MSG_TRUNC]))
def test_decoders_raise_only_zds_errors(data: bytes, fds: int, flags: int) -> None:
    for decode in (zds.decode_request, zds.decode_ack, zds.decode_hello):
        try:
            decode(data, fds, flags)
        except zds.ZdsError:
            pass


@settings(max_examples=100, deadline=None)
@given(uid=st.text(max_size=40), name=st.text(max_size=20), ns=st.text(max_size=20), sa=st.text(max_size=20))
def test_add_round_trips_any_text(uid: str, name: str, ns: str, sa: str) -> None:
    request = zds.AddWorkload(uid, zds.WorkloadInfo(name, ns, sa))
    assert zds.decode_request(zds.encode_request(request), fd_count=1).message == request


# ------------------------------------------------------------------------------------------------- server machine


def phase(conn: zds.ServerConnection) -> zds.ServerPhase:
    return conn.phase  # through a call, so mypy does not narrow the attribute between steps


def snapshot_received(client: zds.ClientState) -> bool:
    return client.snapshot_received


def acked() -> bytes:
    return zds.encode_ack()


def test_server_sends_snapshot_one_at_a_time_then_snapshot_sent() -> None:
    add, keep = zds.AddWorkload("a", INFO), zds.KeepWorkload("k")
    conn = zds.ServerConnection([add, keep])
    assert phase(conn) is zds.ServerPhase.AWAIT_HELLO
    assert conn.receive_hello(zds.encode_hello()) == [zds.Send(add)]
    assert phase(conn) is zds.ServerPhase.SNAPSHOT
    # A request enqueued mid-snapshot waits behind it.
    assert conn.enqueue(zds.DelWorkload("x"), token="t") == []
    assert conn.receive(acked()) == [zds.Completed(add, zds.Ack()), zds.Send(keep)]
    assert conn.receive(acked()) == [zds.Completed(keep, zds.Ack()), zds.Send(zds.SnapshotSent())]
    assert conn.receive(acked()) == [
        zds.Completed(zds.SnapshotSent(), zds.Ack()),
        zds.SnapshotDone(),
        zds.Send(zds.DelWorkload("x")),
    ]
    assert phase(conn) is zds.ServerPhase.READY
    assert conn.receive(zds.encode_ack(zds.Ack("nope"))) == [zds.Completed(zds.DelWorkload("x"), zds.Ack("nope"), "t")]
    assert not conn.busy


def test_server_empty_snapshot() -> None:
    conn = zds.ServerConnection([])
    assert conn.receive_hello(zds.encode_hello()) == [zds.Send(zds.SnapshotSent())]


def test_server_nack_in_snapshot_is_logged_not_fatal() -> None:
    add = zds.AddWorkload("a", INFO)
    conn = zds.ServerConnection([add])
    conn.receive_hello(zds.encode_hello())
    actions = conn.receive(zds.encode_ack(zds.Ack("failure to start proxy : x")))
    assert actions == [zds.Completed(add, zds.Ack("failure to start proxy : x")), zds.Send(zds.SnapshotSent())]


def test_server_steady_state_queue_is_sequential() -> None:
    conn = zds.ServerConnection([])
    conn.receive_hello(zds.encode_hello())
    conn.receive(acked())
    a, b = zds.AddWorkload("a", INFO), zds.AddWorkload("b", INFO)
    assert conn.enqueue(a, token=1) == [zds.Send(a)]
    assert conn.enqueue(b, token=2) == []
    assert conn.in_flight == a
    assert conn.receive(acked()) == [zds.Completed(a, zds.Ack(), 1), zds.Send(b)]


@pytest.mark.parametrize(
    ("data", "fds", "flags", "reason"),
    [
        (b"\xff\xff", 0, 0, "not a WorkloadResponse"),
        (zds.encode_ack(), 1, 0, "file descriptor"),
        (zds.encode_ack(), 0, socket.MSG_TRUNC, "truncated"),
    ],
)
def test_server_drops_a_misbehaving_client(data: bytes, fds: int, flags: int, reason: str) -> None:
    conn = zds.ServerConnection([])
    conn.receive_hello(zds.encode_hello())
    conn.receive(acked())
    conn.enqueue(zds.AddWorkload("a", INFO), token="tok")
    conn.enqueue(zds.DelWorkload("b"), token="tok2")
    actions = conn.receive(data, fds, flags)
    assert isinstance(actions[0], zds.Close) and reason in actions[0].reason
    # Every waiter learns the connection is gone.
    assert [a.token for a in actions[1:] if isinstance(a, zds.Completed)] == ["tok", "tok2"]
    assert phase(conn) is zds.ServerPhase.CLOSED
    assert conn.receive(acked()) == []
    assert conn.enqueue(zds.DelWorkload("c"), token="t3") == [
        zds.Completed(zds.DelWorkload("c"), zds.Ack("connection closed"), "t3")
    ]


def test_server_bad_hello_and_timeouts() -> None:
    conn = zds.ServerConnection([])
    [close] = conn.receive_hello(b"\xff")
    assert isinstance(close, zds.Close) and "bad hello" in close.reason
    conn = zds.ServerConnection([])
    [close] = conn.timeout()
    assert isinstance(close, zds.Close) and "ZdsHello" in close.reason
    conn = zds.ServerConnection([zds.KeepWorkload("k")])
    conn.receive_hello(zds.encode_hello())
    [close] = conn.timeout()
    assert isinstance(close, zds.Close) and "during the snapshot" in close.reason


def test_server_ack_when_nothing_in_flight_is_an_error() -> None:
    conn = zds.ServerConnection([])
    conn.receive_hello(zds.encode_hello())
    conn.receive(acked())
    [close] = conn.receive(acked())
    assert isinstance(close, zds.Close)
    conn2 = zds.ServerConnection([])
    conn2.receive_hello(zds.encode_hello())
    conn2.receive(acked())
    assert conn2.timeout() == []  # nothing in flight: no deadline to miss
    [close] = conn2.unsolicited()
    assert isinstance(close, zds.Close)


def test_server_eof_mid_snapshot() -> None:
    conn = zds.ServerConnection([zds.KeepWorkload("k")])
    conn.receive_hello(zds.encode_hello())
    [close] = conn.closed("EOF")
    assert close == zds.Close("EOF (during the snapshot)")


# ------------------------------------------------------------------------------------------------- client machine


def test_client_hello_first_and_requests_before_are_errors() -> None:
    client = zds.ClientState()
    with pytest.raises(zds.ProtocolError):
        client.handle(zds.SnapshotSent())
    assert client.connect() == b"\x08\x01"


def test_client_snapshot_and_reconcile() -> None:
    client = zds.ClientState()
    client.connect()
    assert client.handle(zds.AddWorkload("a", INFO), NS1) == zds.StartWorkload("a", INFO)
    assert client.handle(zds.AddWorkload("b", INFO), NS2) == zds.StartWorkload("b", INFO)
    assert client.handle(zds.SnapshotSent()) == zds.Reconcile(())
    assert client.snapshot_received is True
    # Reconnect: running proxies survive; the new snapshot only keeps "b" (without an fd) and adds "c".
    client.disconnected()
    client.connect()
    assert snapshot_received(client) is False
    assert client.handle(zds.KeepWorkload("b")) == zds.Unchanged("b")
    assert client.handle(zds.AddWorkload("c", INFO), (1, 300)) == zds.StartWorkload("c", INFO)
    assert client.handle(zds.SnapshotSent()) == zds.Reconcile(("a",))
    assert set(client.workloads) == {"b", "c"}


def test_client_add_is_idempotent_and_detects_new_sandbox() -> None:
    client = zds.ClientState()
    client.connect()
    client.handle(zds.SnapshotSent())
    assert client.handle(zds.AddWorkload("a", INFO), NS1) == zds.StartWorkload("a", INFO)
    assert client.handle(zds.AddWorkload("a", INFO), NS1) == zds.Unchanged("a")
    assert client.handle(zds.AddWorkload("a", INFO), NS2) == zds.ReplaceWorkload("a", INFO)


def test_client_del_before_snapshot_only_forgets() -> None:
    client = zds.ClientState()
    client.connect()
    client.handle(zds.AddWorkload("a", INFO), NS1)
    client.handle(zds.SnapshotSent())
    client.connect()
    client.handle(zds.AddWorkload("a", INFO), NS1)
    assert client.handle(zds.DelWorkload("a")) == zds.ForgetFromSnapshot("a")
    assert "a" in client.workloads  # still running until the reconcile
    assert client.handle(zds.SnapshotSent()) == zds.Reconcile(("a",))
    assert client.handle(zds.DelWorkload("zzz")) == zds.DrainWorkload("zzz")  # idempotent


def test_client_del_after_snapshot_drains() -> None:
    client = zds.ClientState()
    client.connect()
    client.handle(zds.SnapshotSent())
    client.handle(zds.AddWorkload("a", INFO), NS1)
    assert client.handle(zds.DelWorkload("a")) == zds.DrainWorkload("a")
    assert "a" not in client.workloads


@pytest.mark.parametrize("late", [zds.KeepWorkload("k"), zds.SnapshotSent()])
def test_client_protocol_errors_after_snapshot(late: zds.Request) -> None:
    client = zds.ClientState()
    client.connect()
    client.handle(zds.SnapshotSent())
    with pytest.raises(zds.ProtocolError):
        client.handle(late)


def test_client_add_without_info_or_fd() -> None:
    client = zds.ClientState()
    client.connect()
    with pytest.raises(zds.ProtocolError, match="workload_info"):
        client.handle(zds.AddWorkload("a", None), NS1)
    with pytest.raises(zds.FdMisuse):
        client.handle(zds.AddWorkload("a", INFO), None)


def test_client_forget_lets_a_later_add_start_again() -> None:
    client = zds.ClientState()
    client.connect()
    client.handle(zds.AddWorkload("a", INFO), NS1)
    client.forget(["a"])
    assert client.handle(zds.AddWorkload("a", INFO), NS1) == zds.StartWorkload("a", INFO)


def test_server_and_client_machines_talk_to_each_other() -> None:
    """Both machines wired back to back with bytes: the snapshot, then a steady-state Add and Del."""
    server = zds.ServerConnection([zds.AddWorkload("a", INFO), zds.KeepWorkload("k")])
    client = zds.ClientState()
    # Something the client ran before, not in the snapshot: drained at SnapshotSent.
    client.workloads["old"] = NS2
    events: list[zds.ClientEvent] = []

    def pump(actions: list[zds.ServerAction]) -> list[zds.ServerAction]:
        out: list[zds.ServerAction] = []
        while actions:
            action = actions.pop(0)
            out.append(action)
            if isinstance(action, zds.Send):
                is_add = isinstance(action.request, zds.AddWorkload)
                incoming = zds.decode_request(zds.encode_request(action.request), fd_count=int(is_add))
                events.append(client.handle(incoming.message, NS1 if incoming.uses_fd else None))
                actions.extend(server.receive(zds.encode_ack()))
        return out

    out = pump(server.receive_hello(client.connect()))
    assert zds.SnapshotDone() in out
    assert events == [zds.StartWorkload("a", INFO), zds.Unchanged("k"), zds.Reconcile(("old",))]
    out = pump(server.enqueue(zds.DelWorkload("a"), token="d"))
    assert out[-1] == zds.Completed(zds.DelWorkload("a"), zds.Ack(), "d")
    assert events[-1] == zds.DrainWorkload("a")


OPS = st.lists(st.sampled_from(["add", "del", "ack", "nack", "garbage", "timeout", "closed", "hello"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, snapshot_size=st.integers(0, 3))
def test_server_machine_invariants(ops: list[str], snapshot_size: int) -> None:
    """Whatever happens: one request in flight at most, every waiter answered exactly once, a dead connection only
    answers new waiters at once."""
    conn = zds.ServerConnection([zds.KeepWorkload(f"k{i}") for i in range(snapshot_size)])
    completed: list[int] = []
    enqueued: list[int] = []
    in_flight = 0
    for n, op in enumerate(ops):
        was_closed = phase(conn) is zds.ServerPhase.CLOSED
        if op in ("add", "del"):
            request = zds.AddWorkload(f"u{n}", INFO) if op == "add" else zds.DelWorkload(f"u{n}")
            enqueued.append(n)
            actions = conn.enqueue(request, token=n)
        elif op == "hello":
            actions = conn.receive_hello(zds.encode_hello())
        elif op == "ack":
            actions = conn.receive(zds.encode_ack())
        elif op == "nack":
            actions = conn.receive(zds.encode_ack(zds.Ack("no")))
        elif op == "garbage":
            actions = conn.receive(b"\xff")
        elif op == "timeout":
            actions = conn.timeout()
        else:
            actions = conn.closed("EOF")
        if was_closed:
            assert all(isinstance(a, zds.Completed) and a.token == n for a in actions)
        for action in actions:
            if isinstance(action, zds.Send):
                in_flight += 1
            elif isinstance(action, zds.Completed) and not was_closed and phase(conn) is not zds.ServerPhase.CLOSED:
                in_flight -= 1
            elif isinstance(action, zds.Close):
                in_flight = 0
            if isinstance(action, zds.Completed) and isinstance(action.token, int):
                completed.append(action.token)
            assert 0 <= in_flight <= 1
        assert (in_flight == 1) == conn.busy
    assert len(completed) == len(set(completed))
    if phase(conn) is zds.ServerPhase.CLOSED:
        assert sorted(completed) == enqueued  # nobody is left waiting on a dead connection

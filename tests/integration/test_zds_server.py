"""The agent's ZDS server against real SEQPACKET clients passing real fds (no root needed)."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pyztunnel.agent.zds_probe import ZdsProbe
from pyztunnel.agent.zds_server import NoConnection, SnapshotEntry, ZdsServer
from pyztunnel.netns import netns_inode
from pyztunnel.protocols import zds
from pyztunnel.unixfd import recv_with_fds, send_with_fds
from tests.conftest import require
from tests.integration.other_uid import send_as_nobody, traversable_dir

INFO = zds.WorkloadInfo("p", "default", "sa")
TIMEOUT = 5.0


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def netns_fds() -> Iterator[list[int]]:
    """Three distinct "netns" fds: our own netns plus two temporary files (distinct (dev, ino) identities)."""
    with tempfile.TemporaryFile() as one, tempfile.TemporaryFile() as two:
        ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield [ns, one.fileno(), two.fileno()]
        finally:
            os.close(ns)


class Pods:
    """The agent's pod set as the server sees it."""

    def __init__(self) -> None:
        self.entries: list[SnapshotEntry] = []

    def __call__(self) -> list[SnapshotEntry]:
        return list(self.entries)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[ZdsServer, Pods]]:
    pods = Pods()
    srv = ZdsServer(tmp_path / "ztunnel.sock", pods, timeout=0.5)
    await srv.start()
    try:
        yield srv, pods
    finally:
        await srv.close()
    assert not (tmp_path / "ztunnel.sock").exists()


async def raw_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK)
    await asyncio.get_running_loop().sock_connect(sock, str(path))
    return sock


async def test_snapshot_carries_real_netns_fds_and_keeps(server: tuple[ZdsServer, Pods], netns_fds: list[int]) -> None:
    srv, pods = server
    pods.entries = [
        (zds.AddWorkload("a", INFO), netns_fds[0]),
        (zds.AddWorkload("b", INFO), netns_fds[1]),
        (zds.AddWorkload("gone", INFO), None),  # netns not available: sent as Keep
    ]
    probe = ZdsProbe()
    await probe.connect(srv.path)
    try:
        got = await asyncio.wait_for(probe.sync(), TIMEOUT)
        assert [r.event for r in got] == [
            zds.StartWorkload("a", INFO),
            zds.StartWorkload("b", INFO),
            zds.Unchanged("gone"),
            zds.Reconcile(()),
        ]
        assert got[0].netns == netns_inode(netns_fds[0]) == netns_inode("/proc/self/ns/net")
        assert got[1].netns == netns_inode(netns_fds[1])
        await asyncio.wait_for(srv.wait_for(lambda: srv.connections[0]["phase"] == "ready"), TIMEOUT)
    finally:
        probe.close()


async def test_adds_go_to_the_newest_dels_to_all(server: tuple[ZdsServer, Pods], netns_fds: list[int]) -> None:
    srv, _pods = server
    with pytest.raises(NoConnection):
        await srv.add(zds.AddWorkload("x", INFO), netns_fds[0])
    old, new = ZdsProbe(), ZdsProbe()
    await old.connect(srv.path)
    await asyncio.wait_for(old.sync(), TIMEOUT)
    await new.connect(srv.path)
    await asyncio.wait_for(new.sync(), TIMEOUT)
    tasks = [asyncio.ensure_future(p.serve()) for p in (old, new)]
    try:
        ack = await asyncio.wait_for(srv.add(zds.AddWorkload("x", INFO), netns_fds[2]), TIMEOUT)
        assert ack.ok
        acks = await asyncio.wait_for(srv.delete("x"), TIMEOUT)
        assert acks == [zds.Ack(), zds.Ack()]
        assert [r.event for r in old.received[1:]] == [zds.DrainWorkload("x")]
        assert [r.event for r in new.received[1:]] == [zds.StartWorkload("x", INFO), zds.DrainWorkload("x")]
        assert new.received[1].netns == netns_inode(netns_fds[2])
        # The newest leaves: Adds fall back to the older connection.
        new.close()
        await asyncio.wait_for(srv.wait_for(lambda: len(srv.connections) == 1), TIMEOUT)
        assert (await asyncio.wait_for(srv.add(zds.AddWorkload("y", INFO), netns_fds[1]), TIMEOUT)).ok
        assert old.received[-1].event == zds.StartWorkload("y", INFO)
    finally:
        old.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_nack_is_returned_to_the_caller(server: tuple[ZdsServer, Pods], netns_fds: list[int]) -> None:
    srv, _ = server
    probe = ZdsProbe(nack={"bad": "failure to start proxy : no netns"})
    await probe.connect(srv.path)
    await asyncio.wait_for(probe.sync(), TIMEOUT)
    task = asyncio.ensure_future(probe.serve())
    try:
        ack = await asyncio.wait_for(srv.add(zds.AddWorkload("bad", INFO), netns_fds[0]), TIMEOUT)
        assert ack == zds.Ack("failure to start proxy : no netns")
        assert len(srv.connections) == 1  # a NACK does not drop the connection
    finally:
        probe.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_reconnect_reconciles(server: tuple[ZdsServer, Pods], netns_fds: list[int]) -> None:
    srv, pods = server
    pods.entries = [(zds.AddWorkload("a", INFO), netns_fds[0]), (zds.AddWorkload("b", INFO), netns_fds[1])]
    state = zds.ClientState()
    first = ZdsProbe(state)
    await first.connect(srv.path)
    await asyncio.wait_for(first.sync(), TIMEOUT)
    first.close()
    pods.entries = pods.entries[1:]  # "a" was deleted while the proxy was away
    second = ZdsProbe(state)
    await second.connect(srv.path)
    try:
        got = await asyncio.wait_for(second.sync(), TIMEOUT)
        assert [r.event for r in got] == [zds.Unchanged("b"), zds.Reconcile(("a",))]
    finally:
        second.close()


async def misbehave(srv: ZdsServer, how: str, fd: int) -> None:
    sock = await raw_client(srv.path)
    try:
        if how == "no-hello":
            pass  # stays silent: dropped at the hello deadline
        elif how == "garbage-hello":
            await send_with_fds(sock, b"\xff\xfe\xfd")
        elif how == "hello-with-fd":
            await send_with_fds(sock, zds.encode_hello(), [fd])
        else:
            await send_with_fds(sock, zds.encode_hello())
            _, first_fds, _ = await asyncio.wait_for(recv_with_fds(sock, 1024, 1), TIMEOUT)  # the snapshot's Add
            assert len(first_fds) == 1
            os.close(first_fds[0])
            if how == "garbage-ack":
                await send_with_fds(sock, b"\x0a\x05")
            elif how == "ack-with-fd":
                await send_with_fds(sock, zds.encode_ack(), [fd])
            elif how == "truncated":
                await send_with_fds(sock, b"\x0a\x00" + b"\x00" * 2000)
            elif how == "no-ack":
                pass
            elif how == "eof-mid-snapshot":
                sock.close()
                return
        # The server drops us: we see EOF.
        while True:
            data, fds, _ = await asyncio.wait_for(recv_with_fds(sock, 1024, 1), TIMEOUT)
            for f in fds:
                os.close(f)
            if not data:
                return
    finally:
        sock.close()


@pytest.mark.parametrize(
    "how",
    [
        "no-hello",
        "garbage-hello",
        "hello-with-fd",
        "garbage-ack",
        "ack-with-fd",
        "truncated",
        "no-ack",
        "eof-mid-snapshot",
    ],
)
async def test_misbehaving_client_is_dropped_others_served_no_fd_leak(
    server: tuple[ZdsServer, Pods], netns_fds: list[int], how: str, caplog: pytest.LogCaptureFixture
) -> None:
    srv, pods = server
    pods.entries = [(zds.AddWorkload("a", INFO), netns_fds[0]), (zds.KeepWorkload("k"), None)]
    good = ZdsProbe()
    await good.connect(srv.path)
    await asyncio.wait_for(good.sync(), TIMEOUT)
    task = asyncio.ensure_future(good.serve())
    try:
        before = fd_count()
        await misbehave(srv, how, netns_fds[1])
        await asyncio.wait_for(srv.wait_for(lambda: len(srv.connections) == 1), TIMEOUT)
        assert fd_count() == before
        if how != "eof-mid-snapshot":
            assert any("dropping ztunnel connection" in r.getMessage() for r in caplog.records)
        # The good client still gets Adds (it is the newest again).
        assert (await asyncio.wait_for(srv.add(zds.AddWorkload("z", INFO), netns_fds[2]), TIMEOUT)).ok
    finally:
        good.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_unsolicited_message_in_steady_state_is_dropped(server: tuple[ZdsServer, Pods]) -> None:
    srv, _ = server
    sock = await raw_client(srv.path)
    try:
        await send_with_fds(sock, zds.encode_hello())
        data, _, _ = await asyncio.wait_for(recv_with_fds(sock, 1024, 1), TIMEOUT)
        assert zds.decode_request(data).message == zds.SnapshotSent()
        await send_with_fds(sock, zds.encode_ack())
        await asyncio.wait_for(srv.wait_for(lambda: srv.connections[0]["phase"] == "ready"), TIMEOUT)
        await send_with_fds(sock, zds.encode_ack())  # nothing was asked
        await asyncio.wait_for(srv.wait_for(lambda: not srv.connections), TIMEOUT)
    finally:
        sock.close()


async def test_pending_add_fails_when_the_connection_is_lost(
    server: tuple[ZdsServer, Pods], netns_fds: list[int]
) -> None:
    srv, _ = server
    sock = await raw_client(srv.path)
    try:
        await send_with_fds(sock, zds.encode_hello())
        await asyncio.wait_for(recv_with_fds(sock, 1024, 1), TIMEOUT)  # SnapshotSent, left unanswered
        before = fd_count()
        adding = asyncio.ensure_future(srv.add(zds.AddWorkload("q", INFO), netns_fds[0]))
        await asyncio.sleep(0)  # one loop iteration, to check something has NOT happened [noqa: sleep-ok]
        sock.close()
        ack = await asyncio.wait_for(adding, TIMEOUT)
        assert not ack.ok and "connection lost" in ack.error
        assert fd_count() == before - 2  # both ends of the connection are closed, and the queued dup too
    finally:
        sock.close()


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ztunnel.sock"
    path.write_text("stale")
    srv = ZdsServer(path, list)
    await srv.start()
    try:
        probe = ZdsProbe()
        await probe.connect(path)
        got = await asyncio.wait_for(probe.sync(), TIMEOUT)
        assert [r.event for r in got] == [zds.Reconcile(())]
        probe.close()
    finally:
        await srv.close()


async def test_socket_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        srv = ZdsServer(tmp_path / "ztunnel.sock", list)
        await srv.start()
    finally:
        os.umask(previous)
    try:
        assert (tmp_path / "ztunnel.sock").stat().st_mode & 0o777 == 0o600
    finally:
        await srv.close()


async def test_a_client_of_another_uid_is_refused(netns_fds: list[int], caplog: pytest.LogCaptureFixture) -> None:
    require(os.geteuid() == 0, "root (to run a client as another uid)")
    with traversable_dir() as where:
        srv = ZdsServer(where / "ztunnel.sock", lambda: [(zds.AddWorkload("a", INFO), netns_fds[0])])
        await srv.start()
        try:
            assert await send_as_nobody(srv.path, socket.SOCK_SEQPACKET, zds.encode_hello()) == "denied"  # mode 0600
            os.chmod(srv.path, 0o666)  # past the file mode, to reach the peer check behind it
            assert await send_as_nobody(srv.path, socket.SOCK_SEQPACKET, zds.encode_hello()) == "eof"
            assert not srv.connections
            assert any("refusing ztunnel connection" in r.getMessage() for r in caplog.records)
        finally:
            await srv.close()


async def test_workloads_only_a_departed_client_had_go_to_the_remaining_one(
    server: tuple[ZdsServer, Pods], netns_fds: list[int]
) -> None:
    srv, pods = server
    pods.entries = [(zds.AddWorkload("a", INFO), netns_fds[0])]
    old, new = ZdsProbe(), ZdsProbe()
    await old.connect(srv.path)
    await asyncio.wait_for(old.sync(), TIMEOUT)
    await new.connect(srv.path)
    await asyncio.wait_for(new.sync(), TIMEOUT)
    serving = asyncio.ensure_future(new.serve())
    try:
        pods.entries.append((zds.AddWorkload("x", INFO), netns_fds[1]))  # the agent registers a pod, then sends it
        assert (await asyncio.wait_for(srv.add(zds.AddWorkload("x", INFO), netns_fds[1]), TIMEOUT)).ok
        assert new.received[-1].event == zds.StartWorkload("x", INFO)  # Adds go to the newest only
        new.close()  # ... which leaves: "x" must not be left without a proxy
        got = await asyncio.wait_for(old.step(), TIMEOUT)  # the next request the old one gets ("a" is not sent again)
        assert got is not None and got.event == zds.StartWorkload("x", INFO)
        assert got.netns == netns_inode(netns_fds[1])
    finally:
        old.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def test_an_add_to_a_connection_that_just_closed_leaks_no_fd(
    server: tuple[ZdsServer, Pods], netns_fds: list[int]
) -> None:
    srv, _ = server
    sock = await raw_client(srv.path)
    await send_with_fds(sock, zds.encode_hello())
    await asyncio.wait_for(recv_with_fds(sock, 1024, 1), TIMEOUT)  # SnapshotSent
    await send_with_fds(sock, zds.encode_ack())
    await asyncio.wait_for(srv.wait_for(lambda: srv.connections[0]["phase"] == "ready"), TIMEOUT)
    before = fd_count()
    sock.close()  # the server has not read the EOF yet: the Add goes to a connection already gone
    ack = await asyncio.wait_for(srv.add(zds.AddWorkload("q", INFO), netns_fds[0]), TIMEOUT)
    assert not ack.ok
    await asyncio.wait_for(srv.wait_for(lambda: not srv.connections), TIMEOUT)
    assert fd_count() == before - 2  # the server's end of the connection and our own; no dup left behind

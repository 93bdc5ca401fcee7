"""Listener handoff with real sockets on loopback: lossless under a connect() storm, and every lying peer falls back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pyztunnel.aio import cancel_and_wait
from pyztunnel.lifecycle import handoff, handoff_io
from pyztunnel.lifecycle.handoff import ListenerKey, PodRequest
from pyztunnel.lifecycle.peerauth import Handshake
from pyztunnel.lifecycle.testing import Hammer, TaggedListeners, accept_queue_length, reuseport_listener
from pyztunnel.netns import netns_inode
from tests.conftest import require
from tests.integration.handoff_support import hello_and_request, old_instance
from tests.integration.other_uid import send_as_nobody, traversable_dir

SELF = netns_inode("/proc/self/ns/net")


@pytest.fixture(autouse=True)
def _cap_net_admin() -> None:
    # SIOCGSKNS (checking a received listener's namespace) needs CAP_NET_ADMIN; without it nothing validates.
    require(os.geteuid() == 0, "root (SIOCGSKNS needs CAP_NET_ADMIN)")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_handoff_loses_no_connection_under_load(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    async with old_instance(path, pods=2) as old:
        port = old.pods["pod-0"][0]
        hammer = Hammer(port).start()
        new = TaggedListeners(b"new\n", SELF)
        try:
            await hammer.wait_total(200)
            # Make the worst case certain: the old one stops accepting and connections pile up in its queue.
            await old.command("pause", "paused")
            queued = await old.wait_queue(at_least=2)
            assert queued >= 2
            adoption = await handoff_io.adopt(path, old.requests())
            assert adoption.to_bind == {} and len(adoption.sockets) == 6
            for uid, ports in old.pods.items():
                for port in ports:
                    sock = adoption.take(uid, port)
                    assert sock is not None
                    new.add(ListenerKey(uid, port), sock)
            assert adoption.take("pod-0", old.pods["pod-0"][0]) is None and adoption.close_unused() == 0
            assert await adoption.confirm()
            released = await old.event("released")
            assert released["listeners"] == 6
            await hammer.wait_total(2000)
        finally:
            await asyncio.to_thread(hammer.stop)  # the hammer may wait on our own loop: never block it
            await new.close()
    # Every connection answered, the queued ones by the new instance: nothing refused, nothing reset.
    assert dict(hammer.errors) == {}
    assert hammer.answers["old"] > 0 and hammer.answers["new"] >= queued


async def test_without_handoff_closing_the_old_listener_may_reset(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """ztunnel's way (both mechanisms off): new binds its own SO_REUSEPORT listener, the old one closes its own."""
    path = tmp_path / "handoff.sock"
    async with old_instance(path) as old:
        port = old.pods["pod-0"][0]
        hammer = Hammer(port).start()
        new = TaggedListeners(b"new\n", SELF)
        try:
            await hammer.wait_total(200)
            await old.command("pause", "paused")
            queued = await old.wait_queue(at_least=2)
            new.add(ListenerKey("pod-0", port), reuseport_listener(port=port))
            await old.command("close", "closed")
            await hammer.wait_total(hammer.total + 500)
        finally:
            await asyncio.to_thread(hammer.stop)  # the hammer may wait on our own loop: never block it
            await new.close()
    resets = sum(hammer.errors.values())
    record_property("resets_without_handoff", resets)
    print(
        f"\nwithout handoff: {queued} queued in the closed listener, {resets} failed connections {dict(hammer.errors)}"
    )
    assert hammer.answers["new"] > 0


# Lying, vanishing and slow peers ---------------------------------------------------------------------------------------

Script = Callable[[socket.socket], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_peer(path: Path, script: Script) -> AsyncIterator[None]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(str(path))
    srv.listen(1)
    srv.setblocking(False)
    conns: list[socket.socket] = []

    async def run() -> None:
        conn, _ = await asyncio.get_running_loop().sock_accept(srv)
        conns.append(conn)
        conn.setblocking(False)
        await script(conn)

    task = asyncio.ensure_future(run())
    try:
        yield
    finally:
        await cancel_and_wait(task)
        for c in conns:
            c.close()
        srv.close()


def listeners_header(*keys: tuple[str, int]) -> bytes:
    return handoff.encode({"type": "listeners", "listeners": [{"uid": u, "port": p} for u, p in keys]})


async def run_against(tmp_path: Path, script: Script, pods: list[PodRequest], within: float = 5) -> handoff_io.Adoption:
    async with fake_peer(tmp_path / "handoff.sock", script):
        return await handoff_io.adopt(tmp_path / "handoff.sock", pods, within=within)


async def test_lying_peer_every_bad_fd_is_rejected_and_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = reuseport_listener()
    other_port = reuseport_listener()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unbound = socket.socket()
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    client = socket.create_connection(good.getsockname())
    connected, _ = good.accept()
    shut = reuseport_listener()
    shut.shutdown(socket.SHUT_RDWR)  # a listener that was closed down: it cannot accept any more
    gp = good.getsockname()[1]
    items: list[tuple[tuple[str, int], socket.socket | int]] = [
        (("pod-a", gp), good),  # the one honest fd
        (("pod-b", gp), good),  # pod-b's netns is not ours: a listener of the wrong pod
        (("pod-a", 1), other_port),  # bound elsewhere
        (("pod-a", 2), udp),  # not a stream socket
        (("pod-a", 3), unbound),  # not a listener
        (("pod-a", 4), unix),  # not an inet socket
        (("pod-a", 5), r),  # not a socket at all
        (("pod-a", 6), connected),  # an accepted connection, not a listener
        (("pod-a", shut.getsockname()[1]), shut),  # shut down
    ]

    async def script(conn: socket.socket) -> None:
        await hello_and_request(conn)
        fds = [x if isinstance(x, int) else x.fileno() for _, x in items]
        await handoff_io.send_msg(conn, listeners_header(*(k for k, _ in items)), fds)
        await handoff_io.send_msg(conn, handoff.encode({"type": "done", "missing": []}))
        await handoff_io.recv_msg(conn)  # adopted
        await handoff_io.send_msg(conn, handoff.encode({"type": "released"}))

    before = open_fds()
    sp = shut.getsockname()[1]
    pods = [PodRequest("pod-a", SELF, (gp, 1, 2, 3, 4, 5, 6, sp)), PodRequest("pod-b", (SELF[0], SELF[1] + 1), (gp,))]
    try:
        async with fake_peer(tmp_path / "handoff.sock", script):
            adoption = await handoff_io.adopt(tmp_path / "handoff.sock", pods)
            assert await adoption.confirm()
            assert adoption.leased  # the connection stays open as the lease ...
            adoption.close()  # ... until we give the listeners back
        assert list(adoption.sockets) == [ListenerKey("pod-a", gp)]
        assert adoption.sockets[ListenerKey("pod-a", gp)].getsockname() == good.getsockname()
        reasons = {k.port if k.uid == "pod-a" else "b": v for k, v in adoption.to_bind.items()}
        assert "network namespace" in reasons["b"]
        assert "bound to port" in reasons[1] and "not a stream socket" in reasons[2]
        assert reasons[3] == "not a listening socket" and "not an inet socket" in reasons[4]
        assert "not a socket" in reasons[5] and reasons[6] == "not a listening socket"
        assert reasons[sp] == "not a listening socket"
        # The one adopted socket is the only fd we still hold beyond what we opened ourselves.
        assert open_fds() == before + 1, os.listdir("/proc/self/fd")
        adoption.sockets[ListenerKey("pod-a", gp)].close()
        assert "binding own listeners for pod" in caplog.text
    finally:
        for s in (good, other_port, udp, unbound, unix, client, connected, shut):
            s.close()
        os.close(r)
        os.close(w)


async def test_fewer_fds_than_announced_falls_back_and_leaks_nothing(tmp_path: Path) -> None:
    a, b = reuseport_listener(), reuseport_listener()

    async def script(conn: socket.socket) -> None:
        await hello_and_request(conn)
        keys = [("pod-a", a.getsockname()[1]), ("pod-a", b.getsockname()[1]), ("pod-a", 9)]
        await handoff_io.send_msg(conn, listeners_header(*keys), [a.fileno(), b.fileno()])
        await asyncio.Event().wait()

    before = open_fds()
    try:
        ports = (a.getsockname()[1], b.getsockname()[1], 9)
        adoption = await run_against(tmp_path, script, [PodRequest("pod-a", SELF, ports)])
        assert adoption.sockets == {}
        assert all("3 listeners announced, 2 fds received" in r for r in adoption.to_bind.values())
        assert len(adoption.to_bind) == 3 and open_fds() == before
    finally:
        a.close()
        b.close()


async def test_more_fds_than_the_batch_limit_are_refused_and_closed(tmp_path: Path) -> None:
    listener = reuseport_listener()
    port = listener.getsockname()[1]
    n = handoff.MAX_FDS_PER_MESSAGE + 10

    async def script(conn: socket.socket) -> None:
        await hello_and_request(conn)
        await handoff_io.send_msg(conn, listeners_header(*[("pod-a", port)] * n), [listener.fileno()] * n)
        await asyncio.Event().wait()

    before = open_fds()
    try:
        adoption = await run_against(tmp_path, script, [PodRequest("pod-a", SELF, (port,))])
        assert adoption.sockets == {} and "truncated" in adoption.to_bind[ListenerKey("pod-a", port)]
        assert open_fds() == before  # the kernel closed what did not fit, we closed the rest
    finally:
        listener.close()


async def test_peer_vanishing_halfway_keeps_first_batch(tmp_path: Path) -> None:
    socks = [reuseport_listener() for _ in range(4)]
    ports = [s.getsockname()[1] for s in socks]

    async def script(conn: socket.socket) -> None:
        await hello_and_request(conn)
        await handoff_io.send_msg(
            conn, listeners_header(("pod-a", ports[0]), ("pod-a", ports[1])), [socks[0].fileno(), socks[1].fileno()]
        )
        conn.close()  # gone before the second batch

    try:
        pods = [PodRequest("pod-a", SELF, tuple(ports[:2])), PodRequest("pod-b", SELF, tuple(ports[2:]))]
        adoption = await run_against(tmp_path, script, pods)
        assert set(adoption.sockets) == {ListenerKey("pod-a", ports[0]), ListenerKey("pod-a", ports[1])}
        assert set(adoption.pods_to_bind()) == {"pod-b"}
        assert all("went away" in r for r in adoption.to_bind.values())
        assert not await adoption.confirm()  # nobody to confirm to; the adopted sockets are still good
        for s in adoption.sockets.values():
            assert s.getsockopt(socket.SOL_SOCKET, handoff_io.SO_ACCEPTCONN) == 1
            s.close()
    finally:
        for s in socks:
            s.close()


async def test_slow_peer_times_out_and_falls_back(tmp_path: Path) -> None:
    async def script(conn: socket.socket) -> None:
        await asyncio.Event().wait()  # accepts, never answers

    started = time.monotonic()
    adoption = await run_against(tmp_path, script, [PodRequest("pod-a", SELF)], within=0.3)
    assert time.monotonic() - started < 3
    assert len(adoption.to_bind) == 3 and all("too slow" in r for r in adoption.to_bind.values())


async def test_no_peer_binds_everything(tmp_path: Path) -> None:
    adoption = await handoff_io.adopt(tmp_path / "none.sock", [PodRequest("pod-a", SELF)])
    assert adoption.sockets == {} and all("no handoff peer" in r for r in adoption.to_bind.values())


async def test_real_server_refuses_another_version(tmp_path: Path) -> None:
    source = TaggedListeners(b"old\n", SELF)
    service = await handoff_io.serve(tmp_path / "handoff.sock", source)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(conn, str(tmp_path / "handoff.sock"))
        await handoff_io.send_msg(conn, handoff.encode({"type": "hello", "version": 1}))  # v1: no proof
        data, fds = await asyncio.wait_for(handoff_io.recv_msg(conn), 5)
        assert handoff.decode(data)["type"] == "error" and fds == []
    finally:
        conn.close()
        await service.close()
    assert not (tmp_path / "handoff.sock").exists()


async def test_newer_server_takes_the_path_over(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    first = await handoff_io.serve(path, TaggedListeners(b"old\n", SELF))
    second = await handoff_io.serve(path, TaggedListeners(b"new\n", SELF))
    await first.close()  # must not remove the newer instance's name
    assert path.exists()
    await second.close()
    assert not path.exists()


async def test_a_paused_listener_strands_its_share_of_new_connections() -> None:
    """Why drain must *close* listeners it does not share: a paused (open, not accepting) SO_REUSEPORT sibling keeps
    getting its hash share of new connections, which wait unanswered until the process exits (then reset, or migrate
    with tcp_migrate_req=1). A handed-off listener is shared, so closing our copy of it costs nothing."""
    paused = reuseport_listener()
    port = paused.getsockname()[1]
    new = TaggedListeners(b"new\n", SELF)
    new.add(ListenerKey("pod", port), reuseport_listener(port=port))
    loop = asyncio.get_running_loop()
    clients = []
    try:
        for _ in range(24):
            c = socket.socket()
            c.setblocking(False)
            await loop.sock_connect(c, ("127.0.0.1", port))  # the handshake completes in the kernel either way
            clients.append(c)

        async def answered(c: socket.socket) -> bool:
            try:
                return await asyncio.wait_for(loop.sock_recv(c, 16), 1.0) == b"new\n"
            except TimeoutError:
                return False

        results = await asyncio.gather(*(answered(c) for c in clients))
        stranded = results.count(False)
        assert 0 < stranded < len(clients)  # P(all 24 hash to one listener) = 2⁻²³
        assert accept_queue_length(paused) == stranded
    finally:
        for c in clients:
            c.close()
        paused.close()
        await new.close()


# Who may take listeners, and what happens when the taker dies -----------------------------------------------------------


async def test_a_peer_without_the_nodes_key_gets_no_listener(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    async with old_instance(path) as old:
        adoption = await handoff_io.adopt(path, old.requests(), key=bytes(32))
        assert adoption.sockets == {}
        assert all("did not prove" in reason for reason in adoption.to_bind.values())
        # A forger that skips checking the old one and answers with a proof of its own gets an error, no fd.
        conn = await handoff_io.connect(path)
        try:
            forger = Handshake(bytes(32), "new")
            await handoff_io.send_msg(conn, handoff.hello(forger))
            data, _ = await handoff_io.recv_msg(conn)
            forger.peer_nonce = handoff.decode(data)["nonce"]
            pods = [{"uid": uid, "netns": list(SELF), "ports": ports} for uid, ports in old.pods.items()]
            await handoff_io.send_msg(conn, handoff.encode({"type": "request", "pods": pods, **forger.proof_field()}))
            data, fds = await asyncio.wait_for(handoff_io.recv_msg(conn), 5)
            assert handoff.decode(data)["type"] == "error" and fds == []
        finally:
            conn.close()


async def test_a_peer_of_another_uid_is_refused(tmp_path: Path) -> None:
    with traversable_dir() as where:
        path = where / "handoff.sock"
        service = await handoff_io.serve(path, TaggedListeners(b"old\n", SELF))
        try:
            hello = handoff.hello(Handshake(bytes(32), "new"))
            assert await send_as_nobody(path, socket.SOCK_SEQPACKET, hello) == "denied"  # mode 0600
            path.chmod(0o666)  # past the file mode, to reach the peer check behind it
            assert await send_as_nobody(path, socket.SOCK_SEQPACKET, hello) == "eof"
        finally:
            await service.close()


async def test_listeners_released_to_a_taker_that_dies_are_accepted_on_again(tmp_path: Path) -> None:
    """The lease: kill -9 of the new instance after it confirmed (the old one had stopped accepting) must not leave the
    pod's listeners unanswered while the old one still runs and reports ready."""
    path = tmp_path / "handoff.sock"
    async with old_instance(path, pods=1) as old:
        wanted = tmp_path / "pods.json"
        wanted.write_text(json.dumps(old.described))
        async with old_instance(tmp_path / "handoff.sock", adopt=wanted, tag="new") as new:
            assert (await old.event("released"))["listeners"] == 3
            port = old.pods["pod-0"][0]
            assert await asyncio.to_thread(answer, port) == "new"  # only the new one accepts now
            new.proc.kill()
            await new.proc.wait()
            assert (await old.event("reclaimed"))["listeners"] == 3
            assert await asyncio.to_thread(answer, port) == "old"


def answer(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(16).decode().strip()

"""Listener lifecycle in network namespaces we create (`pzt-tlife-…`): tcp_migrate_req as the kernel backstop, and
the listener handoff across a real pod namespace, with a foreign namespace's listener rejected."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from pyztunnel.aio import cancel_and_wait
from pyztunnel.lifecycle import handoff, handoff_io
from pyztunnel.lifecycle.handoff import ListenerKey, PodRequest
from pyztunnel.lifecycle.testing import Hammer, TaggedListeners, poll
from pyztunnel.netns import netns_inode, netns_path, run_in_netns, socket_in_netns
from tests.integration.handoff_support import hello_and_request, old_instance


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def netns(migrate_req: int = 0) -> Iterator[str]:
    name = f"pzt-tlife-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("netns", "exec", name, "sysctl", "-qw", f"net.ipv4.tcp_migrate_req={migrate_req}")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def listener_in(ns: str, port: int = 0) -> socket.socket:
    sock = socket_in_netns(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


async def close_old_under_load(ns: str) -> tuple[int, Hammer]:
    """Two SO_REUSEPORT listeners (old, new); the old one stops accepting, connections queue on it, then it closes."""
    old_sock = listener_in(ns)
    port = old_sock.getsockname()[1]
    self_ns = netns_inode(netns_path(ns))
    old, new = TaggedListeners(b"old\n", self_ns), TaggedListeners(b"new\n", self_ns)
    old.add(ListenerKey("pod", port), old_sock)
    hammer = Hammer(port, netns=ns).start()
    try:
        await hammer.wait_total(200)
        new.add(ListenerKey("pod", port), listener_in(ns, port))
        await old.pause()
        await poll(lambda: old.queue_length() >= 2, 10, "connections queued on the old listener")
        queued = old.queue_length()
        await old.close()
        await hammer.wait_total(hammer.total + 500)
    finally:
        await asyncio.to_thread(hammer.stop)
        await old.close()
        await new.close()
    return queued, hammer


async def test_tcp_migrate_req_moves_the_closed_listeners_queue() -> None:
    with netns(migrate_req=1) as ns:
        queued, hammer = await close_old_under_load(ns)
    assert dict(hammer.errors) == {}
    assert hammer.answers["new"] >= queued >= 2


async def test_without_tcp_migrate_req_the_closed_listeners_queue_is_reset(record_property: object) -> None:
    with netns(migrate_req=0) as ns:
        queued, hammer = await close_old_under_load(ns)
    resets = hammer.errors["ConnectionResetError"]
    print(f"\ntcp_migrate_req=0: {queued} queued on the closed listener, {resets} connections reset")
    assert resets >= 1  # the switch matters: with it on (test above) the same queue migrates


@contextlib.asynccontextmanager
async def foreign_listener_peer(path: Path, sock: socket.socket, port: int) -> AsyncIterator[None]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(str(path))
    srv.listen(1)
    srv.setblocking(False)

    async def run() -> None:
        conn, _ = await asyncio.get_running_loop().sock_accept(srv)
        with conn:
            conn.setblocking(False)
            await hello_and_request(conn)
            header = handoff.encode({"type": "listeners", "listeners": [{"uid": "pod-a", "port": port}]})
            await handoff_io.send_msg(conn, header, [sock.fileno()])
            await handoff_io.send_msg(conn, handoff.encode({"type": "done", "missing": []}))
            await asyncio.Event().wait()

    task = asyncio.ensure_future(run())
    try:
        yield
    finally:
        await cancel_and_wait(task)
        srv.close()


async def test_handoff_in_a_pod_namespace_and_a_foreign_listener_is_rejected(tmp_path: Path) -> None:
    with netns() as pod_ns, netns() as other_ns:
        pod_inode = netns_inode(netns_path(pod_ns))
        # The old instance runs inside the pod namespace; the new one (this process) never enters it.
        async with old_instance(tmp_path / "handoff.sock", netns=pod_ns) as old:
            assert old.requests()[0].netns == pod_inode
            ports = old.pods["pod-0"]
            hammer = Hammer(ports[0], netns=pod_ns).start()
            new = TaggedListeners(b"new\n", pod_inode)
            try:
                await hammer.wait_total(200)
                adoption = await handoff_io.adopt(
                    tmp_path / "handoff.sock", [PodRequest("pod-0", pod_inode, tuple(ports))]
                )
                assert adoption.to_bind == {}
                for key, sock in adoption.sockets.items():
                    assert handoff_io.socket_netns(sock) == pod_inode
                    new.add(key, sock)
                assert await adoption.confirm()
                await old.event("released")
                await hammer.wait_total(hammer.total + 500)
            finally:
                await asyncio.to_thread(hammer.stop)
                await new.close()
        assert dict(hammer.errors) == {} and hammer.answers["new"] > 0

        # A peer that offers a genuine listener on the right port, but from another namespace, is refused.
        foreign = listener_in(other_ns)
        port = foreign.getsockname()[1]
        try:
            async with foreign_listener_peer(tmp_path / "liar.sock", foreign, port):
                lied = await handoff_io.adopt(tmp_path / "liar.sock", [PodRequest("pod-a", pod_inode, (port,))])
            assert lied.sockets == {}
            assert "network namespace" in lied.to_bind[ListenerKey("pod-a", port)]
            # Our duplicate was closed, theirs is untouched.
            assert run_in_netns(other_ns, lambda: foreign.getsockopt(socket.SOL_SOCKET, handoff_io.SO_ACCEPTCONN)) == 1
        finally:
            foreign.close()

"""Releasing a migrated relay puts nothing on the wire, on uvloop and on asyncio's own loop: no FIN, no RST, no
SO_LINGER left behind, and the bytes that arrived while it was paused wait in the kernel for the next owner."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import pytest
import uvloop

from pyztunnel.lifecycle import migrate_header, migrate_take
from pyztunnel.netns import netns_inode
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.proxy.migration import RelayExport, movable
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


class StandInPod:
    key = "pod-a"

    def __init__(self) -> None:
        self.untracked: list[Relay] = []

    def untrack(self, relay: Relay) -> None:
        self.untracked.append(relay)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        outer = socket.create_connection(listener.getsockname())
        inner, _ = listener.accept()
    return outer, inner


def nothing_arrives(sock: socket.socket) -> bool:
    """True if the peer sent nothing: no data, no FIN (recv would return b""), no RST (recv would raise)."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    return False


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    sock.setblocking(True)
    sock.settimeout(10)
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "EOF"
        out += chunk
    return out


async def scenario() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    client, down_sock = tcp_pair()  # the app's connection, accepted by the proxy
    up_sock, server = tcp_pair()  # the proxy's connection to the destination
    done: list[BaseException | None] = []
    down, up = TcpLeg(start_paused=True), TcpLeg(start_paused=True)
    for sock in (down_sock, up_sock):
        sock.setblocking(False)
    await loop.connect_accepted_socket(lambda: down, down_sock)
    await loop.connect_accepted_socket(lambda: up, up_sock)
    record = ConnectionRecord("127.0.0.1:1", "127.0.0.1:2", "outbound")
    relay = Relay(down, up, lambda r, e: done.append(e), record)
    relay.start()
    client.sendall(b"request")
    server.sendall(b"response")
    assert await loop.run_in_executor(None, recv_exactly, server, 7) == b"request"
    assert await loop.run_in_executor(None, recv_exactly, client, 8) == b"response"
    assert movable(relay)
    pod = StandInPod()
    export = RelayExport(cast(PodProxy, pod), relay)
    exported = await export.prepare(1.0)
    assert exported is not None and exported.down is not None and exported.up is not None  # TCP↔TCP: both legs
    client.sendall(b"while paused")  # must wait in the kernel, not be read by the old owner
    # Let the loop run a few iterations: a paused leg must not read it.
    for _ in range(5):
        await asyncio.sleep(0)  # one loop iteration, to check something has NOT happened [noqa: sleep-ok]
    export.release()
    await asyncio.wait_for(down.lost, 5)
    await asyncio.wait_for(up.lost, 5)
    facts = {
        "client_quiet": nothing_arrives(client),
        "server_quiet": nothing_arrives(server),
        "relay_done_called": bool(done),
        "untracked": pod.untracked == [relay],
        "received": (exported.context["bytes_recv"], exported.context["bytes_sent"]),
        "ends": (exported.down and exported.down.peer, exported.up and exported.up.peer),
    }
    # The next owner's copies still work: the paused bytes are there, and writing reaches the peers.
    assert exported.down_fd is not None and exported.up_fd is not None  # both legs of a TCP relay travel
    new_down, new_up = socket.socket(fileno=exported.down_fd), socket.socket(fileno=exported.up_fd)
    try:
        facts["linger"] = struct.unpack("ii", new_down.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))[0]
        facts["state"] = new_down.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        facts["paused_bytes"] = await loop.run_in_executor(None, recv_exactly, new_down, 12)
        new_up.setblocking(True)
        new_up.sendall(b"after")
        facts["server_got"] = await loop.run_in_executor(None, recv_exactly, server, 5)
    finally:
        for sock in (new_down, new_up, client, server):
            sock.close()
    return facts


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_release_sends_nothing_and_the_socket_lives_on(loop_name: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        facts = runner.run(asyncio.wait_for(scenario(), 30))
    assert facts["client_quiet"] and facts["server_quiet"], facts
    assert not facts["relay_done_called"] and facts["untracked"]
    assert facts["received"] == (7, 8)
    assert facts["linger"] == 0 and facts["state"] == migrate_header.TCP_ESTABLISHED
    assert facts["paused_bytes"] == b"while paused"
    assert facts["server_got"] == b"after"


def test_without_cap_net_admin_a_socket_of_our_own_namespace_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(sock: socket.socket) -> tuple[int, int]:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(migrate_take, "socket_netns", denied)
    outer, inner = tcp_pair()
    try:
        sock, facts = migrate_take.probe_conn(os.dup(inner.fileno()))
        assert sock is not None
        sock.close()
        assert facts.netns == netns_inode("/proc/self/ns/net") and facts.error is None
        assert facts.tcp_state == migrate_header.TCP_ESTABLISHED and facts.peer == outer.getsockname()
        # Not in our namespace's TCP table (as a socket of another namespace would not be): unknown, refused.
        sock, facts = migrate_take.probe_conn(os.dup(inner.fileno()), own_inodes=set)
        assert sock is not None
        sock.close()
        assert facts.netns is None and facts.error is not None and "SIOCGSKNS" in facts.error
    finally:
        outer.close()
        inner.close()

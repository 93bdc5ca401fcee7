"""The proxy's own tcp_migrate_req (PYZTUNNEL_TCP_MIGRATE_REQ, pyztunnel.reuseport): in a pod netns whose sysctl is 0,
as on Kubernetes where nobody can write it, the connections queued on a closed in-pod listener move to the other
instance's listener instead of being reset. Without the program the same close resets some of them (the kernel's
default, reference §1.7), which is what makes this test able to fail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from pyztunnel import netns
from pyztunnel.proxy.netsock import PodNetns

pytestmark = pytest.mark.system

CLIENTS = 64  # spread by the kernel's hash over both listeners; P(all on the survivor) = 2**-64
PORT = 15001


@pytest.fixture
def pod_netns() -> Iterator[str]:
    name = f"pzt-trm{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.tcp_migrate_req=0"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _connect_all() -> list[socket.socket]:
    clients = []
    for _ in range(CLIENTS):
        client = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        client.sendall(b"x")
        clients.append(client)
    return clients


def _accept_queued(listener: socket.socket) -> int:
    """Every connection already queued on `listener` (the queue is filled before this runs: no waiting for more)."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        with conn:
            conn.setblocking(True)
            conn.settimeout(10)
            assert conn.recv(1) == b"x", "a migrated connection keeps its queued bytes"
        count += 1


@pytest.mark.parametrize("migrate", [True, False], ids=["migrate", "kernel-default"])
async def test_a_closed_listeners_queue_moves_to_its_sibling(pod_netns: str, migrate: bool) -> None:
    fd = os.open(netns.netns_path(pod_netns), os.O_RDONLY | os.O_CLOEXEC)
    old_env = PodNetns(fd, "old", migrate=migrate)
    new_env = PodNetns(fd, "new", migrate=migrate)
    try:
        old = await old_env.listener(PORT)
        new = await new_env.listener(PORT)
        clients = await asyncio.to_thread(netns.run_in_netns, pod_netns, _connect_all)
        try:
            old.close()  # the old instance stops: what sat in its queue migrates, or is reset
            accepted = _accept_queued(new)
            if migrate:
                assert accepted == CLIENTS
            else:
                assert accepted < CLIENTS, "the kernel's default resets a closed listener's queue"
        finally:
            for client in clients:
                client.close()
            new.close()
    finally:
        old_env.close()
        new_env.close()
        with contextlib.suppress(OSError):
            os.close(fd)

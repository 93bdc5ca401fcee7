"""SCM_RIGHTS helpers over real SEQPACKET socketpairs, passing real fds."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from pyztunnel.unixfd import close_fds, recv_with_fds, send_with_fds


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def test_passes_a_real_fd(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with tempfile.TemporaryFile() as f:
        await send_with_fds(a, b"hello", [f.fileno()])
        data, fds, flags = await asyncio.wait_for(recv_with_fds(b, 1024, 1), 2)
        try:
            assert (data, len(fds), flags) == (b"hello", 1, 0)
            mine, theirs = os.fstat(f.fileno()), os.fstat(fds[0])
            assert (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
            assert fds[0] != f.fileno()
            assert not os.get_inheritable(fds[0])  # MSG_CMSG_CLOEXEC
        finally:
            close_fds(fds)


async def test_passes_a_netns_fd(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        await send_with_fds(a, b"ns", [ns])
        _data, fds, _flags = await asyncio.wait_for(recv_with_fds(b, 1024, 1), 2)
        try:
            assert os.fstat(fds[0]).st_ino == os.stat("/proc/self/ns/net").st_ino
        finally:
            close_fds(fds)
    finally:
        os.close(ns)


async def test_waits_for_data(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    receiving = asyncio.ensure_future(recv_with_fds(b, 1024, 1))
    await asyncio.sleep(0)  # one loop iteration: the receiver parks and must not finish [noqa: sleep-ok]
    assert not receiving.done()
    await send_with_fds(a, b"late")
    assert await asyncio.wait_for(receiving, 2) == (b"late", [], 0)


async def test_reports_truncation(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    await send_with_fds(a, b"x" * 2000)
    data, fds, flags = await asyncio.wait_for(recv_with_fds(b, 1024, 1), 2)
    assert len(data) == 1024 and fds == [] and flags & socket.MSG_TRUNC


async def test_too_many_fds_sets_ctrunc_and_leaks_nothing(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    before = open_fds()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    await send_with_fds(a, b"two", [r1, r2, w1])
    close_fds([r1, w1, r2, w2])
    data, fds, flags = await asyncio.wait_for(recv_with_fds(b, 1024, 1), 2)
    assert data == b"two" and flags & socket.MSG_CTRUNC
    assert len(fds) <= 1
    close_fds(fds)
    assert open_fds() == before


async def test_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    assert await asyncio.wait_for(recv_with_fds(b, 1024, 1), 2) == (b"", [], 0)


async def test_cancelled_receive_releases_the_reader(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(recv_with_fds(b, 1024, 1), 0.05)
    # The reader slot was given back: a new receive works.
    await send_with_fds(a, b"again")
    assert (await asyncio.wait_for(recv_with_fds(b, 1024, 1), 2))[0] == b"again"


async def test_send_waits_when_the_peer_is_full() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        count = 0
        a.setblocking(False)
        while True:  # fill the queue
            try:
                a.send(b"y" * 512)
                count += 1
            except BlockingIOError:
                break
        sending = asyncio.ensure_future(send_with_fds(a, b"last"))
        await asyncio.sleep(0)  # one loop iteration, to check something has NOT happened [noqa: sleep-ok]
        assert not sending.done()
        received = 0
        while received < count:
            await recv_with_fds(b, 1024, 0)
            received += 1
        await asyncio.wait_for(sending, 2)
        assert (await recv_with_fds(b, 1024, 0))[0] == b"last"
    finally:
        a.close()
        b.close()

"""Unix sockets carrying file descriptors (SCM_RIGHTS) under asyncio.

Shared by the agent's ZDS server, the proxy's ZDS client and the proxy's listener handoff. Received fds are opened
close-on-exec (`MSG_CMSG_CLOEXEC`, as ztunnel does) and become the caller's to close. Nothing here times out by
itself: bound a call with `asyncio.wait_for`; a cancelled receive has received nothing, so it leaks nothing. One
receiver and one sender at a time per socket (each waits through the loop's reader/writer slot of the fd).
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import Sequence

_INT_SIZE = array.array("i").itemsize


async def _wait(sock: socket.socket, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def recvmsg_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int], int]:
    """One non-blocking `recvmsg`; raises BlockingIOError when nothing is there. See `recv_with_fds`."""
    data, ancdata, flags, _addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(maxfds * _INT_SIZE), socket.MSG_CMSG_CLOEXEC)
    flags &= ~socket.MSG_CMSG_CLOEXEC  # the kernel echoes our own request flag back
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            fds.extend(array.array("i", payload[:usable]))
    if len(fds) > maxfds:
        # The kernel only installs what fits in the control buffer; this guards against miscounting anyway.
        close_fds(fds[maxfds:])
        del fds[maxfds:]
        flags |= socket.MSG_CTRUNC
    return data, fds, flags


async def recv_with_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int], int]:
    """Receive one message with up to `maxfds` fds: (data, fds, flags).

    `flags` keeps `MSG_TRUNC` (the datagram was larger than `bufsize`) and `MSG_CTRUNC` (more fds were sent than fit;
    the kernel closed the rest) for the caller to judge. `data == b""` with no fds is end of stream. The caller owns
    every returned fd, also when it rejects the message.
    """
    sock.setblocking(False)
    while True:
        try:
            return recvmsg_fds(sock, bufsize, maxfds)
        except (BlockingIOError, InterruptedError):
            await _wait(sock, writable=False)


def sendmsg_fds(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> int:
    """One non-blocking `sendmsg` with `fds` as SCM_RIGHTS; raises BlockingIOError when it would block."""
    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    return sock.sendmsg([data], ancdata)


async def send_with_fds(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send one message, with `fds` as SCM_RIGHTS ancillary data when there are any. The fds stay the caller's."""
    sock.setblocking(False)
    while True:
        try:
            sent = sendmsg_fds(sock, data, fds)
        except (BlockingIOError, InterruptedError):
            await _wait(sock, writable=True)
            continue
        if sent != len(data):
            # Stream sockets may send partially; SEQPACKET/DGRAM never do. The fds went with the first part.
            data, fds = data[sent:], ()
            continue
        return

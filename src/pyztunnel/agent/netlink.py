"""pyroute2 bound to the calling thread's network namespace.

The netlink socket is created here, on the calling thread, and handed to pyroute2 (`use_socket`), so a thread that
entered a pod netns (`netns.run_in_netns`) configures that netns, with no helper process per namespace. pyroute2's
sync API runs its own event loop; it gets a stdlib selector loop, because uvloop (installed as the policy in our
processes) cannot watch netlink sockets, and the loop is closed here so nothing leaks per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

NETLINK_ROUTE = 0


@contextlib.contextmanager
def iproute() -> Iterator[Any]:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    loop = asyncio.SelectorEventLoop()
    try:
        ipr = IPRoute(use_socket=sock, use_event_loop=loop)
        try:
            yield ipr
        finally:
            ipr.close()
    finally:
        sock.close()
        loop.close()


@contextlib.contextmanager
def ignore_errno(*codes: int) -> Iterator[None]:
    """Make a netlink request idempotent: e.g. EEXIST for an address or rule that is already there."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code not in codes:
            raise

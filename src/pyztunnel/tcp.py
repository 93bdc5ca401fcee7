"""TCP socket options every component shares: no Nagle on proxied sockets, and the reset close.

A reset close sets SO_LINGER on with a 0 s timeout before closing, so the peer gets an RST whatever is queued: an
orderly FIN would read as a clean end of stream, and whether a plain close() resets depends on unread data (ztunnel
reference §1.4). Used for the drain deadline, a relay leg reset by its peer, and the test backends' forced close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_LINGER_RST = struct.pack("ii", 1, 0)


def nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY (ztunnel sets it too): with Nagle, a small HBONE frame waits for the ACK of the previous one
    whenever other streams keep data in flight, which caps request rates at the ACK clock."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _linger_zero(sock: socket.socket) -> None:
    # Already closed by the peer, or not a TCP socket: the close that follows still happens.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


def rst_close(sock: socket.socket) -> None:
    """Close so that the peer gets an RST."""
    _linger_zero(sock)
    sock.close()


def rst_abort(transport: asyncio.BaseTransport) -> None:
    """The same for an asyncio (or uvloop) transport: SO_LINGER 0 on its socket, then abort (close without
    flushing); a transport without abort() is closed."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        _linger_zero(sock)
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()

"""The Linux numbers the sans-IO modules use instead of importing `socket` are the socket module's own."""

from __future__ import annotations

import socket

from pyztunnel.protocols import linux


def test_the_constants_are_the_socket_modules() -> None:
    for name in ("AF_INET", "AF_INET6", "SOCK_STREAM", "MSG_CTRUNC", "MSG_TRUNC"):
        assert getattr(linux, name) == int(getattr(socket, name)), name

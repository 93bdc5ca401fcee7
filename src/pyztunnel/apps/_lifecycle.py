"""What both test backends share: binding with a clear error, the readiness line, and SIGTERM handling.

First SIGTERM/SIGINT: stop accepting and drain (as a Kubernetes pod should). A second one: stop at once.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys

from pyztunnel.errors import UserError
from pyztunnel.observe.servers import listening_socket


class Shutdown:
    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.signal)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def signal(self) -> None:
        if self.stop.is_set():
            self.force.set()
        self.stop.set()


def bind(name: str, host: str, port: int, backlog: int) -> socket.socket:
    try:
        return listening_socket(host, port, backlog)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"{name}: port {port} is already in use on {host}; choose another with --port") from None
        raise UserError(f"{name}: cannot listen on {host}:{port}: {exc.strerror}; check --host and --port") from None


def announce(name: str, sock: socket.socket) -> str:
    """Print the line tests and the cluster wait for: `<name> listening on <host>:<port>`."""
    host, port = sock.getsockname()[:2]
    line = f"{name} listening on {host}:{port}"
    print(line, file=sys.stdout, flush=True)
    return line

"""`pyztunnel tcp-echo`: a TCP server that echoes every byte back, the long-lived-connection backend.

Written on asyncio protocols (not streams) for throughput: a chunk read is written straight back, reading pauses when
the peer does not read (flow control, bounded memory), and a half-close is propagated: when the client shuts down its
sending side, the server echoes what is left and then sends its own FIN. On SIGTERM it stops accepting; existing
connections keep echoing until they close or --grace expires, then they are reset.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from pyztunnel import settings
from pyztunnel.aio import cancel_and_wait, install_uvloop, spawn
from pyztunnel.apps._lifecycle import Shutdown, announce, bind
from pyztunnel.settings import Duration, setting
from pyztunnel.tcp import nodelay, rst_abort

# Above this much unsent data the connection stops reading until the peer catches up.
WRITE_HIGH_WATER = 4 * 1024 * 1024
BACKLOG = 4096

_log = logging.getLogger("pyztunnel.apps.tcp_echo")


@settings.group("tcp-echo")
@dataclass(frozen=True)
class TcpEchoSettings:
    host: str = setting("0.0.0.0", "Address to listen on.")
    port: int = setting(9000, "TCP port to listen on (0: any free port).", ge=0, le=65535)
    grace: Duration = setting(
        Duration(30.0),
        "After SIGTERM, how long existing connections may keep echoing before they are reset.",
        ge=0,
    )


class EchoProtocol(asyncio.Protocol):
    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            nodelay(sock)
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool | None:
        # The client finished sending: echo what is buffered, then FIN (returning None closes after the flush).
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        return None

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)

    def reset(self) -> None:
        """Cut the connection with an RST (SO_LINGER 0), so the peer sees a reset, not a clean end of stream."""
        if self.transport is not None:
            rst_abort(self.transport)


class Connections:
    """The open connections, so a drain can wait for them to end."""

    def __init__(self) -> None:
        self.open: set[EchoProtocol] = set()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, conn: EchoProtocol) -> None:
        self.open.add(conn)
        self.empty.clear()

    def discard(self, conn: EchoProtocol) -> None:
        self.open.discard(conn)
        if not self.open:
            self.empty.set()


async def serve(
    cfg: TcpEchoSettings, shutdown: Shutdown, on_ready: Callable[[socket.socket], object] = lambda s: None
) -> None:
    sock = bind("tcp-echo", cfg.host, cfg.port, BACKLOG)
    connections = Connections()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoProtocol(connections), sock=sock, backlog=BACKLOG)
    on_ready(sock)
    try:
        await shutdown.stop.wait()
    finally:
        server.close()  # stop accepting; established connections are not touched
    _log.info("draining", extra={"fields": {"connections": len(connections.open), "grace": str(cfg.grace)}})
    drained = spawn(connections.empty.wait(), "tcp-echo-drained")
    forced = spawn(shutdown.force.wait(), "tcp-echo-forced")
    try:
        await asyncio.wait({drained, forced}, timeout=float(cfg.grace), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(drained, forced)
    if connections.open:
        _log.warning("grace expired, resetting connections", extra={"fields": {"connections": len(connections.open)}})
        for conn in list(connections.open):
            conn.reset()
    await server.wait_closed()


@click.command("tcp-echo")
@settings.cli_options(TcpEchoSettings)
def tcp_echo(**cli: Any) -> None:
    """Test backend: a TCP server that echoes bytes (graceful on SIGTERM)."""
    from pyztunnel.observe import logging as zlog

    cfg = settings.load(TcpEchoSettings, cli=cli)
    zlog.setup()
    install_uvloop()
    asyncio.run(_main(cfg))


async def _main(cfg: TcpEchoSettings) -> None:
    shutdown = Shutdown()
    shutdown.install()
    await serve(cfg, shutdown, lambda sock: announce("tcp-echo", sock))

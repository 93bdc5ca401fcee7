"""A relay's TCP legs on real loopback sockets send without Nagle, under uvloop (the proxy's loop: it sets TCP_NODELAY
on every TCP transport, so the leg does not ask for a socket object to set it again) and asyncio's own (which sets it
only on sockets it made, so the leg does)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop

from pyztunnel.proxy.relay import TcpLeg, connect_leg


async def _legs_nodelay() -> list[int]:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        sock = socket.socket()
        sock.setblocking(False)
        up = await connect_leg(sock, listener.getsockname(), 10)  # an upstream leg
        accepted, _ = await loop.sock_accept(listener)
        down = TcpLeg()
        await loop.connect_accepted_socket(lambda: down, accepted)  # an accepted (app) leg
        try:
            return [
                leg.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                for leg in (up, down)
                if leg.transport is not None
            ]
        finally:
            for leg in (up, down):
                leg.abort()


@pytest.mark.parametrize("new_loop", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"])
def test_tcp_legs_send_without_nagle(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        flags = runner.run(_legs_nodelay())
    assert len(flags) == 2 and all(flags)

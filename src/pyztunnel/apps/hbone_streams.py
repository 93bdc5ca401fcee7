"""HBONE as plain asyncio streams, for apps that terminate or originate HBONE themselves (the waypoint): one HTTP/2
connection over mutual TLS with ztunnel's settings (`protocols.h2wire.new_connection`), each CONNECT stream a
`Tunnel` with a StreamReader and a write side that honours the stream's flow-control window.

This is the simple, general shape (an app's data path, not the proxy's relay, which is written for speed). Memory
is bounded by HTTP/2's windows in both directions: received data is acknowledged only once the app has read it.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable

import h2.events

from pyztunnel.protocols import h2wire, hbone

Headers = list[tuple[bytes, bytes]]
READ_LIMIT = 4 * 1024 * 1024  # one stream window: what the peer may send before we acknowledge


class TunnelClosed(Exception):
    """The stream or its connection ended."""


class Tunnel:
    """One CONNECT stream. `reader` gets the peer's bytes; `write`/`drain` send ours within the peer's window."""

    def __init__(self, conn: H2Endpoint, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.reader = _AckingReader(self)
        self.response: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()
        self._pending = bytearray()
        self._eof_pending = False
        self._window_open = asyncio.Event()
        self._window_open.set()
        self.closed = False
        self.peer_ended = False  # END_STREAM came

    def write(self, data: bytes) -> None:
        if self.closed:
            raise TunnelClosed(f"stream {self.stream_id} is closed")
        self._pending += data
        self.conn.flush(self)

    def write_eof(self) -> None:
        self._eof_pending = True
        self.conn.flush(self)

    async def drain(self) -> None:
        while self._pending and not self.closed:
            self._window_open.clear()
            await self._window_open.wait()
        if self.closed and self._pending:
            raise TunnelClosed(f"stream {self.stream_id} closed with {len(self._pending)} bytes unsent")

    def reset(self) -> None:
        self.conn.reset(self)

    def _ended(self, error: Exception | None = None) -> None:
        self.closed = True
        self._window_open.set()
        if error is not None and not self.peer_ended:  # a stream the peer finished keeps its data for the reader
            self.reader.set_exception(error)
        else:
            self.reader.feed_eof()
        if not self.response.done():
            self.response.set_exception(error or TunnelClosed("stream ended before its response"))
            self.response.exception()  # marked retrieved: a server-side tunnel never awaits its response


class _AckingReader(asyncio.StreamReader):
    """Acknowledges data to HTTP/2 flow control as the app reads it, so a slow reader holds the peer back."""

    def __init__(self, tunnel: Tunnel) -> None:
        super().__init__(limit=READ_LIMIT)
        self._tunnel = tunnel

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        self._tunnel.conn.acknowledge(self._tunnel, len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await super().readexactly(n)
        self._tunnel.conn.acknowledge(self._tunnel, len(data))
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        data = await super().readuntil(separator)
        self._tunnel.conn.acknowledge(self._tunnel, len(data))
        return data


class H2Endpoint(asyncio.Protocol):
    """An HBONE connection. Server side: `on_connect(tunnel, headers)` for each CONNECT (answer with `respond`);
    client side: `await open(headers)`. `verify(transport)` runs once TLS is up (raise to refuse the peer)."""

    def __init__(
        self,
        client_side: bool,
        on_connect: Callable[[Tunnel, Headers], object] | None = None,
        verify: Callable[[asyncio.Transport], object] | None = None,
    ) -> None:
        self.h2 = h2wire.new_connection(client_side)
        self.on_connect = on_connect
        self.verify = verify
        self.tunnels: dict[int, Tunnel] = {}
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.peer: object = None
        self.refused: Exception | None = None  # why `verify` refused the peer
        # The peer sent GOAWAY (it is draining): streams in flight go on; an HTTP-aware user finishes its current
        # message and moves on (a new upstream connection, or `Connection: close` to its client).
        self.going_away = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's TLS transport is no asyncio.Transport
        transport = self.transport
        if self.verify is not None:
            try:
                self.peer = self.verify(transport)
            except Exception as exc:
                self.refused = exc
                transport.abort()
                return
        self._send()  # the preamble and SETTINGS new_connection queued

    def connection_lost(self, exc: Exception | None) -> None:
        for tunnel in list(self.tunnels.values()):
            tunnel._ended(TunnelClosed("connection lost"))
        self.tunnels.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def _send(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.abort()
            return
        for event in events:
            self._event(event)
        self._send()

    def _event(self, event: object) -> None:
        stream_id = getattr(event, "stream_id", 0)
        tunnel = self.tunnels.get(stream_id)
        if isinstance(event, h2.events.RequestReceived):
            tunnel = Tunnel(self, stream_id)
            self.tunnels[stream_id] = tunnel
            if self.on_connect is not None:
                self.on_connect(tunnel, list(event.headers))
        elif isinstance(event, h2.events.ResponseReceived):
            if tunnel is not None and not tunnel.response.done():
                tunnel.response.set_result(list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            if tunnel is not None:
                tunnel.reader.feed_data(event.data)
            padding = event.flow_controlled_length - (len(event.data) if tunnel is not None else 0)
            if padding:  # padding, or data for a stream we dropped: give the window back at once
                self.h2.acknowledge_received_data(padding, stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            if tunnel is not None:
                tunnel.peer_ended = True
                tunnel.reader.feed_eof()
        elif isinstance(event, h2.events.StreamReset):
            if tunnel is not None:
                del self.tunnels[stream_id]
                tunnel._ended(TunnelClosed(f"stream reset by the peer (code {event.error_code})"))
        elif isinstance(event, h2.events.WindowUpdated):
            for each in list(self.tunnels.values()):
                if stream_id in (0, each.stream_id):
                    self.flush(each)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            if event.error_code or not self.tunnels:
                self.close()

    # ------------------------------------------------------------------ used by tunnels
    def flush(self, tunnel: Tunnel) -> None:
        sid = tunnel.stream_id
        while tunnel._pending and not tunnel.closed:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                break
            chunk = bytes(tunnel._pending[:room])
            del tunnel._pending[:room]
            self.h2.send_data(sid, chunk)
        if not tunnel._pending:
            tunnel._window_open.set()
            if tunnel._eof_pending and not tunnel.closed:
                tunnel._eof_pending = False
                self.h2.end_stream(sid)
        self._send()

    def acknowledge(self, tunnel: Tunnel, size: int) -> None:
        if size and tunnel.stream_id in self.tunnels and not tunnel.closed:
            self.h2.acknowledge_received_data(size, tunnel.stream_id)
            self._send()

    def reset(self, tunnel: Tunnel) -> None:
        if self.tunnels.pop(tunnel.stream_id, None) is not None and not tunnel.closed:
            self.h2.reset_stream(tunnel.stream_id)
            self._send()
        tunnel._ended(TunnelClosed("reset"))
        self._close_if_done()

    def done(self, tunnel: Tunnel) -> None:
        """The user has finished with a stream (both ways): forget it; a connection going away closes after its last."""
        self.tunnels.pop(tunnel.stream_id, None)
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.going_away and not self.tunnels:
            self.close()

    def respond(self, tunnel: Tunnel, headers: Headers, end: bool = False) -> None:
        self.h2.send_headers(tunnel.stream_id, headers, end_stream=end)
        if end:
            self.tunnels.pop(tunnel.stream_id, None)
            tunnel._ended()
        self._send()

    async def open(self, headers: Headers) -> Tunnel:
        """A CONNECT; returns the tunnel once a 200 came back (TunnelClosed otherwise)."""
        if self.lost.done() or self.refused is not None or self.going_away:
            raise TunnelClosed(f"connection closed: {self.refused or 'lost'}")
        sid = self.h2.get_next_available_stream_id()
        tunnel = Tunnel(self, sid)
        self.tunnels[sid] = tunnel
        self.h2.send_headers(sid, headers)
        self._send()
        status = hbone.status_of(await tunnel.response)
        if status != 200:
            self.reset(tunnel)
            raise TunnelClosed(f"CONNECT answered {status}")
        return tunnel

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

"""A TLS transport on a socket BIO (issue 14): OpenSSL reads and writes the socket itself.

uvloop's SSL transport runs OpenSSL over memory BIOs: every received byte is copied into the incoming BIO, from it
into OpenSSL's record buffer, and every sent record out of the outgoing BIO into a `bytes` for the socket (callgrind:
three of the receiving hop's memcpys, and the BIO's growth its memset; docs/bench.md). Here a non-blocking
`ssl.SSLSocket` is driven by the event loop's reader/writer callbacks on its fd: `recv_into` decrypts straight into
the protocol's buffer (`asyncio.BufferedProtocol.get_buffer`), `send` encrypts straight onto the socket.

What it keeps of asyncio's transports: write-buffer flow control (`pause_writing`/`resume_writing` at high/low water
marks), `pause_reading`/`resume_reading`, `close` (the buffer is flushed, then close_notify; aborted after
`close_timeout`), `abort`, and `get_extra_info` (ssl_object, peercert, cipher, socket, sockname, peername). OpenSSL's
rules it follows: a write that returned SSL_ERROR_WANT_WRITE is retried with the same bytes (CPython sets no
partial-write mode, so a write takes a whole piece or none of it), either direction may need the other's readiness
(WANT_READ on a write, WANT_WRITE on a read), and data already decrypted inside OpenSSL (`pending()`) does not wake
epoll (OpenSSL reads no further ahead than the record it decrypts: the kernel holds the rest, and epoll sees it).

Its cost in the kernel: OpenSSL writes every record with its own `send` and reads every record with two `recv`s
(header, body), where uvloop moved a whole write or read through its BIOs in one (docs/bench.md).

`open_tls` is the one entry for both HBONE ends and both transports (`PYZTUNNEL_TLS_TRANSPORT`): the protocol does
not know which it has.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import fcntl
import logging
import socket
import ssl
import termios
import typing
from collections.abc import Callable
from typing import Any, ClassVar

_log = logging.getLogger("pyztunnel.proxy.tls")

MEMORY, SOCKET = "memory", "socket"
TRANSPORTS = (MEMORY, SOCKET)
HIGH_WATER = 64 * 1024  # asyncio's defaults
LOW_WATER = HIGH_WATER // 4
RECORD = 16 * 1024  # one TLS record's plaintext: what one SSL_read returns at most
CLOSE_TIMEOUT = 30.0  # the longest close() waits for the peer to take what is buffered (uvloop's shutdown timeout)
MAX_READ = 256 * 1024  # the most one wakeup reads before other connections get their turn (uvloop's read size)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, reading: bool) -> None:
    """Until the fd is readable (or writable)."""
    done = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    (loop.add_reader if reading else loop.add_writer)(fd, wake)
    try:
        await done
    finally:
        (loop.remove_reader if reading else loop.remove_writer)(fd)


async def handshake(sock: ssl.SSLSocket, handshake_timeout: float) -> None:
    """The TLS handshake on a non-blocking SSLSocket, within `handshake_timeout` (TimeoutError); ssl.SSLError or
    OSError if it fails."""
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    async with asyncio.timeout(handshake_timeout):
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await _ready(loop, fd, reading=True)
            except ssl.SSLWantWriteError:
                await _ready(loop, fd, reading=False)


class SocketTlsTransport(asyncio.Transport):
    """An established TLS connection on a non-blocking SSLSocket, for an `asyncio.BufferedProtocol`."""

    # What get_extra_info answers, computed when asked (the proxy asks for ssl_object only; parsing the peer's
    # certificate into a dict for every connection, as asyncio's SSL transports do, is work nobody reads).
    _EXTRA: ClassVar[dict[str, Callable[[ssl.SSLSocket], Any]]] = {
        "ssl_object": lambda s: s,
        "socket": lambda s: s,
        "peercert": lambda s: s.getpeercert(),
        "cipher": lambda s: s.cipher(),
        "compression": lambda s: s.compression(),
        "sslcontext": lambda s: s.context,
        "sockname": lambda s: s.getsockname(),
        "peername": lambda s: s.getpeername(),
    }

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, protocol: asyncio.BufferedProtocol):
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._backlog: collections.deque[bytes | bytearray | memoryview] = collections.deque()  # unsent, in order
        self._buffered = 0
        self._high, self._low = HIGH_WATER, LOW_WATER
        self._writing_paused = False  # the protocol was told pause_writing
        self._closing = False  # close() or abort(): no more writes accepted
        self._closed = False  # the fd is closed
        self._reading_paused = False
        self._reader = False  # add_reader is on
        self._writer = False  # add_writer is on
        self._read_wants_write = False  # the last SSL_read asked for writability
        self._write_wants_read = False  # the last SSL_write asked for readability
        self._want = RECORD  # the next read's size hint: grows while reads fill the buffer (bulk), back when not
        self.close_timeout = CLOSE_TIMEOUT
        self._count = array.array("i", [0])  # FIONREAD's answer
        self._read, self._write, self._pending = _calls(sock)
        self._close_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """connection_made, then reading."""
        self._protocol.connection_made(self)
        if not self._closing:
            self._watch()
            if self._pending():
                self._loop.call_soon(self._read_ready)

    # ------------------------------------------------------------------ reading
    def _read_ready(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            self._watch()
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush()
        if not self.is_reading():
            return
        read, protocol = self._read, self._protocol
        budget = MAX_READ
        try:
            while budget > 0:
                buf = typing.cast(memoryview, protocol.get_buffer(self._want))
                size, got, n = len(buf), 0, -1
                try:
                    while got < size:
                        n = read(size - got, buf[got:] if got else buf)
                        got += n
                        if n < RECORD and got < size and (not n or not self._queued()):
                            # EOF (0), or a record that was not full (so nothing of it is left: one read returns
                            # one record's bytes) and no byte behind it: asking OpenSSL again would cost the same
                            # recv syscall as FIONREAD, plus an SSLWantReadError (an exception per read)
                            break
                finally:
                    if got:
                        budget -= got
                        protocol.buffer_updated(got)
                if n == 0:  # a clean end of the stream (close_notify)
                    self._eof()
                    return
                if got < size:
                    self._want = RECORD
                    return
                self._want = min(2 * self._want, MAX_READ)  # there was more than the buffer held
                if not self.is_reading():  # the protocol paused or closed us
                    return
        except ssl.SSLWantReadError:
            self._want = RECORD
            return
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            self._watch()
            return
        except (OSError, ssl.SSLError) as exc:  # a reset, a ragged end (no close_notify), a bad record
            self._fatal(exc)
            return
        except Exception as exc:  # the protocol's bug: as asyncio's transports, the connection ends
            _log.exception("protocol error on a tls connection")
            self._fatal(exc)
            return
        if self._pending():  # out of budget with plaintext left inside OpenSSL: epoll would not say so
            self._loop.call_soon(self._read_ready)

    def _queued(self) -> int:
        """Bytes the kernel holds for us (not yet read by OpenSSL)."""
        fcntl.ioctl(self._fd, termios.FIONREAD, self._count, True)
        return self._count[0]

    def _eof(self) -> None:
        if self._closing:  # the protocol closed us meanwhile
            return
        self._reading_paused = True
        self._watch()
        if not self._protocol.eof_received():
            self.close()

    def pause_reading(self) -> None:
        self._reading_paused = True
        self._watch()

    def resume_reading(self) -> None:
        if self._reading_paused and not self._closing:
            self._reading_paused = False
            self._watch()
            if self._pending():
                self._loop.call_soon(self._read_ready)

    def is_reading(self) -> bool:
        return not (self._reading_paused or self._closing)

    # ------------------------------------------------------------------ writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing:
            return
        if not self._backlog and not self._write_wants_read:
            try:
                sent = self._write(data)
            except ssl.SSLWantWriteError:
                sent = 0  # OpenSSL keeps the records it made: the retry must pass the same bytes (kept below)
            except ssl.SSLWantReadError:
                sent, self._write_wants_read = 0, True
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            if sent:
                data = memoryview(data)[sent:]
        piece = data if _immutable(data) else bytes(data)  # the caller may reuse its buffer once write returns
        self._backlog.append(piece)
        self._buffered += len(piece)
        self._watch()
        if not self._writing_paused and self._buffered > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _write_ready(self) -> None:
        if not self._write_wants_read:  # else the write waits for readability, not this
            self._flush()
        if self._read_wants_write:
            self._read_wants_write = False
            self._watch()
            self._read_ready()

    def _flush(self) -> None:
        backlog, write = self._backlog, self._write
        while backlog:
            piece = backlog[0]
            try:
                sent = write(piece)
            except ssl.SSLWantWriteError:
                break
            except ssl.SSLWantReadError:
                self._write_wants_read = True
                break
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
            self._buffered -= sent
            if sent < len(piece):  # a partial write (only if someone set SSL_MODE_ENABLE_PARTIAL_WRITE)
                backlog[0] = memoryview(piece)[sent:]
                continue
            backlog.popleft()
        self._watch()
        if self._writing_paused and self._buffered <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()
        if self._closing and not backlog and not self._closed:
            self._shutdown()

    def can_write_eof(self) -> bool:
        return False  # TLS 1.3 has no half-close that HTTP/2 would use

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    # ------------------------------------------------------------------ the event loop's callbacks
    def _watch(self) -> None:
        """Reader and writer callbacks as the state needs them."""
        if self._closed:
            return
        read = (not self._reading_paused and not self._closing) or self._write_wants_read
        write = (bool(self._backlog) and not self._write_wants_read) or self._read_wants_write
        if read != self._reader:
            self._reader = read
            if read:
                self._loop.add_reader(self._fd, self._read_ready)
            else:
                self._loop.remove_reader(self._fd)
        if write != self._writer:
            self._writer = write
            if write:
                self._loop.add_writer(self._fd, self._write_ready)
            else:
                self._loop.remove_writer(self._fd)

    # ------------------------------------------------------------------ ending
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading, send what is buffered, then close_notify and close."""
        if self._closing:
            return
        self._closing = True
        self._watch()
        if not self._backlog:
            self._shutdown()
        else:  # a peer that reads nothing more must not hold the fd: as uvloop's ssl_shutdown_timeout
            self._close_timer = self._loop.call_later(self.close_timeout, self.abort)

    def _shutdown(self) -> None:
        # One SSL_shutdown sends our close_notify; waiting for the peer's would only hold the fd longer.
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            self._sock.unwrap()
        _discard_unread(self._sock)
        self._close_fd(None)

    def abort(self) -> None:
        self._close_fd(None)

    def _fatal(self, exc: Exception) -> None:
        _log.debug("tls transport error", extra={"fields": {"error": str(exc) or type(exc).__name__}})
        self._close_fd(exc)

    def _close_fd(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closing = True
        self._reading_paused = True
        self._backlog.clear()
        self._buffered = 0
        self._read_wants_write = self._write_wants_read = False
        self._watch()  # both callbacks off before the fd number can be reused
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._closed = True
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        get = self._EXTRA.get(name)
        if get is None:
            return default
        try:
            return get(self._sock)
        except (OSError, ValueError):  # closed, or no longer connected
            return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol = protocol


def _immutable(data: bytes | bytearray | memoryview) -> bool:
    """Bytes that cannot change under us: kept as they are, not copied."""
    return type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes)


def _calls(sock: ssl.SSLSocket) -> tuple[Callable[[int, memoryview], int], Callable[[Any], int], Callable[[], int]]:
    """read(n, buffer), write(data), pending() of the connection. The C-level `_ssl._SSLSocket` under an SSLSocket
    where this Python has it (read, never written): SSLSocket's own methods wrap each call in 2–3 Python frames
    (closed checks, argument defaults), which on the keep-alive path cost more than the memory-BIO copies saved."""
    raw = getattr(sock, "_sslobj", None)
    if raw is not None and all(callable(getattr(raw, name, None)) for name in ("read", "write", "pending")):
        return raw.read, raw.write, raw.pending
    return wrapped_calls(sock)


def wrapped_calls(
    sock: ssl.SSLSocket,
) -> tuple[Callable[[int, memoryview], int], Callable[[Any], int], Callable[[], int]]:
    """The same through SSLSocket's public methods."""
    return (lambda n, buffer: sock.recv_into(buffer, n)), sock.send, sock.pending


def _discard_unread(sock: socket.socket) -> None:
    """Read away what already arrived (the peer's last frames, its close_notify): closing a socket with unread data
    sends an RST instead of a FIN. Raw bytes, past TLS: nothing of it is used. Bounded; never waits."""
    for _ in range(16):
        try:
            if not socket.socket.recv(sock, 65536, socket.MSG_DONTWAIT):
                return
        except OSError:
            return


async def open_tls(
    protocol: asyncio.BufferedProtocol,
    sock: socket.socket,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    handshake_timeout: float,
    transport: str = SOCKET,
) -> asyncio.BaseTransport:
    """TLS on a connected socket (client) or an accepted one (server), handshake within `handshake_timeout`, then
    `protocol.connection_made`. `transport`: `socket` (SocketTlsTransport) or `memory` (uvloop's SSL transport).
    Raises OSError (ssl.SSLError included) or TimeoutError; the socket is closed then."""
    loop = asyncio.get_running_loop()
    if transport == MEMORY:
        if server_side:
            made, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=handshake_timeout
            )
        else:
            made, _ = await loop.create_connection(
                lambda: protocol, sock=sock, ssl=ctx, server_hostname="", ssl_handshake_timeout=handshake_timeout
            )
        return made
    try:
        sock.setblocking(False)
        tls = ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False, suppress_ragged_eofs=False)
    except BaseException:
        sock.close()
        raise
    try:
        await handshake(tls, handshake_timeout)
    except BaseException:
        tls.close()
        raise
    made = SocketTlsTransport(loop, tls, protocol)
    made.start()
    return made


__all__ = ["MEMORY", "SOCKET", "TRANSPORTS", "SocketTlsTransport", "handshake", "open_tls"]

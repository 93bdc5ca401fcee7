"""The HBONE TLS transports (proxy/tlssock.py's socket BIO and uvloop's memory BIO) against the same expectations, on
loopback with real TLS 1.3: handshake, its failures and deadline, bulk both ways, backpressure, the peer's endings
(close_notify, a reset or a FIN in the middle of a record), a peer that does not speak TLS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from pyztunnel.identity import tls
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.lifecycle.testing import poll
from pyztunnel.proxy import tlssock
from pyztunnel.proxy.tlssock import SOCKET, SocketTlsTransport, open_tls
from pyztunnel.tcp import rst_close
from tests.integration.proxy.harness import CLIENT_ID, SERVER_ID, roundtrip, start_mesh, stop_mesh

WITHIN = 20  # bound on every wait (never a timing assertion)


class Peer(asyncio.BufferedProtocol):
    """One end: hashes what it receives, records flow-control calls and how it ended."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(64 * 1024)
        self.digest = hashlib.sha256()
        self.received = 0
        self.wanted = -1
        self.got_all = asyncio.Event()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.digest.update(memoryview(self.buf)[:nbytes])
        self.received += nbytes
        if self.received == self.wanted:
            self.got_all.set()

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused.set()
        self.writable.clear()

    def resume_writing(self) -> None:
        self.resumed.set()
        self.writable.set()

    async def send(self, data: bytes, piece: int = 256 * 1024) -> None:
        """All of `data`, waiting whenever the transport says its buffer is full."""
        assert self.transport is not None
        for at in range(0, len(data), piece):
            await asyncio.wait_for(self.writable.wait(), WITHIN)
            self.transport.write(data[at : at + piece])


@dataclass
class Certs:
    server: WorkloadCert
    client: WorkloadCert
    stranger: WorkloadCert  # a certificate of another mesh (another root)


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca, other = CertificateAuthority.create("cluster.local"), CertificateAuthority.create("cluster.local")
    hour = timedelta(hours=1)
    return Certs(ca.issue(SERVER_ID, hour), ca.issue(CLIENT_ID, hour), other.issue(SERVER_ID, hour))


def payload(size: int, seed: bytes) -> bytes:
    block = hashlib.sha512(seed).digest() * 1024  # 64 KiB, not all zeroes
    return (block * (size // len(block) + 1))[:size]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """A connected client socket and its accepted server socket, both non-blocking."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        server, _ = await loop.sock_accept(listener)
        server.setblocking(False)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


@contextlib.asynccontextmanager
async def tls_pair(
    certs: Certs, tmp: Path, transport: str
) -> AsyncIterator[tuple[Peer, Peer, asyncio.BaseTransport, asyncio.BaseTransport]]:
    """Both ends over `transport`: (client, server, client transport, server transport)."""
    client, server = Peer(), Peer()
    async with tcp_pair() as (csock, ssock):
        made = await asyncio.gather(
            open_tls(
                client,
                csock,
                tls.client_context(certs.client, tmp),
                server_side=False,
                handshake_timeout=WITHIN,
                transport=transport,
            ),
            open_tls(
                server,
                ssock,
                tls.server_context(certs.server, tmp),
                server_side=True,
                handshake_timeout=WITHIN,
                transport=transport,
            ),
        )
        try:
            yield client, server, made[0], made[1]
        finally:
            for t in made:
                typing.cast(asyncio.Transport, t).abort()
            await asyncio.wait_for(asyncio.gather(client.lost, server.lost), WITHIN)


async def test_handshake_and_what_the_proxy_reads(tls_transport: str, certs: Certs, tmp_path: Path) -> None:
    async with tls_pair(certs, tmp_path, tls_transport) as (_client, _server, ct, st):
        assert tls.check_server_peer(ct.get_extra_info("ssl_object"), [SERVER_ID]) == SERVER_ID
        assert tls.check_client_peer(st.get_extra_info("ssl_object"), "cluster.local") == CLIENT_ID
        assert st.get_extra_info("peercert")
        assert ct.get_extra_info("sockname") == st.get_extra_info("peername")
        assert ct.get_extra_info("peername") == st.get_extra_info("sockname")
        assert (type(ct) is SocketTlsTransport) == (tls_transport == SOCKET)


async def test_an_untrusted_server_fails_both_ends_and_leaks_no_fd(
    tls_transport: str, certs: Certs, tmp_path: Path
) -> None:
    client_ctx, server_ctx = tls.client_context(certs.client, tmp_path), tls.server_context(certs.stranger, tmp_path)
    before = open_fds()
    async with tcp_pair() as (csock, ssock):
        results = await asyncio.gather(
            open_tls(Peer(), csock, client_ctx, server_side=False, handshake_timeout=WITHIN, transport=tls_transport),
            open_tls(Peer(), ssock, server_ctx, server_side=True, handshake_timeout=WITHIN, transport=tls_transport),
            return_exceptions=True,
        )
    assert isinstance(results[0], ssl.SSLCertVerificationError)
    assert isinstance(results[1], OSError)
    if tls_transport == SOCKET:  # uvloop opens one fd of its own at its first failed handshake (1 after 50 of them)
        await poll(lambda: open_fds() == before, WITHIN, "every fd of the connection closed")


async def test_a_silent_peer_is_cut_at_the_handshake_deadline(tls_transport: str, certs: Certs, tmp_path: Path) -> None:
    before = open_fds()
    async with tcp_pair() as (_csock, ssock):
        # uvloop raises ConnectionAbortedError, tlssock TimeoutError: the proxy takes both as a failed handshake
        with pytest.raises(TimeoutError if tls_transport == SOCKET else ConnectionAbortedError):
            ctx = tls.server_context(certs.server, tmp_path)
            await open_tls(Peer(), ssock, ctx, server_side=True, handshake_timeout=0.2, transport=tls_transport)
    if tls_transport == SOCKET:  # uvloop opens one fd of its own at its first failed handshake (1 after 50 of them)
        await poll(lambda: open_fds() == before, WITHIN, "every fd of the connection closed")


async def test_garbage_instead_of_tls_fails_the_handshake(tls_transport: str, certs: Certs, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with tcp_pair() as (csock, ssock):
        await loop.sock_sendall(csock, b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n" + os.urandom(4096))
        with pytest.raises(ssl.SSLError):
            ctx = tls.server_context(certs.server, tmp_path)
            await open_tls(Peer(), ssock, ctx, server_side=True, handshake_timeout=WITHIN, transport=tls_transport)


async def test_large_transfers_both_ways_at_once(tls_transport: str, certs: Certs, tmp_path: Path) -> None:
    up, down = payload(24 << 20, b"up"), payload(24 << 20, b"down")
    async with tls_pair(certs, tmp_path, tls_transport) as (client, server, _ct, _st):
        server.wanted, client.wanted = len(up), len(down)
        await asyncio.gather(client.send(up), server.send(down))
        await asyncio.wait_for(asyncio.gather(server.got_all.wait(), client.got_all.wait()), WITHIN)
        assert server.digest.digest() == hashlib.sha256(up).digest()
        assert client.digest.digest() == hashlib.sha256(down).digest()


async def test_on_sslsockets_public_methods_where_python_has_no_c_level_object(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tlssock, "_calls", tlssock.wrapped_calls)
    up, down = payload(4 << 20, b"up"), payload(4 << 20, b"down")
    async with tls_pair(certs, tmp_path, SOCKET) as (client, server, ct, _st):
        server.wanted, client.wanted = len(up), len(down)
        await asyncio.gather(client.send(up), server.send(down))
        await asyncio.wait_for(asyncio.gather(server.got_all.wait(), client.got_all.wait()), WITHIN)
        assert server.digest.digest() == hashlib.sha256(up).digest()
        assert client.digest.digest() == hashlib.sha256(down).digest()
        ct.close()
        assert await asyncio.wait_for(server.lost, WITHIN) is None
        assert server.eof


async def test_a_slow_reader_pauses_the_writer_and_nothing_is_lost(
    tls_transport: str, certs: Certs, tmp_path: Path
) -> None:
    data = payload(16 << 20, b"slow")
    async with tls_pair(certs, tmp_path, tls_transport) as (client, server, ct, st):
        server.wanted = len(data)
        st.pause_reading()  # type: ignore[attr-defined]
        sending = asyncio.ensure_future(client.send(data, piece=16 * 1024))
        try:
            await asyncio.wait_for(client.paused.wait(), WITHIN)  # the buffer filled: the writer was told
            assert ct.get_write_buffer_size() > 0  # type: ignore[attr-defined]
            assert not sending.done()
            st.resume_reading()  # type: ignore[attr-defined]
            await asyncio.wait_for(client.resumed.wait(), WITHIN)
            await asyncio.wait_for(sending, WITHIN)
            await asyncio.wait_for(server.got_all.wait(), WITHIN)
        finally:
            sending.cancel()
        assert server.digest.digest() == hashlib.sha256(data).digest()


async def test_a_buffer_reused_after_write_changes_nothing_sent(
    tls_transport: str, certs: Certs, tmp_path: Path
) -> None:
    """What waits in the write buffer is the bytes written, not the caller's buffer (which a relay reuses)."""
    data = payload(8 << 20, b"reuse")
    async with tls_pair(certs, tmp_path, tls_transport) as (client, server, ct, st):
        server.wanted = len(data)
        st.pause_reading()  # type: ignore[attr-defined]
        scratch = bytearray(64 * 1024)
        view = memoryview(scratch)
        assert client.transport is not None
        for at in range(0, len(data), len(scratch)):
            scratch[:] = data[at : at + len(scratch)]
            client.transport.write(view[: len(scratch) // 2])
            client.transport.write(scratch[len(scratch) // 2 :])
        assert ct.get_write_buffer_size() > 0  # type: ignore[attr-defined]
        scratch[:] = bytes(len(scratch))
        st.resume_reading()  # type: ignore[attr-defined]
        await asyncio.wait_for(server.got_all.wait(), WITHIN)
        assert server.digest.digest() == hashlib.sha256(data).digest()


async def test_close_sends_everything_then_close_notify(tls_transport: str, certs: Certs, tmp_path: Path) -> None:
    data = payload(4 << 20, b"close")
    async with tls_pair(certs, tmp_path, tls_transport) as (client, server, ct, _st):
        await client.send(data)
        ct.close()  # with most of it still buffered
        assert await asyncio.wait_for(server.lost, WITHIN) is None
        assert server.eof
        assert server.received == len(data)
        assert server.digest.digest() == hashlib.sha256(data).digest()


async def test_close_gives_up_on_a_peer_that_reads_nothing_more(certs: Certs, tmp_path: Path) -> None:
    """The socket transport's bound: what is buffered at close() waits for the peer `close_timeout` at most."""
    async with tls_pair(certs, tmp_path, SOCKET) as (client, server, ct, st):
        st.pause_reading()  # type: ignore[attr-defined]
        sending = asyncio.ensure_future(client.send(payload(16 << 20, b"stuck"), piece=16 * 1024))
        try:
            await asyncio.wait_for(client.paused.wait(), WITHIN)
        finally:
            sending.cancel()
        typing.cast(SocketTlsTransport, ct).close_timeout = 0.1
        ct.close()
        assert await asyncio.wait_for(client.lost, WITHIN) is None
        assert not server.lost.done()


async def _raw_client(sock: socket.socket, ctx: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.MemoryBIO]:
    """A TLS client over memory BIOs whose every byte on the wire is ours to cut."""
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            await loop.sock_sendall(sock, outgoing.read())
            incoming.write(await asyncio.wait_for(loop.sock_recv(sock, 65536), WITHIN))
    await loop.sock_sendall(sock, outgoing.read())  # the client's Finished
    return obj, outgoing


@pytest.mark.parametrize("how", ["reset", "fin", "garbage"])
async def test_a_peer_that_ends_in_the_middle_of_a_record(
    tls_transport: str, how: str, certs: Certs, tmp_path: Path
) -> None:
    """A whole record, half a record, then an RST (or a FIN without close_notify), or a record that does not
    decrypt: nothing of it is delivered, the connection ends (with an error on the socket transport: the stream was
    cut, not closed)."""
    loop = asyncio.get_running_loop()
    server = Peer()
    async with tcp_pair() as (csock, ssock):
        opening = asyncio.ensure_future(
            open_tls(
                server,
                ssock,
                tls.server_context(certs.server, tmp_path),
                server_side=True,
                handshake_timeout=WITHIN,
                transport=tls_transport,
            )
        )
        obj, outgoing = await _raw_client(csock, tls.client_context(certs.client, tmp_path))
        await asyncio.wait_for(opening, WITHIN)
        obj.write(b"whole")
        whole = outgoing.read()
        obj.write(b"x" * 4000)
        record = outgoing.read()
        if how == "garbage":  # a bad record after a good one: the connection ends at it
            await loop.sock_sendall(csock, whole + b"\x17\x03\x03\x00\x20" + os.urandom(32))
        else:
            await loop.sock_sendall(csock, whole + record[: len(record) // 2])
        if how == "reset":
            rst_close(csock)
        elif how == "fin":
            csock.shutdown(socket.SHUT_WR)
        exc = await asyncio.wait_for(server.lost, WITHIN)
    # An RST may overtake what was not read yet (the kernel then drops it); a FIN never does. uvloop drops a good
    # record decrypted in the same read as a bad one; tlssock delivers it.
    whole_kept = how == "fin" or (how == "garbage" and tls_transport == SOCKET)
    assert server.received == len(b"whole") if whole_kept else server.received in (0, len(b"whole"))
    if tls_transport == SOCKET:
        assert isinstance(exc, OSError)


async def test_hbone_through_two_proxies_on_the_socket_transport(tmp_path: Path) -> None:
    mesh = await start_mesh(tmp_path, PYZTUNNEL_TLS_TRANSPORT=SOCKET)
    server = await asyncio.start_server(_echo, mesh.b_ip, mesh.app_port)
    try:
        await roundtrip(mesh)
        (conn,) = mesh.pod_a.pool.connections
        assert type(conn.transport) is SocketTlsTransport
    finally:
        server.close()
        await server.wait_closed()
        await stop_mesh(mesh)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()

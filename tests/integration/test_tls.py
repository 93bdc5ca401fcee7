"""HBONE TLS on loopback sockets: real handshakes between the contexts of pyztunnel.identity.tls."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pyztunnel.identity import tls
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.identity.spiffe import Identity
from tests.conftest import require

HANDSHAKE_TIMEOUT = 0.5
BOUND = 10.0  # no single step of these tests may take longer
SERVER_ID = Identity("cluster.local", "shop", "cart")
CLIENT_ID = Identity("cluster.local", "web", "frontend")

Check = Callable[[ssl.SSLObject], Identity]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster.local")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create("other.domain")


@pytest.fixture
def key_dir(tmp_path: Path) -> Iterator[Path]:
    cache = tls.ContextCache(tmp_path / "keys")
    yield cache.key_dir
    cache.close()


def issue(ca: CertificateAuthority, identity: Identity, *, expired: bool = False) -> WorkloadCert:
    now = datetime.now(UTC).replace(microsecond=0)
    if expired:
        return ca.issue(identity, timedelta(hours=1), now=now - timedelta(hours=2))
    return ca.issue(identity, timedelta(hours=1), now=now - timedelta(minutes=1))


class Server:
    """Accepts one TCP connection and runs the TLS server handshake on it with `ctx`, recording the outcome.

    `connect_accepted_socket(ssl=…)` raises when the handshake fails, so server-side failures are observable (a
    plain `start_server(ssl=…)` would only log them). It behaves the same on asyncio's loop and on uvloop.
    """

    def __init__(self, ctx: ssl.SSLContext, check: Check) -> None:
        self.ctx, self.check = ctx, check
        self.outcome: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()
        self.listener = socket.socket()
        self.port = 0
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Server:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.task = asyncio.ensure_future(self._serve_one())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.listener.close()

    async def _serve_one(self) -> None:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.listener)
        reader = asyncio.StreamReader()
        transport: asyncio.Transport | None = None
        try:
            transport, _protocol = await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(reader),
                conn,
                ssl=self.ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
            peer = self.check(transport.get_extra_info("ssl_object"))
            transport.write(b"ok")
            self.outcome.set_result(peer)
        except Exception as exc:
            self.outcome.set_exception(exc)
        finally:
            if transport is not None:
                transport.close()
            else:
                conn.close()

    async def result(self) -> Identity:
        return await asyncio.wait_for(self.outcome, BOUND)


async def connect(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # server_hostname="" is how asyncio sends no SNI (ztunnel's client sends none)
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="", ssl_handshake_timeout=HANDSHAKE_TIMEOUT * 4
        ),
        BOUND,
    )


@pytest.fixture
async def pair(ca: CertificateAuthority, key_dir: Path) -> AsyncIterator[dict[str, Any]]:
    server_cert, client_cert = issue(ca, SERVER_ID), issue(ca, CLIENT_ID)
    yield {
        "server_ctx": tls.server_context(server_cert, key_dir),
        "client_ctx": tls.client_context(client_cert, key_dir),
    }


def server_check(obj: ssl.SSLObject) -> Identity:
    return tls.check_client_peer(obj, "cluster.local")


async def test_mtls_handshake_h2_tls13_identities(pair: dict[str, Any]) -> None:
    seen_sni: list[str | None] = []
    server_ctx: ssl.SSLContext = pair["server_ctx"]
    server_ctx.sni_callback = lambda _obj, name, _ctx: seen_sni.append(name)
    async with Server(server_ctx, server_check) as server:
        reader, writer = await connect(server.port, pair["client_ctx"])
        obj = writer.get_extra_info("ssl_object")
        assert tls.check_server_peer(obj, [Identity("cluster.local", "x", "y"), SERVER_ID]) == SERVER_ID
        assert obj.version() == "TLSv1.3"
        assert obj.selected_alpn_protocol() == "h2"
        assert obj.cipher()[0] in tls.AES_GCM_SUITES
        assert await asyncio.wait_for(reader.read(2), BOUND) == b"ok"
        assert await server.result() == CLIENT_ID
        assert seen_sni == [None]
        writer.close()


async def expect_server_failure(server: Server, ctx: ssl.SSLContext) -> BaseException:
    """Connect with `ctx`; the server side must fail. Returns the server's exception."""
    try:
        _reader, writer = await connect(server.port, ctx)
        writer.close()
    except (ssl.SSLError, ConnectionError, TimeoutError):
        pass  # with TLS 1.2 or a bad server cert the client fails too
    with pytest.raises(Exception) as info:
        await server.result()
    return info.value


async def test_rejects_client_without_certificate(ca: CertificateAuthority, pair: dict[str, Any]) -> None:
    bare = tls._base(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=ca.root_pem)
    async with Server(pair["server_ctx"], server_check) as server:
        exc = await expect_server_failure(server, bare)
    assert isinstance(exc, ssl.SSLError)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(exc)


async def test_rejects_client_cert_of_another_root(
    ca: CertificateAuthority, other_ca: CertificateAuthority, key_dir: Path, pair: dict[str, Any]
) -> None:
    foreign = issue(other_ca, Identity("other.domain", "web", "frontend"))
    ctx = tls.client_context(WorkloadCert(foreign.identity, foreign.chain, ca.root_pem, foreign.key_pem), key_dir)
    async with Server(pair["server_ctx"], server_check) as server:
        exc = await expect_server_failure(server, ctx)
    assert isinstance(exc, ssl.SSLError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc)


async def test_rejects_client_identity_of_another_trust_domain(
    ca: CertificateAuthority, key_dir: Path, pair: dict[str, Any]
) -> None:
    # Same root, so the chain verifies; the SAN's trust domain is what the server refuses.
    ctx = tls.client_context(issue(ca, Identity("other.domain", "web", "frontend")), key_dir)
    async with Server(pair["server_ctx"], server_check) as server:
        exc = await expect_server_failure(server, ctx)
    assert isinstance(exc, tls.TlsError)
    assert "trust domain cluster.local" in str(exc)


async def test_rejects_expired_client_cert(ca: CertificateAuthority, key_dir: Path, pair: dict[str, Any]) -> None:
    ctx = tls.client_context(issue(ca, CLIENT_ID, expired=True), key_dir)
    async with Server(pair["server_ctx"], server_check) as server:
        exc = await expect_server_failure(server, ctx)
    assert "certificate has expired" in str(exc)


async def test_client_rejects_expired_server_cert(
    ca: CertificateAuthority, key_dir: Path, pair: dict[str, Any]
) -> None:
    ctx = tls.server_context(issue(ca, SERVER_ID, expired=True), key_dir)
    async with Server(ctx, server_check) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            await connect(server.port, pair["client_ctx"])
        with pytest.raises(Exception):  # noqa: B017 - the server side just sees the client's alert
            await server.result()


async def test_client_rejects_wrong_server_identity(pair: dict[str, Any]) -> None:
    async with Server(pair["server_ctx"], server_check) as server:
        _reader, writer = await connect(server.port, pair["client_ctx"])
        with pytest.raises(tls.TlsError, match="none of the expected"):
            tls.check_server_peer(writer.get_extra_info("ssl_object"), [Identity("cluster.local", "shop", "other")])
        writer.close()
        await server.result()


async def test_rejects_alpn_other_than_h2(ca: CertificateAuthority, key_dir: Path, pair: dict[str, Any]) -> None:
    ctx = tls.client_context(issue(ca, CLIENT_ID), key_dir)
    ctx.set_alpn_protocols(["http/1.1"])
    async with Server(pair["server_ctx"], server_check) as server:
        _reader, writer = await connect(server.port, ctx)
        with pytest.raises(tls.TlsError, match="ALPN None negotiated"):
            tls.check_server_peer(writer.get_extra_info("ssl_object"), [SERVER_ID])
        with pytest.raises(tls.TlsError, match="ALPN None negotiated"):
            await server.result()
        writer.close()


async def test_rejects_tls12(ca: CertificateAuthority, pair: dict[str, Any]) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca.root_pem)
    ctx.set_alpn_protocols(["h2"])
    async with Server(pair["server_ctx"], server_check) as server:
        exc = await expect_server_failure(server, ctx)
    assert isinstance(exc, ssl.SSLError)
    assert "UNSUPPORTED_PROTOCOL" in str(exc) or "VERSION" in str(exc)


async def test_rejects_chacha20_only_client(ca: CertificateAuthority, key_dir: Path, pair: dict[str, Any]) -> None:
    # A client restricted to ChaCha20 needs the ctypes cipher-suite call; locally it may be missing, in CI it must work.
    require(
        tls.restrict_tls13_ciphersuites(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)), "SSL_CTX_set_ciphersuites via ctypes"
    )
    ctx = tls.client_context(issue(ca, CLIENT_ID), key_dir)
    assert tls.set_tls13_ciphersuites(ctx, ["TLS_CHACHA20_POLY1305_SHA256"])
    async with Server(pair["server_ctx"], server_check) as server:
        exc = await expect_server_failure(server, ctx)
    assert isinstance(exc, ssl.SSLError)
    assert "NO_SHARED_CIPHER" in str(exc)


async def test_rejects_garbage_instead_of_client_hello(pair: dict[str, Any]) -> None:
    async with Server(pair["server_ctx"], server_check) as server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ssl.SSLError):
            await server.result()
        writer.close()


async def test_handshake_that_never_completes_times_out(pair: dict[str, Any]) -> None:
    async with Server(pair["server_ctx"], server_check) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = asyncio.get_running_loop().time()
        with pytest.raises((ConnectionAbortedError, TimeoutError)):
            await server.result()
        assert asyncio.get_running_loop().time() - started < HANDSHAKE_TIMEOUT + 2
        assert await asyncio.wait_for(reader.read(), BOUND) == b""  # the server closed the connection
        writer.close()


async def test_switching_server_context_follows_rotation(
    ca: CertificateAuthority, key_dir: Path, pair: dict[str, Any]
) -> None:
    cache = tls.ContextCache(key_dir)
    current: list[WorkloadCert] = [issue(ca, SERVER_ID)]
    listener_ctx = tls.switching_server_context(lambda: cache.server(current[0]))
    for _ in range(2):
        async with Server(listener_ctx, server_check) as server:
            _reader, writer = await connect(server.port, pair["client_ctx"])
            obj = writer.get_extra_info("ssl_object")
            assert tls.check_server_peer(obj, [SERVER_ID]) == SERVER_ID
            assert int(obj.getpeercert()["serialNumber"], 16) == current[0].serial
            assert await server.result() == CLIENT_ID
            writer.close()
        current[0] = issue(ca, SERVER_ID)  # rotated: the next handshake must present the new one


async def test_switching_server_context_without_cert_aborts(pair: dict[str, Any]) -> None:
    async with Server(tls.switching_server_context(lambda: None), server_check) as server:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await connect(server.port, pair["client_ctx"])
        with pytest.raises(ssl.SSLError):
            await server.result()


def test_key_files_never_outlive_loading(ca: CertificateAuthority, tmp_path: Path) -> None:
    cache = tls.ContextCache(tmp_path / "keys")
    cert = issue(ca, SERVER_ID)
    first = cache.server(cert)
    assert cache.server(cert) is first  # cached per certificate
    assert cache.client(cert) is cache.client(cert)
    mine = tls.private_dir(cache.key_dir)
    assert oct(mine.stat().st_mode & 0o777) == "0o700"
    assert list(mine.iterdir()) == []
    assert cache.server(issue(ca, SERVER_ID)) is not first  # a rotated certificate gets a new context
    cache.close()
    assert not mine.exists()


def test_contexts_allow_only_tls13_aes_gcm(ca: CertificateAuthority, key_dir: Path) -> None:
    cert = issue(ca, SERVER_ID)
    for ctx in (tls.server_context(cert, key_dir), tls.client_context(cert, key_dir)):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        suites = sorted(c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3")
        assert suites == sorted(tls.AES_GCM_SUITES)


async def test_switching_server_context_verifies_with_the_chosen_context(
    ca: CertificateAuthority, other_ca: CertificateAuthority, key_dir: Path
) -> None:
    # The listener context has no roots of its own: verification and cipher suites must come from the chosen one.
    cache = tls.ContextCache(key_dir)
    server_cert = issue(ca, SERVER_ID)
    listener_ctx = tls.switching_server_context(lambda: cache.server(server_cert))
    foreign = issue(other_ca, Identity("other.domain", "web", "frontend"))
    foreign_ctx = tls.client_context(
        WorkloadCert(foreign.identity, foreign.chain, ca.root_pem, foreign.key_pem), key_dir
    )
    async with Server(listener_ctx, server_check) as server:
        exc = await expect_server_failure(server, foreign_ctx)
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
    if tls.restrict_tls13_ciphersuites(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)):
        chacha = tls.client_context(issue(ca, CLIENT_ID), key_dir)
        assert tls.set_tls13_ciphersuites(chacha, ["TLS_CHACHA20_POLY1305_SHA256"])
        async with Server(listener_ctx, server_check) as server:
            exc = await expect_server_failure(server, chacha)
        assert "NO_SHARED_CIPHER" in str(exc)


def test_same_behaviour_under_uvloop(ca: CertificateAuthority, key_dir: Path) -> None:
    """The proxy runs on uvloop: its SSL implementation must give the same outcomes."""
    import uvloop

    async def scenario() -> None:
        server_ctx = tls.server_context(issue(ca, SERVER_ID), key_dir)
        client_ctx = tls.client_context(issue(ca, CLIENT_ID), key_dir)
        async with Server(server_ctx, server_check) as server:
            reader, writer = await connect(server.port, client_ctx)
            assert tls.check_server_peer(writer.get_extra_info("ssl_object"), [SERVER_ID]) == SERVER_ID
            assert await asyncio.wait_for(reader.read(2), BOUND) == b"ok"
            assert await server.result() == CLIENT_ID
            writer.close()
        wrong_td = tls.client_context(issue(ca, Identity("other.domain", "web", "frontend")), key_dir)
        async with Server(server_ctx, server_check) as server:
            assert isinstance(await expect_server_failure(server, wrong_td), tls.TlsError)
        async with Server(server_ctx, server_check) as server:
            _reader, raw = await asyncio.open_connection("127.0.0.1", server.port)
            with pytest.raises((ConnectionAbortedError, TimeoutError)):
                await server.result()
            raw.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())

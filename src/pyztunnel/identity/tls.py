"""TLS contexts for HBONE, as ztunnel sets up rustls (reference §3.1), with the stdlib `ssl` module.

Both sides: TLS 1.3 only, ALPN `h2`, cipher suites TLS_AES_256_GCM_SHA384 and TLS_AES_128_GCM_SHA256 only, no
session tickets or resumption. The server requires a client certificate chaining to the mesh roots; the client verifies
the server's chain against the roots, ignores DNS names and sends no SNI.

How the proxy uses this module:

    contexts = ContextCache(key_dir)
    ctx = contexts.server(cert)                     # or contexts.client(cert); cached per certificate
    # ... TLS handshake with asyncio (ssl_handshake_timeout=...), then on the SSLObject:
    peer = check_client_peer(ssl_object, cert.identity.trust_domain)        # inbound (server side)
    peer = check_server_peer(ssl_object, [expected identities])             # outbound (client side)

Both checks raise `TlsError` (close the connection) and return the peer identity (first parsable SPIFFE URI SAN).
`switching_server_context(current)` gives a listener a context that picks the current certificate at every
ClientHello, so a rotated certificate is used without restarting the listener.

Cipher suites: Python 3.11 has no API for TLS 1.3 suites (`set_ciphers` only covers TLS ≤ 1.2), and OpenSSL's default
list includes ChaCha20. `restrict_tls13_ciphersuites` calls OpenSSL's `SSL_CTX_set_ciphersuites` through ctypes on
the context's own `SSL_CTX` (found in the CPython object, checked against the libssl mapped into this process, its
version, and `SSL_CTX_get_options`, then verified with `get_ciphers()`). If any check fails it changes nothing and
returns False; the post-handshake checks reject a non-AES-GCM suite in every case, so that path stays safe.

Keys: `ssl` loads certificates and keys only from files. Each load writes the chain and key to a fresh 0600 file in a
private 0700 directory, loads it, and deletes it at once: no key file outlives the `load_cert_chain` call.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import logging
import os
import secrets
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.identity.spiffe import Identity, first_identity, trust_domain_of

log = logging.getLogger(__name__)

ALPN_H2 = "h2"
AES_GCM_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")
_SSLObj = ssl.SSLObject | ssl.SSLSocket


class TlsError(Exception):
    """The peer or the negotiated session is not acceptable for HBONE; the connection must be closed."""


# ---------------------------------------------------------------------------------------------- cipher suites


class _LibSsl:
    """The libssl this process's `_ssl` module uses, and the three functions we need from it."""

    def __init__(self) -> None:
        path = _mapped_libssl()
        if path is None:
            raise OSError("no libssl mapped into this process")
        lib = ctypes.CDLL(path)
        version_num = lib.OpenSSL_version_num
        version_num.restype = ctypes.c_ulong
        version_num.argtypes = []
        if version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError(f"{path} is OpenSSL {version_num():#x}, the ssl module uses {ssl.OPENSSL_VERSION_NUMBER:#x}")
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.restype = ctypes.c_uint64
        self.get_options.argtypes = [ctypes.c_void_p]
        self.set_ciphersuites = lib.SSL_CTX_set_ciphersuites
        self.set_ciphersuites.restype = ctypes.c_int
        self.set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]


def _mapped_libssl() -> str | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ")[-1]
                if "/libssl.so" in path:
                    return path
    except OSError:
        return None
    return None


_libssl: _LibSsl | None = None
_libssl_error: str | None = None
_libssl_lock = threading.Lock()


def _get_libssl() -> _LibSsl | None:
    global _libssl, _libssl_error
    with _libssl_lock:
        if _libssl is None and _libssl_error is None:
            try:
                _libssl = _LibSsl()
            except (OSError, AttributeError) as exc:
                _libssl_error = str(exc)
                log.warning("cannot restrict TLS 1.3 cipher suites; relying on the post-handshake check: %s", exc)
        return _libssl


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: _LibSsl) -> int | None:
    """The `SSL_CTX *` of a CPython SSLContext: the first field after the object header (CPython 3.8–3.13)."""
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount") or sys.version_info >= (3, 15):
        return None  # other layouts (PyPy, debug builds, versions not checked): don't guess
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.get_options(pointer) != ctx.options:
        return None
    return pointer


def set_tls13_ciphersuites(ctx: ssl.SSLContext, suites: Iterable[str]) -> bool:
    """Set the context's TLS 1.3 cipher suites; True if done and verified (see the module doc)."""
    wanted = list(suites)
    lib = _get_libssl()
    if lib is None:
        return False
    pointer = _ssl_ctx_pointer(ctx, lib)
    if pointer is None:
        log.warning("cannot locate SSL_CTX of an SSLContext; relying on the post-handshake cipher check")
        return False
    if lib.set_ciphersuites(pointer, ":".join(wanted).encode()) != 1:
        return False
    got = [c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"]
    return sorted(got) == sorted(wanted)


def restrict_tls13_ciphersuites(ctx: ssl.SSLContext) -> bool:
    """Allow only AES-GCM in TLS 1.3 on `ctx` (ztunnel's list). False when not possible here."""
    return set_tls13_ciphersuites(ctx, AES_GCM_SUITES)


# ---------------------------------------------------------------------------------------------- contexts


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.options |= ssl.OP_NO_TICKET
    restrict_tls13_ciphersuites(ctx)
    return ctx


def private_dir(key_dir: Path) -> Path:
    """This process's 0700 directory for transient key files (under `key_dir`, which is created 0700 if missing)."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mine = key_dir / f"p{os.getpid()}"
    if not mine.is_dir():
        mine.mkdir(mode=0o700)
        atexit.register(_remove_dir, mine)  # files never outlive a load; the directory goes at exit
    os.chmod(mine, 0o700)
    return mine


def _remove_dir(path: Path) -> None:
    if path.is_dir():
        for leftover in path.iterdir():
            leftover.unlink(missing_ok=True)
        path.rmdir()


def _load_cert(ctx: ssl.SSLContext, cert: WorkloadCert, key_dir: Path) -> None:
    """Load chain and key through a 0600 file that is deleted as soon as `ssl` has read it."""
    path = private_dir(key_dir) / f"{secrets.token_hex(8)}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert.key_pem)
            f.write(cert.chain_pem)
        ctx.load_cert_chain(path)
    finally:
        path.unlink(missing_ok=True)


def server_context(cert: WorkloadCert, key_dir: Path) -> ssl.SSLContext:
    """Inbound HBONE: present `cert`, require a client certificate chaining to `cert.roots`."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.roots)
    _load_cert(ctx, cert, key_dir)
    return ctx


def client_context(cert: WorkloadCert, key_dir: Path) -> ssl.SSLContext:
    """Outbound HBONE: present `cert`, verify the server against `cert.roots` (no hostname check; send no SNI)."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # identities are checked by check_server_peer; DNS names are ignored, as ztunnel
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.roots)
    _load_cert(ctx, cert, key_dir)
    return ctx


def switching_server_context(current: Callable[[], ssl.SSLContext | None]) -> ssl.SSLContext:
    """A listener context that, at each ClientHello, switches the connection to `current()` (the live certificate).

    `current` runs in the handshake; it must not block. When it returns None the handshake is aborted.
    """
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_REQUIRED

    def pick(obj: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        chosen = current()
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        obj.context = chosen
        return None

    ctx.sni_callback = pick  # called for every ClientHello, with or without SNI
    return ctx


@dataclasses.dataclass
class _Entry:
    fingerprint: str
    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None


class ContextCache:
    """Server and client contexts per identity, rebuilt when that identity's certificate changes."""

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = key_dir
        self._entries: dict[Identity, _Entry] = {}

    def _entry(self, cert: WorkloadCert) -> _Entry:
        entry = self._entries.get(cert.identity)
        if entry is None or entry.fingerprint != cert.fingerprint:
            entry = _Entry(cert.fingerprint)
            self._entries[cert.identity] = entry
        return entry

    def server(self, cert: WorkloadCert) -> ssl.SSLContext:
        entry = self._entry(cert)
        if entry.server is None:
            entry.server = server_context(cert, self.key_dir)
        return entry.server

    def client(self, cert: WorkloadCert) -> ssl.SSLContext:
        entry = self._entry(cert)
        if entry.client is None:
            entry.client = client_context(cert, self.key_dir)
        return entry.client

    def forget(self, identity: Identity) -> None:
        self._entries.pop(identity, None)

    def close(self) -> None:
        """Forget every context and remove this process's key directory (empty: files never outlive a load)."""
        self._entries.clear()
        _remove_dir(self.key_dir / f"p{os.getpid()}")


# ---------------------------------------------------------------------------------------------- post-handshake


def peer_uris(obj: _SSLObj) -> list[str]:
    """The URI SANs of the verified peer certificate."""
    cert = obj.getpeercert()
    if not cert:
        return []
    sans: Any = cert.get("subjectAltName", ())  # tuple of (kind, value) pairs
    return [str(pair[1]) for pair in sans if pair[0] == "URI"]


def check_session(obj: _SSLObj) -> None:
    """TLS 1.3, ALPN h2, an AES-GCM suite: anything else is refused, whatever OpenSSL accepted."""
    if obj.version() != "TLSv1.3":
        raise TlsError(f"TLS version {obj.version()} is not allowed (TLS 1.3 only)")
    if obj.selected_alpn_protocol() != ALPN_H2:
        raise TlsError(f"ALPN {obj.selected_alpn_protocol()!r} negotiated, h2 required")
    cipher = obj.cipher()
    if cipher is None or cipher[0] not in AES_GCM_SUITES:
        raise TlsError(f"cipher suite {cipher[0] if cipher else None} is not allowed (AES-GCM only)")


def check_client_peer(obj: _SSLObj, trust_domain: str) -> Identity:
    """Server side (inbound): a client URI SAN must be a SPIFFE identity of our trust domain. Returns the peer id."""
    check_session(obj)
    uris = peer_uris(obj)
    if not any(trust_domain_of(uri) == trust_domain for uri in uris):
        raise TlsError(f"client certificate has no identity in trust domain {trust_domain} (SANs: {uris})")
    peer = first_identity(uris)
    assert peer is not None  # one of them parsed above
    return peer


def check_server_peer(obj: _SSLObj, expected: Iterable[Identity]) -> Identity:
    """Client side (outbound): one server URI SAN must equal one expected identity. Returns the peer id."""
    check_session(obj)
    uris = peer_uris(obj)
    wanted = {identity.uri for identity in expected}
    if not wanted.intersection(uris):
        raise TlsError(f"server identity {uris} is none of the expected {sorted(wanted)}")
    peer = first_identity(uris)
    assert peer is not None
    return peer

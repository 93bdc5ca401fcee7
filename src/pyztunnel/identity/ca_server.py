"""The Istio CA API server: `/istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC with TLS.

Callers authenticate with `authorization: Bearer <token>`; `tokens.json` in the CA state directory maps each token to
the node it was issued for. A node may obtain only identities of pods scheduled on it (`node_authz.decide`, from the
workloads file). Refusals carry a gRPC status (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT) and are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Generic, TypeVar

import grpc
from google.protobuf import json_format

from pyztunnel.errors import UserError
from pyztunnel.identity import node_authz
from pyztunnel.identity.api import IMPERSONATED_IDENTITY, METHOD_NAME, SERVICE
from pyztunnel.identity.ca import CaStateError, CertificateAuthority, CsrError
from pyztunnel.identity.config import CaSettings
from pyztunnel.identity.spiffe import Identity, SpiffeError
from pyztunnel.protocols._pb import ca_pb2

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
SERVER_CERT_FILE = "server-cert.pem"
SERVER_CERT_VALIDITY = timedelta(days=365)

T = TypeVar("T")


class ReloadingFile(Generic[T]):
    """A file parsed again whenever it changes (mtime, size or inode). A bad new version keeps the last good one."""

    def __init__(self, path: Path | None, parse: Callable[[str], T], empty: T) -> None:
        self.path, self._parse, self._value = path, parse, empty
        self._empty = empty
        self._stamp: tuple[int, int, int] | None = None

    def get(self) -> T:
        if self.path is None:
            return self._value
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                log.warning("%s disappeared; using nothing from it", self.path)
            self._stamp, self._value = None, self._empty
            return self._value
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                self._value = self._parse(self.path.read_text())
            except (ValueError, OSError) as exc:
                log.error("%s: cannot use the new version, keeping the previous one: %s", self.path, exc)
            self._stamp = stamp
        return self._value


def parse_tokens(text: str) -> dict[str, str]:
    doc = json.loads(text or "{}")
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise ValueError("tokens.json must be an object {token: node}")
    return doc


def add_node_token(state_dir: Path, node: str) -> str:
    """Issue a new bearer token for `node` into `tokens.json` (0600, replaced atomically) and return it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / TOKENS_FILE
    tokens = parse_tokens(path.read_text()) if path.exists() else {}
    token = secrets.token_urlsafe(32)
    tokens[token] = node
    tmp = path.with_name(f".{TOKENS_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f, indent=1)
    os.replace(tmp, path)
    return token


def authenticate(tokens: Mapping[str, str], metadata: Mapping[str, str]) -> str | node_authz.Refusal:
    """The node whose bearer token the call carries (istiod authenticates both CA and XDS calls so), or an
    UNAUTHENTICATED refusal."""
    header = metadata.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return node_authz.Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>'")
    node = tokens.get(token.strip())
    if node is None:
        return node_authz.Refusal(grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
    return node


class CaService:
    """CreateCertificate: authenticate, authorize for the caller's node, sign."""

    def __init__(self, ca: CertificateAuthority, settings: CaSettings) -> None:
        self.ca, self.settings = ca, settings
        self.tokens: ReloadingFile[dict[str, str]] = ReloadingFile(settings.state_dir / TOKENS_FILE, parse_tokens, {})
        self.workloads: ReloadingFile[dict[str, frozenset[Identity]]] = ReloadingFile(
            settings.workloads, node_authz.identities_by_node, {}
        )
        try:
            self.node_proxy_identities = [Identity.parse(i) for i in settings.node_proxy_identities]
        except SpiffeError as exc:
            raise UserError(f"--node-proxy-identities: {exc}") from None

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.create_certificate,
            request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
            response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
        )
        handler: grpc.GenericRpcHandler = grpc.method_handlers_generic_handler(SERVICE, {METHOD_NAME: method})
        return handler

    def authenticate(self, metadata: Mapping[str, str]) -> str | node_authz.Refusal:
        """The caller's node, or an UNAUTHENTICATED refusal."""
        return authenticate(self.tokens.get(), metadata)

    def handle(self, request: ca_pb2.IstioCertificateRequest, metadata: Mapping[str, str]) -> list[str]:
        """The chain for a request, or raises `Refused`. Synchronous and independent of gRPC's context."""
        node = self.authenticate(metadata)
        if isinstance(node, node_authz.Refusal):
            raise Refused(node, node="", identity="")
        request_meta = json_format.MessageToDict(request.metadata) if request.HasField("metadata") else {}
        outcome = node_authz.decide(
            node=node,
            csr_pem=request.csr,
            metadata=request_meta,
            trust_domain=self.ca.trust_domain,
            on_node=self.workloads.get(),
            node_proxy_identities=self.node_proxy_identities,
        )
        requested = str(request_meta.get(IMPERSONATED_IDENTITY, ""))
        if isinstance(outcome, node_authz.Refusal):
            raise Refused(outcome, node=node, identity=requested)
        try:
            chain = self.ca.sign_csr(
                request.csr,
                outcome.identity,
                request.validity_duration,
                max_validity_s=int(self.settings.max_cert_ttl),
                default_validity_s=int(self.settings.default_cert_ttl),
            )
        except CsrError as exc:
            refusal = node_authz.Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise Refused(refusal, node=node, identity=str(outcome.identity)) from None
        log.info(
            "certificate issued",
            extra={"fields": {"identity": str(outcome.identity), "node": node, "ttl": request.validity_duration}},
        )
        return chain

    async def create_certificate(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        metadata = {str(k).lower(): str(v) for k, v in (context.invocation_metadata() or ())}
        try:
            chain = self.handle(request, metadata)
        except Refused as refused:
            log.warning(
                "certificate refused",
                extra={
                    "fields": {
                        "code": refused.refusal.code.name,
                        "reason": refused.refusal.message,
                        "node": refused.node,
                        "identity": refused.identity,
                        "peer": context.peer(),
                    }
                },
            )
            await context.abort(refused.refusal.code, refused.refusal.message)
            raise AssertionError("abort returned") from None  # abort always raises
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)


class Refused(Exception):
    def __init__(self, refusal: node_authz.Refusal, *, node: str, identity: str) -> None:
        super().__init__(refusal.message)
        self.refusal, self.node, self.identity = refusal, node, identity


def load_ca(settings: CaSettings) -> CertificateAuthority:
    try:
        ca = CertificateAuthority.load_or_create(settings.state_dir, settings.trust_domain)
    except (CaStateError, OSError, ValueError) as exc:
        raise UserError(f"CA state directory {settings.state_dir}: {exc}") from None
    if ca.trust_domain != settings.trust_domain:
        raise UserError(
            f"the root in {settings.state_dir} is for trust domain {ca.trust_domain}, not --trust-domain "
            f"{settings.trust_domain}; use another --state-dir or the matching trust domain"
        )
    return ca


def split_host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--listen {listen!r}: write HOST:PORT, e.g. 10.240.0.254:15012")
    return host.strip("[]") or "0.0.0.0", int(port)


async def start(settings: CaSettings) -> tuple[grpc.aio.Server, int, CaService]:
    """Start the CA's gRPC server; returns it with the bound port (for `--listen HOST:0`) and the service."""
    ca = load_ca(settings)
    service = CaService(ca, settings)
    cert_pem, key_pem = ca.issue_server(settings.server_dns_names, settings.server_ips, SERVER_CERT_VALIDITY)
    (settings.state_dir / SERVER_CERT_FILE).write_text(cert_pem + ca.root_pem)
    credentials = grpc.ssl_server_credentials([(key_pem.encode(), (cert_pem + ca.root_pem).encode())])
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a second CA on the same port must fail
    server.add_generic_rpc_handlers((service.handler(),))
    host, port = split_host_port(settings.listen)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise UserError(f"cannot listen on {settings.listen}: {exc}") from None
    if bound == 0:
        raise UserError(f"cannot listen on {settings.listen} (address in use or not local)")
    await server.start()
    return server, bound, service


async def serve(settings: CaSettings) -> None:
    """Run the CA until SIGTERM or SIGINT."""
    server, port, _service = await start(settings)
    log.info(
        "CA serving",
        extra={"fields": {"address": settings.listen, "port": port, "trust_domain": settings.trust_domain}},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        log.info("CA stopping")
        await server.stop(grace=1.0)

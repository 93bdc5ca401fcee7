"""The CSR client: obtains a workload certificate from the Istio CA API as ztunnel does (reference §4).

One call per certificate: a fresh ECDSA P-256 key, a CSR without subject CN and with one URI SAN, `validity_duration`
= SECRET_TTL, headers `authorization: Bearer <token>` and `clusterid`, `ImpersonatedIdentity` in the metadata (node
proxies ask on behalf of their pods). The leaf's SAN must be the identity asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from pyztunnel.identity import certs
from pyztunnel.identity.api import DEFAULT_PORT, IMPERSONATED_IDENTITY, METHOD
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.identity.spiffe import Identity
from pyztunnel.protocols._pb import ca_pb2

HEADER_PREFIX = "CA_HEADER_"


class CaClientError(Exception):
    """A certificate could not be obtained; `code` is the gRPC status when the CA answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def target_of(address: str) -> str:
    """`https://host:port` → `host:port` (gRPC's target); the port defaults to 15012."""
    for scheme in ("https://", "http://"):
        address = address.removeprefix(scheme)
    address = address.rstrip("/")
    if not address:
        raise CaClientError("CA_ADDRESS is empty")
    if address.startswith("["):
        return address if "]:" in address else f"{address}:{DEFAULT_PORT}"
    if ":" not in address:
        return f"{address}:{DEFAULT_PORT}"
    if address.count(":") == 1:
        return address
    return f"[{address}]:{DEFAULT_PORT}"  # a bare IPv6 address


def read_token(value: str) -> str:
    """AUTH_TOKEN: the content of the file if it exists, else the value itself (ztunnel's rule)."""
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text().strip()
    except OSError as exc:
        raise CaClientError(f"cannot read AUTH_TOKEN file {value}: {exc}") from None
    return value.strip()


class CaClient:
    """A gRPC channel to the CA; `await fetch(identity)` returns a `WorkloadCert`. Close with `await close()`."""

    def __init__(
        self, settings: CaClientSettings, *, impersonate: bool = True, environ: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.impersonate = impersonate
        environ = os.environ if environ is None else environ
        self.extra_headers = [
            (k[len(HEADER_PREFIX) :].lower().replace("_", "-"), v)
            for k, v in environ.items()
            if k.startswith(HEADER_PREFIX)
        ]
        self._channel: grpc.aio.Channel | None = None
        self._root_stamp: tuple[int, int] | None = None

    def _root(self) -> tuple[bytes | None, tuple[int, int] | None]:
        """(root PEM or None for system roots, file stamp when it came from a file)."""
        value = self.settings.ca_root_ca
        if value == "SYSTEM":
            return None, None
        path = Path(value)
        if path.is_file():
            st = path.stat()
            return path.read_bytes(), (st.st_mtime_ns, st.st_size)
        if "-----BEGIN" in value:
            return value.encode(), None
        raise CaClientError(f"CA_ROOT_CA {value!r} is neither a file nor a PEM certificate")

    def _root_changed(self) -> bool:
        path = Path(self.settings.ca_root_ca)
        if self._root_stamp is None or not path.is_file():
            return False
        st = path.stat()
        return (st.st_mtime_ns, st.st_size) != self._root_stamp

    async def _get_channel(self) -> grpc.aio.Channel:
        if self._channel is not None and self._root_changed():
            await self._channel.close()  # the root file was replaced: verify the CA with the new one
            self._channel = None
        if self._channel is None:
            root, self._root_stamp = self._root()
            options: list[tuple[str, str | int]] = []
            if self.settings.alt_ca_hostname:
                options.append(("grpc.ssl_target_name_override", self.settings.alt_ca_hostname))
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            self._channel = grpc.aio.secure_channel(target_of(self.settings.ca_address), credentials, options)
        return self._channel

    def build_request(self, identity: Identity, key_pem_out: list[str]) -> ca_pb2.IstioCertificateRequest:
        key = certs.new_key()
        key_pem_out.append(certs.key_to_pem(key))
        metadata = struct_pb2.Struct()
        if self.impersonate:
            metadata.update({IMPERSONATED_IDENTITY: identity.uri})
        return ca_pb2.IstioCertificateRequest(
            csr=certs.make_csr(identity, key),
            validity_duration=int(self.settings.secret_ttl),
            metadata=metadata,
        )

    async def fetch(self, identity: Identity) -> certs.WorkloadCert:
        key_pem: list[str] = []
        request = self.build_request(identity, key_pem)
        headers = [
            ("authorization", f"Bearer {read_token(self.settings.auth_token)}"),
            ("clusterid", self.settings.cluster_id),
            *self.extra_headers,
        ]
        channel = await self._get_channel()
        call = channel.unary_unary(
            METHOD,
            request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
            response_deserializer=ca_pb2.IstioCertificateResponse.FromString,
        )
        try:
            response: ca_pb2.IstioCertificateResponse = await call(
                request, metadata=headers, timeout=float(self.settings.csr_timeout)
            )
        except grpc.aio.AioRpcError as exc:
            raise CaClientError(f"CA refused {identity}: {exc.code().name}: {exc.details()}", exc.code()) from None
        try:
            cert = certs.WorkloadCert.from_ca_response(identity, key_pem[0], list(response.cert_chain))
            leaf_identity = cert.leaf_identity()
        except ValueError as exc:
            raise CaClientError(f"CA answered an unusable chain for {identity}: {exc}") from None
        if leaf_identity != identity:
            raise CaClientError(f"CA issued a certificate for {leaf_identity}, not the requested {identity}")
        return cert

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

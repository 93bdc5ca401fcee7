"""The CSR client: obtains a workload certificate from the Istio CA API as ztunnel does (reference §4).

One call per certificate: a fresh ECDSA P-256 key, a CSR without subject CN and with one URI SAN, `validity_duration`
= SECRET_TTL, headers `authorization: Bearer <token>` and `clusterid`, `ImpersonatedIdentity` in the metadata (node
proxies ask on behalf of their pods). The leaf's SAN must be the identity asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import grpc
from google.protobuf import struct_pb2

from pyztunnel.identity import certs, channel
from pyztunnel.identity.api import IMPERSONATED_IDENTITY, METHOD
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.identity.spiffe import Identity
from pyztunnel.protocols._pb import ca_pb2

HEADER_PREFIX = "CA_HEADER_"


class CaClientError(Exception):
    """A certificate could not be obtained; `code` is the gRPC status when the CA answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class CaClient:
    """A gRPC channel to the CA; `await fetch(identity)` returns a `WorkloadCert`. Close with `await close()`."""

    def __init__(
        self, settings: CaClientSettings, *, impersonate: bool = True, environ: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.impersonate = impersonate
        environ = os.environ if environ is None else environ
        self.extra_headers = channel.prefixed_headers(environ, HEADER_PREFIX)
        self.channel = channel.TlsChannel(settings.ca_address, settings.ca_root_ca, settings.alt_ca_hostname)

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
        try:
            headers = channel.call_metadata(self.settings.auth_token, self.settings.cluster_id, self.extra_headers)
            grpc_channel = await self.channel.get()
        except channel.ChannelError as exc:
            raise CaClientError(str(exc)) from None
        call = grpc_channel.unary_unary(
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
        await self.channel.close()

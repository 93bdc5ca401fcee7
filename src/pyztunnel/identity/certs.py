"""Certificates as the mesh uses them: CSRs as ztunnel makes them, and a workload certificate with its key.

Pure (`cryptography` only, no I/O): the CA, the CSR client, the store and the TLS contexts all build on these.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pyztunnel.identity.spiffe import Identity, first_identity

_PEM_END = "-----END CERTIFICATE-----"


def new_key() -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key, the type ztunnel's CSRs carry."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_csr(identity: Identity, key: ec.EllipticCurvePrivateKey) -> str:
    """A PEM CSR as ztunnel's `src/tls/csr.rs`: no subject CN, one URI SAN = the identity, signed with SHA-256."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def split_pem_certs(text: str) -> list[str]:
    """Every PEM certificate in `text` (the CA's last chain element may hold several roots)."""
    out = []
    for block in text.split(_PEM_END):
        start = block.find("-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(block[start:] + _PEM_END + "\n")
    return out


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cert_dump(pem: str) -> dict[str, str]:
    """One certificate as ztunnel's `/config_dump` shows it (reference §6.2)."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    return {
        "pem": base64.b64encode(pem.encode()).decode(),
        "serialNumber": str(cert.serial_number),
        "validFrom": _rfc3339(cert.not_valid_before_utc),
        "expirationTime": _rfc3339(cert.not_valid_after_utc),
    }


@dataclasses.dataclass(frozen=True)
class WorkloadCert:
    """A workload's certificate: `chain` is the leaf then intermediates (PEM), `roots` the trusted roots (PEM)."""

    identity: Identity
    chain: tuple[str, ...]
    roots: str
    key_pem: str

    @classmethod
    def from_ca_response(cls, identity: Identity, key_pem: str, cert_chain: list[str]) -> WorkloadCert:
        """Build from a CreateCertificate answer: leaf first, roots last (the last element may hold several)."""
        if not cert_chain:
            raise ValueError("the CA returned an empty certificate chain")
        if len(cert_chain) == 1:
            return cls(identity, (cert_chain[0],), cert_chain[0], key_pem)
        return cls(identity, tuple(cert_chain[:-1]), cert_chain[-1], key_pem)

    @functools.cached_property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain[0].encode())

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    @property
    def fingerprint(self) -> str:
        return self.leaf.fingerprint(hashes.SHA256()).hex()

    @property
    def refresh_at(self) -> datetime:
        """When ztunnel renews: half-way through the validity (`not_before + (not_after − not_before)/2`)."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def leaf_identity(self) -> Identity | None:
        return first_identity(uri_sans(self.leaf))

    def is_valid_at(self, now: datetime) -> bool:
        return self.not_before <= _utc(now) < self.not_after

    @property
    def chain_pem(self) -> str:
        """Leaf and intermediates, concatenated (what `ssl` loads as certfile)."""
        return "".join(self.chain)

    def dump(self) -> dict[str, object]:
        return {
            "certChain": [cert_dump(pem) for pem in self.chain],
            "rootCerts": [cert_dump(pem) for pem in split_pem_certs(self.roots)],
        }


def name_for(trust_domain: str) -> x509.Name:
    """The root's subject, as istiod's self-signed root: O=<trust domain>."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])

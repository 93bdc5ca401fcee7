"""The CA core ("istiod's CA"): a root that never leaves its state directory, and CSR signing.

`CertificateAuthority.load_or_create(dir)` keeps `root-key.pem` (mode 0600) and `root-cert.pem` (readable) there.
`sign_csr` turns a PEM CSR into a chain, leaf first and root last, for the identity being granted: the CSR must ask
for exactly that identity, and the leaf's SAN is written from the grant, never copied from the CSR (as istiod
overrides it). Validity is the requested one, capped. No network, no asyncio: the gRPC server wraps this.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pyztunnel.identity import certs
from pyztunnel.identity.spiffe import Identity, try_parse

ROOT_KEY_FILE = "root-key.pem"
ROOT_CERT_FILE = "root-cert.pem"
ROOT_VALIDITY = timedelta(days=3650)
_MIN_RSA_BITS = 2048


class CsrError(ValueError):
    """A CSR the CA refuses: malformed, badly signed, a weak key, or asking for another identity."""


class CaStateError(Exception):
    """The CA state directory holds something unusable (e.g. a key without its certificate)."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class CertificateAuthority:
    """A self-signed root (ECDSA P-256) and the signing operations built on it."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, root: x509.Certificate) -> None:
        self._key = key
        self.root = root
        self.root_pem = certs.cert_to_pem(root)

    @classmethod
    def create(cls, trust_domain: str, now: datetime | None = None) -> CertificateAuthority:
        """A new root in memory (tests, benchmarks); `load_or_create` is the persistent form."""
        now = now or _now()
        key = certs.new_key()
        name = certs.name_for(trust_domain)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, root)

    @classmethod
    def load_or_create(cls, state_dir: Path, trust_domain: str) -> CertificateAuthority:
        """Load the root from `state_dir`, or create it there (key 0600, written before the certificate)."""
        key_path, cert_path = state_dir / ROOT_KEY_FILE, state_dir / ROOT_CERT_FILE
        if key_path.exists():
            if not cert_path.exists():
                raise CaStateError(f"{key_path} exists without {cert_path}; remove the key to start a new root")
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CaStateError(f"{key_path}: not an ECDSA key")
            root = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if root.public_key() != key.public_key():
                raise CaStateError(f"{cert_path} does not belong to {key_path}")
            return cls(key, root)
        state_dir.mkdir(parents=True, exist_ok=True)
        ca = cls.create(trust_domain)
        key_pem = ca._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(key_path, key_pem)
        _write_atomic(cert_path, ca.root_pem.encode(), 0o644)
        return ca

    @property
    def trust_domain(self) -> str:
        values = self.root.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
        return str(values[0].value) if values else ""

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey,
        *,
        uris: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ips: Sequence[str] = (),
        not_before: datetime,
        not_after: datetime,
    ) -> str:
        """Issue a leaf for `public_key` (PEM). Subject empty and SAN critical, as istiod's workload certificates."""
        general: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        general += [x509.DNSName(d) for d in dns_names]
        general += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(general), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return certs.cert_to_pem(cert)

    def sign_csr(
        self,
        csr_pem: str,
        identity: Identity,
        validity_s: int,
        *,
        max_validity_s: int,
        default_validity_s: int,
        now: datetime | None = None,
    ) -> list[str]:
        """Sign a CSR for `identity`: `[leaf, root]`. Validity is `validity_s` (≤0: the default) capped at the max."""
        public_key = check_csr(csr_pem, identity)
        now = now or _now()
        seconds = default_validity_s if validity_s <= 0 else validity_s
        seconds = min(seconds, max_validity_s)
        leaf = self.sign(public_key, uris=[identity.uri], not_before=now, not_after=now + timedelta(seconds=seconds))
        return [leaf, self.root_pem]

    def issue(self, identity: Identity, validity: timedelta, *, now: datetime | None = None) -> certs.WorkloadCert:
        """A key and a certificate for `identity` without a CSR round trip (operators, tests)."""
        now = now or _now()
        key = certs.new_key()
        leaf = self.sign(key.public_key(), uris=[identity.uri], not_before=now, not_after=now + validity)
        return certs.WorkloadCert(identity, (leaf,), self.root_pem, certs.key_to_pem(key))

    def issue_server(self, dns_names: Sequence[str], ips: Sequence[str], validity: timedelta) -> tuple[str, str]:
        """(certificate PEM, key PEM) for the CA's own gRPC endpoint."""
        now = _now()
        key = certs.new_key()
        cert = self.sign(
            key.public_key(),
            dns_names=dns_names,
            ips=ips,
            not_before=now - timedelta(minutes=1),
            not_after=now + validity,
        )
        return cert, certs.key_to_pem(key)


def check_csr(
    csr_pem: str, identity: Identity
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    """The CSR's public key, if the CSR is well formed, self-signed correctly, and asks for exactly `identity`."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, UnicodeError) as exc:
        raise CsrError(f"malformed CSR: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType) as exc:
        raise CsrError(f"CSR signature cannot be checked: {exc}") from None
    if not valid:
        raise CsrError("CSR signature is invalid")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CsrError(f"CSR key curve {key.curve.name} is not allowed (use P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise CsrError(f"CSR RSA key of {key.key_size} bits is too short (at least {_MIN_RSA_BITS})")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrError(f"CSR key type {type(key).__name__} is not allowed")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CsrError(f"CSR has no subject alternative name; it must ask for {identity.uri}") from None
    except ValueError as exc:
        raise CsrError(f"CSR extensions are malformed: {exc}") from None
    names = [str(name.value) for name in san]
    if names != [identity.uri]:
        raise CsrError(f"CSR asks for {', '.join(names) or 'nothing'}, not {identity.uri}")
    return key


def csr_identity(csr_pem: str) -> Identity | None:
    """The SPIFFE identity a CSR asks for, or None (no parse, no SAN, not one SPIFFE URI)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, UnicodeError, x509.ExtensionNotFound):
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    return try_parse(uris[0])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 from the start (never briefly readable), failing if it already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # umask may have narrowed it
    os.replace(tmp, path)

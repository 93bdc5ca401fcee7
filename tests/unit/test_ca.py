"""CA signing and node authorization, without a network."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyztunnel.identity import certs
from pyztunnel.identity.ca import CaStateError, CertificateAuthority, CsrError, check_csr, csr_identity
from pyztunnel.identity.channel import read_token, target_of
from pyztunnel.identity.node_authz import Grant, Refusal, WorkloadsError, decide, identities_by_node
from pyztunnel.identity.spiffe import Identity

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CART = Identity("cluster.local", "shop", "cart")
DAY = 86400


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster.local", now=NOW - timedelta(days=1))


def sign(ca: CertificateAuthority, csr: str, validity: int, identity: Identity = CART) -> list[str]:
    return ca.sign_csr(csr, identity, validity, max_validity_s=2 * DAY, default_validity_s=DAY, now=NOW)


def test_chain_is_leaf_then_root_with_spiffe_san(ca: CertificateAuthority) -> None:
    key = certs.new_key()
    chain = sign(ca, certs.make_csr(CART, key), 3600)
    assert len(chain) == 2
    assert chain[1] == ca.root_pem
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    root = x509.load_pem_x509_certificate(chain[1].encode())
    leaf.verify_directly_issued_by(root)
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [CART.uri]
    assert leaf.subject == x509.Name([])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(("requested", "granted"), [(3600, 3600), (0, DAY), (-5, DAY), (10 * DAY, 2 * DAY)])
def test_validity_is_requested_default_or_capped(ca: CertificateAuthority, requested: int, granted: int) -> None:
    leaf = x509.load_pem_x509_certificate(sign(ca, certs.make_csr(CART, certs.new_key()), requested)[0].encode())
    assert leaf.not_valid_before_utc == NOW
    assert leaf.not_valid_after_utc == NOW + timedelta(seconds=granted)


def csr_with(names: list[x509.GeneralName] | None, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: "garbage", "malformed CSR"),
        (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "malformed CSR"),
        (lambda: csr_with(None, certs.new_key()), "no subject alternative name"),
        (lambda: certs.make_csr(Identity("cluster.local", "shop", "pay"), certs.new_key()), "asks for .*pay"),
        (
            lambda: csr_with([x509.UniformResourceIdentifier(CART.uri), x509.DNSName("evil.example")], certs.new_key()),
            "asks for",
        ),
        (
            lambda: csr_with([x509.UniformResourceIdentifier(CART.uri)], ec.generate_private_key(ec.SECP521R1())),
            "curve",
        ),
        (
            lambda: csr_with([x509.UniformResourceIdentifier(CART.uri)], rsa.generate_private_key(65537, 1024)),
            "too short",
        ),
    ],
)
def test_rejects_bad_csrs(ca: CertificateAuthority, make: object, why: str) -> None:
    csr = make()  # type: ignore[operator]
    with pytest.raises(CsrError, match=why):
        sign(ca, csr, 3600)


def test_rejects_csr_with_bad_signature() -> None:
    good = x509.load_pem_x509_csr(certs.make_csr(CART, certs.new_key()).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x55  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CsrError, match="signature"):
        check_csr(tampered, CART)


def test_csr_identity() -> None:
    assert csr_identity(certs.make_csr(CART, certs.new_key())) == CART
    assert csr_identity("garbage") is None
    assert csr_identity(csr_with(None, certs.new_key())) is None


def test_root_persisted_with_private_key_mode(tmp_path: Path) -> None:
    state = tmp_path / "ca"
    first = CertificateAuthority.load_or_create(state, "cluster.local")
    assert stat.S_IMODE((state / "root-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "root-cert.pem").stat().st_mode) == 0o644
    again = CertificateAuthority.load_or_create(state, "cluster.local")
    assert again.root_pem == first.root_pem
    assert again.trust_domain == "cluster.local"
    (state / "root-cert.pem").unlink()
    with pytest.raises(CaStateError, match="without"):
        CertificateAuthority.load_or_create(state, "cluster.local")


def test_workload_cert_from_response(ca: CertificateAuthority) -> None:
    key = certs.new_key()
    chain = sign(ca, certs.make_csr(CART, key), 7200)
    cert = certs.WorkloadCert.from_ca_response(CART, certs.key_to_pem(key), chain)
    assert cert.chain == (chain[0],)
    assert cert.roots == ca.root_pem
    assert cert.refresh_at == NOW + timedelta(hours=1)
    assert cert.leaf_identity() == CART
    two_roots = ca.root_pem + CertificateAuthority.create("cluster.local").root_pem
    assert len(cert.dump()["rootCerts"]) == 1  # type: ignore[arg-type]
    assert len(certs.split_pem_certs(two_roots)) == 2
    with pytest.raises(ValueError, match="empty"):
        certs.WorkloadCert.from_ca_response(CART, "", [])


# ------------------------------------------------------------------------------------ node authorization

WORKLOADS = """
workloads:
- {name: cart-0, namespace: shop, serviceAccount: cart, trustDomain: cluster.local, node: node-a, workloadIps: [10.0.0.1]}
- {name: pay-0, namespace: shop, serviceAccount: pay, trustDomain: cluster.local, node: node-b, workloadIps: [10.0.0.2]}
- {name: dflt, namespace: web, node: node-a, workloadIps: [10.0.0.3]}
- {name: nowhere, namespace: web, serviceAccount: ghost, workloadIps: [10.0.0.4]}
policies:
- {name: p, namespace: shop, rules: [[[{principals: [!Exact "cluster.local/ns/shop/sa/cart"]}]]]}
"""
ZTUNNEL = Identity("cluster.local", "istio-system", "ztunnel")


def test_identities_by_node() -> None:
    on = identities_by_node(WORKLOADS)
    assert on == {
        "node-a": frozenset({CART, Identity("cluster.local", "web", "default")}),
        "node-b": frozenset({Identity("cluster.local", "shop", "pay")}),
    }
    assert identities_by_node("") == {}
    with pytest.raises(WorkloadsError):
        identities_by_node("workloads: {a: 1}")
    with pytest.raises(WorkloadsError):
        identities_by_node("workloads: [\n")


def meta(identity: str) -> dict[str, object]:
    return {"ImpersonatedIdentity": identity}


CSR_CART = certs.make_csr(CART, certs.new_key())
CSR_ZT = certs.make_csr(ZTUNNEL, certs.new_key())
OK, DENIED, INVALID = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("node", "csr", "metadata", "expected"),
    [
        ("node-a", CSR_CART, meta(CART.uri), OK),
        ("node-a", CSR_CART, {}, OK),  # no impersonation: the CSR's identity, same node rule
        ("node-a", "x", meta("spiffe://cluster.local/ns/web/sa/default"), OK),  # CSR checked by the signer
        ("node-b", CSR_CART, meta(CART.uri), DENIED),  # cart is not on node-b
        ("node-c", CSR_CART, meta(CART.uri), DENIED),  # unknown node
        ("node-a", CSR_CART, meta("spiffe://cluster.local/ns/web/sa/ghost"), DENIED),  # a pod without a node
        ("node-a", CSR_CART, meta("spiffe://other.td/ns/shop/sa/cart"), DENIED),  # another trust domain
        ("node-c", CSR_ZT, {}, OK),  # every node may hold the node proxy's own identity
        ("node-a", CSR_CART, meta("cluster.local/ns/shop/sa/cart"), INVALID),
        ("node-a", CSR_CART, {"ImpersonatedIdentity": 5}, INVALID),
        ("node-a", "garbage", {}, INVALID),  # no impersonation and no readable CSR identity
    ],
)
def test_impersonation_authorization(node: str, csr: str, metadata: dict[str, object], expected: object) -> None:
    outcome = decide(
        node=node,
        csr_pem=csr,
        metadata=metadata,
        trust_domain="cluster.local",
        on_node=identities_by_node(WORKLOADS),
        node_proxy_identities=[ZTUNNEL],
    )
    if expected is OK:
        assert isinstance(outcome, Grant)
    else:
        assert isinstance(outcome, Refusal)
        assert outcome.code == expected


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("https://10.240.0.254:15012", "10.240.0.254:15012"),
        ("https://istiod.istio-system.svc:15012/", "istiod.istio-system.svc:15012"),
        ("localhost", "localhost:15012"),
        ("https://[::1]:9000", "[::1]:9000"),
        ("[::1]", "[::1]:15012"),
        ("::1", "[::1]:15012"),
    ],
)
def test_ca_target(address: str, target: str) -> None:
    assert target_of(address) == target


def test_token_is_file_content_or_literal(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    assert read_token(str(token_file)) == "abc"
    assert read_token("literal-token") == "literal-token"


def test_serve_refuses_root_of_another_trust_domain(tmp_path: Path) -> None:
    from pyztunnel.errors import UserError
    from pyztunnel.identity.ca_server import load_ca
    from pyztunnel.identity.config import CaSettings

    CertificateAuthority.load_or_create(tmp_path, "a.example")
    with pytest.raises(UserError, match=r"trust domain a\.example, not --trust-domain cluster\.local"):
        load_ca(CaSettings(state_dir=tmp_path))

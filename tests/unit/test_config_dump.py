from __future__ import annotations

import base64
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pyztunnel.observe.config_dump import build_info, certificate, config_dump


def _cert(serial: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    start = dt.datetime(2026, 1, 1, 0, 0, 0, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(hours=24))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


def test_certificate_entries_as_ztunnel_dumps_them() -> None:
    leaf, root = _cert(123456789012345678901234567890), _cert(7)
    entry = certificate("spiffe://cluster.local/ns/a/sa/b", "Available", leaf + root, root)
    assert entry["identity"] == "spiffe://cluster.local/ns/a/sa/b" and entry["state"] == "Available"
    first = entry["certChain"][0]
    assert first == {
        "pem": base64.b64encode(leaf).decode(),
        "serialNumber": "123456789012345678901234567890",
        "validFrom": "2026-01-01T00:00:00Z",
        "expirationTime": "2026-01-02T00:00:00Z",
    }
    assert len(entry["certChain"]) == 2 and entry["rootCerts"][0]["serialNumber"] == "7"
    pending = certificate("spiffe://cluster.local/ns/a/sa/c", "Initializing")
    assert pending["certChain"] == [] and pending["rootCerts"] == []


def test_dump_keys_in_ztunnel_order() -> None:
    doc = config_dump(
        certificates=[{"identity": "b"}, {"identity": "a"}],
        version=build_info("0.1.0", "v2"),
        workload_state={"uid-1": {"state": "Up"}},
    )
    assert list(doc) == [
        "workloads",
        "services",
        "policies",
        "stagedServices",
        "staticConfig",
        "version",
        "config",
        "certificates",
        "workloadState",
    ]
    assert [c["identity"] for c in doc["certificates"]] == ["a", "b"]
    assert doc["version"]["gitTag"] == "v2" and doc["workloadState"]["uid-1"] == {"state": "Up"}

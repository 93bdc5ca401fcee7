"""The shape of ztunnel's admin `/config_dump` (reference/ztunnel.md §6.2), built from plain values. Pure.

The proxy owns the data (workloads, services, policies, certificates, in-pod state); these helpers give it ztunnel's
keys and encodings so tools written against ztunnel's dump read ours.
"""

from __future__ import annotations

import base64
import platform
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def build_info(version: str, tag: str) -> dict[str, str]:
    """ztunnel's BuildInfo keys; `pythonVersion` stands where ztunnel says `rustVersion`."""
    return {
        "version": version,
        "gitRevision": "unknown",
        "pythonVersion": platform.python_version(),
        "buildStatus": "Clean",
        "gitTag": tag,
        "istioVersion": tag,
    }


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cert_entry(pem: bytes) -> dict[str, str]:
    """One certificate as ztunnel dumps it: the PEM base64-encoded, decimal serial, RFC 3339 validity (seconds)."""
    cert = x509.load_pem_x509_certificate(pem)
    return {
        "pem": base64.b64encode(cert.public_bytes(Encoding.PEM)).decode(),
        "serialNumber": str(cert.serial_number),
        "validFrom": _rfc3339(cert.not_valid_before_utc),
        "expirationTime": _rfc3339(cert.not_valid_after_utc),
    }


def _split_pem(blob: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + marker + b"\n" for part in blob.split(marker) if part.strip()]


def certificate(
    identity: str, state: str, chain_pem: bytes | None = None, root_pem: bytes | None = None
) -> dict[str, Any]:
    """`state` is `Initializing`, `Available` or `Unavailable: <why>`; chains are given only when Available."""
    return {
        "identity": identity,
        "state": state,
        "certChain": [cert_entry(p) for p in _split_pem(chain_pem or b"")],
        "rootCerts": [cert_entry(p) for p in _split_pem(root_pem or b"")],
    }


def config_dump(
    *,
    workloads: Sequence[Mapping[str, Any]] = (),
    services: Sequence[Mapping[str, Any]] = (),
    policies: Sequence[Mapping[str, Any]] = (),
    staged_services: Mapping[str, Any] | None = None,
    static_config: Mapping[str, Any] | None = None,
    version: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    certificates: Iterable[Mapping[str, Any]] = (),
    workload_state: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The dump in ztunnel's key order; certificates sorted by identity, as ztunnel sorts them."""
    return {
        "workloads": list(workloads),
        "services": list(services),
        "policies": list(policies),
        "stagedServices": dict(staged_services or {}),
        "staticConfig": dict(static_config or {}),
        "version": dict(version or {}),
        "config": dict(config or {}),
        "certificates": sorted(certificates, key=lambda c: str(c.get("identity", ""))),
        "workloadState": {uid: dict(state) for uid, state in (workload_state or {}).items()},
    }

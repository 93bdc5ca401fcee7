"""Where the proxy gets a workload's certificate: `await certs.get(identity)`.

In production that is the identity package's certificate store (CSR to the CA, rotation). `StaticCerts` serves
certificates issued ahead of time (tests, benchmarks, `PYZTUNNEL_CERT_DIR`): one directory per identity holding
Istio's file names `cert-chain.pem`, `key.pem`, `root-cert.pem`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pyztunnel.errors import UserError
from pyztunnel.identity.certs import WorkloadCert, split_pem_certs
from pyztunnel.identity.spiffe import Identity


class CertSource(Protocol):
    async def get(self, identity: Identity) -> WorkloadCert: ...


class NoCertificate(Exception):
    """No certificate can be had for an identity (unknown to a static source, or the CA refused)."""


class StaticCerts:
    def __init__(self, certs: dict[Identity, WorkloadCert] | None = None) -> None:
        self.certs = dict(certs or {})

    def add(self, cert: WorkloadCert) -> None:
        self.certs[cert.identity] = cert

    async def get(self, identity: Identity) -> WorkloadCert:
        cert = self.certs.get(identity)
        if cert is None:
            raise NoCertificate(f"no certificate for {identity}")
        return cert

    @classmethod
    def from_dir(cls, root: Path) -> StaticCerts:
        out = cls()
        if not root.is_dir():
            raise UserError(f"{root}: certificate directory does not exist")
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                chain = (sub / "cert-chain.pem").read_text()
                key = (sub / "key.pem").read_text()
                roots = (sub / "root-cert.pem").read_text()
            except OSError as exc:
                raise UserError(f"{sub}: cannot read certificate files: {exc.strerror}") from None
            leaf_only = WorkloadCert(Identity("x", "x", "x"), tuple(split_pem_certs(chain)), roots, key)
            identity = leaf_only.leaf_identity()
            if identity is None:
                raise UserError(f"{sub}/cert-chain.pem: the leaf has no SPIFFE identity")
            out.add(WorkloadCert(identity, leaf_only.chain, roots, key))
        return out

"""SPIFFE workload identities as ztunnel parses and prints them (reference §3.1).

`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`: after the scheme, exactly five `/`-separated parts,
`ns` at position 1 and `sa` at position 3. Like ztunnel (`src/identity/manager.rs`), empty parts are not rejected
here; the parts are taken verbatim. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import functools

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"


class SpiffeError(ValueError):
    """A string that is not a `spiffe://<td>/ns/<ns>/sa/<sa>` identity."""


@dataclasses.dataclass(frozen=True, order=True)
class Identity:
    """One workload identity. `str(identity)` is the SPIFFE URI; `principal` is the form L4 policies match."""

    trust_domain: str
    namespace: str
    service_account: str

    @classmethod
    def parse(cls, text: str) -> Identity:
        """Parse a SPIFFE URI; raises SpiffeError saying what is wrong."""
        if not text.startswith(SCHEME):
            raise SpiffeError(f"invalid SPIFFE identity {text!r}: must start with {SCHEME}")
        parts = text[len(SCHEME) :].split("/")
        if len(parts) != 5:
            raise SpiffeError(
                f"invalid SPIFFE identity {text!r}: expected {SCHEME}<trust domain>/ns/<namespace>/sa/<service account>"
            )
        if parts[1] != "ns" or parts[3] != "sa":
            raise SpiffeError(f"invalid SPIFFE identity {text!r}: path must be /ns/<namespace>/sa/<service account>")
        return cls(parts[0], parts[2], parts[4])

    @classmethod
    def for_workload(cls, namespace: str, service_account: str | None, trust_domain: str | None) -> Identity:
        """The identity of a workload, with ztunnel's XDS defaults for an empty trust domain or service account."""
        return cls(trust_domain or DEFAULT_TRUST_DOMAIN, namespace, service_account or DEFAULT_SERVICE_ACCOUNT)

    @property
    def uri(self) -> str:
        return _uri(self.trust_domain, self.namespace, self.service_account)

    @property
    def principal(self) -> str:
        """The identity without `spiffe://`, as RBAC principals are written (`cluster.local/ns/a/sa/b`)."""
        return self.uri[len(SCHEME) :]

    def __str__(self) -> str:
        return self.uri


@functools.lru_cache(maxsize=4096)
def _uri(trust_domain: str, namespace: str, service_account: str) -> str:
    # Every connection's access-log record keeps its identities' URIs: one string per identity, not per connection.
    # Bounded: a peer's certificate names the identity.
    return f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"


def try_parse(text: str) -> Identity | None:
    """The identity, or None when `text` is not a SPIFFE identity (for scanning certificate SANs)."""
    try:
        return Identity.parse(text)
    except SpiffeError:
        return None


def first_identity(uris: list[str] | tuple[str, ...]) -> Identity | None:
    """The first parsable SPIFFE identity among URI SANs: ztunnel's `tls::identity` (used for authorization, logs)."""
    for uri in uris:
        identity = try_parse(uri)
        if identity is not None:
            return identity
    return None


def trust_domain_of(uri: str) -> str | None:
    """The trust domain of a SPIFFE identity URI, or None when it does not parse."""
    identity = try_parse(uri)
    return None if identity is None else identity.trust_domain


def any_in_trust_domain(uris: list[str] | tuple[str, ...], trust_domain: str) -> bool:
    """True when one URI SAN is a SPIFFE identity of `trust_domain` (ztunnel's server-side TrustDomainVerifier)."""
    return any(trust_domain_of(uri) == trust_domain for uri in uris)

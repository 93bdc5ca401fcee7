"""Settings of the identity component, declared once (see pyztunnel.settings).

`CaSettings` configures `pyztunnel ca serve`. `CaClientSettings` is what a node proxy needs to obtain certificates;
its environment variables are ztunnel's (reference §4), so the proxy loads it as is:
`settings.load(CaClientSettings)`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from pyztunnel.settings import Duration, group, setting

DEFAULT_NODE_PROXY_IDENTITY = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"


@group("ca")
@dataclasses.dataclass(frozen=True)
class CaSettings:
    state_dir: Path = setting(
        Path("/run/pyztunnel/demo/ca"),
        "CA state directory: root key (0600), root-cert.pem, tokens.json {token: node}",
        env="PYZTUNNEL_CA_STATE_DIR",
    )
    listen: str = setting("0.0.0.0:15012", "address the CA's gRPC server listens on (HOST:PORT)")
    workloads: Path | None = setting(
        None,
        "workloads file (LOCAL_XDS YAML): which identities run on which node; reread when it changes",
        env="PYZTUNNEL_CA_WORKLOADS",
    )
    trust_domain: str = setting("cluster.local", "trust domain of the root and of every identity it signs")
    server_dns_names: list[str] = setting(
        ["istiod.istio-system.svc", "localhost"], "DNS SANs of the CA's own TLS certificate (comma-separated)"
    )
    server_ips: list[str] = setting(
        ["127.0.0.1", "10.240.0.254"], "IP SANs of the CA's own TLS certificate (comma-separated)"
    )
    default_cert_ttl: Duration = setting(
        Duration(24 * 3600), "validity of a workload certificate when the request asks for none", gt=0
    )
    max_cert_ttl: Duration = setting(
        Duration(90 * 24 * 3600), "longest validity granted; longer requests are capped (istiod: 90 days)", gt=0
    )
    node_proxy_identities: list[str] = setting(
        [DEFAULT_NODE_PROXY_IDENTITY],
        "identities any authenticated node may obtain (the node proxy's own identity)",
    )


def default_key_dir() -> Path:
    return Path(tempfile.gettempdir()) / "pyztunnel-keys"


@group("ca-client")
@dataclasses.dataclass(frozen=True)
class CaClientSettings:
    ca_address: str = setting("https://localhost:15012", "address of the CA (gRPC over TLS)", env="CA_ADDRESS")
    ca_root_ca: str = setting(
        "./var/run/secrets/istio/root-cert.pem",
        "CA root: a file path (reloaded when it changes), or inline PEM",
        env="CA_ROOT_CA",
    )
    alt_ca_hostname: str = setting("", "host name to verify the CA's certificate against", env="ALT_CA_HOSTNAME")
    auth_token: str = setting(
        "./var/run/secrets/tokens/istio-token",
        "bearer token for the CA: a file path (read at each request) or the token itself",
        env="AUTH_TOKEN",
    )
    cluster_id: str = setting("Kubernetes", "sent to the CA as the clusterid header", env="CLUSTER_ID")
    secret_ttl: Duration = setting(
        Duration(24 * 3600), "validity requested for workload certificates", env="SECRET_TTL", gt=0
    )
    csr_timeout: Duration = setting(Duration(10), "deadline of one CreateCertificate call", gt=0)
    key_dir: Path = setting(
        default_key_dir(),
        "private directory (0700) for the transient key files ssl loads (deleted right after loading)",
        env="PYZTUNNEL_KEY_DIR",
    )

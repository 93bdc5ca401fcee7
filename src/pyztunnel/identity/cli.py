"""`pyztunnel ca …`: run the Istio CA API, issue certificates and node tokens by hand."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from pyztunnel import settings
from pyztunnel.errors import UserError
from pyztunnel.identity.ca import ROOT_CERT_FILE, CaStateError, CertificateAuthority
from pyztunnel.identity.ca_server import add_node_token, serve
from pyztunnel.identity.config import CaSettings
from pyztunnel.identity.spiffe import Identity, SpiffeError
from pyztunnel.observe import logging as ztlogging
from pyztunnel.settings import Duration

_STATE_DIR_HELP = "CA state directory (default: the ca serve default) [env PYZTUNNEL_CA_STATE_DIR]"


@click.group("ca")
def ca() -> None:
    """Istio CA API (CreateCertificate) for node proxies; issue certificates."""


@ca.command("serve")
@settings.cli_options(CaSettings)
def serve_command(**cli: Any) -> None:
    """Serve /istio.v1.auth.IstioCertificateService/CreateCertificate over TLS until SIGTERM."""
    config = settings.load(CaSettings, cli=cli)
    ztlogging.setup()
    asyncio.run(serve(config))


def _state_dir(value: Path | None) -> CaSettings:
    return settings.load(CaSettings, cli={"state_dir": value})


def _load_ca(config: CaSettings, trust_domain: str) -> CertificateAuthority:
    try:
        authority = CertificateAuthority.load_or_create(config.state_dir, trust_domain)
    except (CaStateError, OSError, ValueError) as exc:
        raise UserError(f"CA state directory {config.state_dir}: {exc}") from None
    if authority.trust_domain != trust_domain:
        raise UserError(f"the CA in {config.state_dir} signs trust domain {authority.trust_domain}, not {trust_domain}")
    return authority


@ca.command("issue")
@click.argument("spiffe_id")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="directory for the three files")
@click.option("--state-dir", "state_dir", type=click.Path(path_type=Path), default=None, help=_STATE_DIR_HELP)
@click.option("--validity", default="24h", show_default=True, help="certificate validity (e.g. 30m, 24h)")
def issue_command(spiffe_id: str, out: Path, state_dir: Path | None, validity: str) -> None:
    """Write cert-chain.pem, key.pem (0600) and root-cert.pem for SPIFFE_ID into --out (creating the CA if needed)."""
    try:
        identity = Identity.parse(spiffe_id)
        seconds = Duration.parse(validity)
    except (SpiffeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if seconds <= 0:
        raise UserError(f"--validity {validity}: must be positive")
    authority = _load_ca(_state_dir(state_dir), identity.trust_domain)
    cert = authority.issue(identity, timedelta(seconds=float(seconds)))
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "cert-chain.pem").write_text(cert.chain_pem)
        key_path = out / "key.pem"
        key_path.unlink(missing_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cert.key_pem)
        (out / ROOT_CERT_FILE).write_text(cert.roots)
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc}") from None
    click.echo(f"{identity} valid until {cert.not_after.isoformat()} → {out}")


@ca.command("token")
@click.argument("node")
@click.option("--state-dir", "state_dir", type=click.Path(path_type=Path), default=None, help=_STATE_DIR_HELP)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="write the token to this file (0600)")
def token_command(node: str, state_dir: Path | None, out: Path | None) -> None:
    """Issue a bearer token that authenticates NODE's proxies to the CA (printed, or written to --out)."""
    config = _state_dir(state_dir)
    try:
        token = add_node_token(config.state_dir, node)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot issue a token in {config.state_dir}: {exc}") from None
    if out is None:
        click.echo(token)

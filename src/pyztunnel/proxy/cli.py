"""`pyztunnel proxy`: the node proxy, configured by ztunnel's environment variables (or the equivalent flags)."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from pyztunnel import settings
from pyztunnel.aio import install_uvloop
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.lifecycle import drain
from pyztunnel.observe import logging as ztlog
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.proxy.priority import StartupPriority
from pyztunnel.xds.config import XdsSettings


@click.command("proxy")
# ztunnel's DaemonSet runs `proxy ztunnel` (reference kubernetes.md §1): that mode is accepted, the only one.
@click.argument("mode", required=False, type=click.Choice(["ztunnel"]))
@settings.cli_options(ProxySettings)
@settings.cli_options(CaClientSettings)
@settings.cli_options(XdsSettings)
def proxy(mode: str | None, **values: Any) -> None:
    """The node proxy (ztunnel): in-pod listeners from ZDS, HBONE over mTLS, L4 authorization.

    MODE is ztunnel's (`proxy ztunnel`, as its DaemonSet's args say); it may be left out.

    Direct mode (tests, benchmarks): --direct-outbound 127.0.0.1:16001=127.0.0.2:8080 and --direct-inbound
    127.0.0.2 serve the same data path on loopback, without namespaces.
    """
    proxy_settings = settings.load(ProxySettings, cli=values)
    ca_settings = settings.load(CaClientSettings, cli=values)
    xds_settings = settings.load(XdsSettings, cli=values)
    ztlog.setup()
    priority = StartupPriority(proxy_settings.startup_nice)  # before the imports: they are much of the start-up
    install_uvloop()
    from pyztunnel.proxy.app import ProxyApp

    async def main() -> drain.Outcome:
        app = ProxyApp(proxy_settings, ca_settings, xds_settings=xds_settings, priority=priority)
        return await app.run()

    # Every outcome exits 0, as ztunnel does (a second signal is "exit now", not a failure).
    asyncio.run(main())

"""`pyztunnel agent`: the node agent, run inside the node's netns until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from pyztunnel import settings
from pyztunnel.agent.api import ApiServer
from pyztunnel.agent.config import AgentSettings
from pyztunnel.agent.service import Agent
from pyztunnel.aio import install_uvloop
from pyztunnel.errors import UserError, require_program, require_root
from pyztunnel.observe import logging as ztlog

log = logging.getLogger("pyztunnel.agent")


@click.command("agent")
@settings.cli_options(AgentSettings)
def agent(**cli: Any) -> None:
    """Node agent (istio-cni's role): pod plumbing, redirection rules, per-pod sysctls and the ZDS server.

    Run it inside the node's network namespace. It serves the agent API on <run-dir>/cni.sock and ZDS on
    <run-dir>/ztunnel.sock until SIGTERM or SIGINT.
    """
    config = settings.load(AgentSettings, cli=cli)
    require_root("pyztunnel agent")
    require_program("nft", "nftables")
    ztlog.setup()
    install_uvloop()
    asyncio.run(run(config))


async def run(config: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = Agent(config)
    api = ApiServer(node, config.api_socket)
    try:
        try:
            await node.start()
            await api.start()
        except OSError as exc:
            raise UserError(f"cannot listen on {exc.filename or config.run_dir}: {exc.strerror}") from None
        log.info(
            "agent ready",
            extra={
                "fields": {
                    "node": config.node_name,
                    "zds": str(config.zds_socket),
                    "api": str(config.api_socket),
                    "tcp_migrate_req": config.tcp_migrate_req,
                }
            },
        )
        await stop.wait()
        log.info("agent shutting down")
    finally:
        await api.close()
        await node.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

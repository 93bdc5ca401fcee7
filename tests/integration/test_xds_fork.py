"""A process that serves ADS (the cluster controller) keeps spawning processes reliably: with gRPC's fork support on
(its default), about 3 % of the subprocesses spawned while streams were busy lost their stdin pipe (uvloop: "the
handler is closed"), which failed `nft` applies and pod starts in the controller. pyztunnel turns it off."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import uvloop

from pyztunnel.protocols import xds, xds_server
from tests.integration.test_xds import Proxy, start_plane


async def _spawn_and_write() -> None:
    proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(b"x" * 1000)
    await proc.stdin.drain()
    proc.stdin.close()
    await proc.wait()


async def _spawn_while_pushing(tmp: Path) -> list[BaseException]:
    plane = await start_plane(tmp)
    proxies = [Proxy(plane) for _ in range(2)]
    errors: list[BaseException] = []
    try:
        for n in range(150):
            plane.server.catalog.put(xds.ADDRESS_TYPE, f"w{n % 20}", xds_server.Entry.of(os.urandom(16)))
            plane.server.publish()
            results = await asyncio.gather(*(_spawn_and_write() for _ in range(4)), return_exceptions=True)
            errors += [r for r in results if isinstance(r, BaseException)]
    finally:
        for proxy in proxies:
            await proxy.close()
        await plane.server.close()
    return errors


def test_processes_spawned_beside_busy_xds_streams_keep_their_pipes(tmp_path: Path) -> None:
    assert os.environ.get("GRPC_ENABLE_FORK_SUPPORT") == "false"
    errors = uvloop.run(_spawn_while_pushing(tmp_path))  # the controller's loop
    assert errors == [], errors[:3]

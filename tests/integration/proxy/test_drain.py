"""Drain as ztunnel does it (reference §1.2–1.4), on two in-process proxy apps in direct mode: the first signal stops
accepting and sends GOAWAY; established connections keep flowing until the deadline, then they are reset."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.lifecycle import drain
from pyztunnel.proxy.app import ProxyApp
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.settings import load
from tests.integration.proxy.harness import config_text, echo_server, free_port, loopback_ips
from tests.integration.proxy.test_process import write_certs


def app(tmp: Path, name: str, cfg: Path, **env: str) -> ProxyApp:
    base = {
        "LOCAL_XDS_PATH": str(cfg),
        "PYZTUNNEL_CERT_DIR": str(tmp / "certs"),
        "PYZTUNNEL_READINESS_ADDR": "off",
        "PYZTUNNEL_STATS_ADDR": "off",
        "PYZTUNNEL_ADMIN_ADDR": "off",
        "CONNECTION_TERMINATION_DEADLINE": "1s",
        **env,
    }
    ca = load(CaClientSettings, environ={"PYZTUNNEL_KEY_DIR": str(tmp / f"keys-{name}")})
    return ProxyApp(load(ProxySettings, environ=base), ca, environ=base)


async def test_drain_keeps_established_then_resets(tmp_path: Path) -> None:
    a_ip, b_ip = loopback_ips()
    app_port, out_port = free_port(b_ip), free_port(a_ip)
    cfg = tmp_path / "workloads.yaml"
    cfg.write_text(config_text(a_ip, b_ip))
    write_certs(tmp_path / "certs")
    a = app(tmp_path, "a", cfg, PYZTUNNEL_DIRECT_OUTBOUND=f"{a_ip}:{out_port}={b_ip}:{app_port}")
    b = app(tmp_path, "b", cfg, PYZTUNNEL_DIRECT_INBOUND=b_ip)
    runs = [spawn(x.run(install_signals=False), f"app-{n}") for n, x in (("a", a), ("b", b))]
    async with contextlib.asynccontextmanager(echo_server)(b_ip, app_port):
        try:
            await asyncio.wait_for(asyncio.gather(a.started.wait(), b.started.wait()), 10)
            reader, writer = await asyncio.open_connection(a_ip, out_port)
            writer.write(b"one")
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"one"
            assert b.drainer is not None
            b.drainer.signal()
            await asyncio.wait_for(b.drainer.started.wait(), 5)

            # B no longer accepts new HBONE connections...
            async def refused() -> None:
                while True:
                    try:
                        _, w = await asyncio.open_connection(b_ip, 15008)
                    except ConnectionRefusedError:
                        return
                    w.close()
                    await asyncio.sleep(
                        0.01
                    )  # the accept task is being cancelled; retry (bounded by wait_for) [noqa: sleep-ok]

            await asyncio.wait_for(refused(), 5)
            # ...but the established connection still carries bytes, until the deadline resets it.
            writer.write(b"two")
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"two"
            outcome = await asyncio.wait_for(runs[1], 10)
            assert outcome is drain.Outcome.DEADLINE
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        finally:
            for x in (a, b):
                if x.drainer is not None:
                    x.drainer.signal()
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 15)
            await cancel_and_wait(*runs)

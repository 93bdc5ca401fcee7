"""Drain as ztunnel does it (reference §1.2–1.4), on two in-process proxy apps in direct mode: the first signal stops
accepting and sends GOAWAY; established connections keep flowing until the deadline, then they are reset."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

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
                    await asyncio.sleep(0.01)  # retry while the accept task is cancelled (bounded) [noqa: sleep-ok]

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


CHUNK = bytes(range(256)) * 256  # 64 KiB
REPEATS = 6  # the loss showed in every round where the client-side proxy receives the GOAWAY
IN_FLIGHT = 1 << 20


class Echoing:
    """Keeps 64 KiB chunks echoing through a connection until `stop()`, then half-closes and checks every byte came
    back in order and the echo ended with EOF. `received` counts the bytes back so far."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = 0
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def received_at_least(self, count: int) -> None:
        while self.received < count:
            self._progress.clear()
            await self._progress.wait()

    async def run(self) -> None:
        sender = spawn(self._send(), "echo-send")
        try:
            while data := await self.reader.read(1 << 18):
                at = self.received % len(CHUNK)
                expected = (CHUNK[at:] + CHUNK * (len(data) // len(CHUNK) + 1))[: len(data)]
                assert data == expected, f"echoed bytes differ at offset {self.received}"
                self.received += len(data)
                self._progress.set()
            sent = await sender
            assert self.received == sent, f"sent {sent} bytes, {self.received} came back"
        finally:
            await cancel_and_wait(sender)

    async def _send(self) -> int:
        sent = 0
        while not self._stop.is_set():
            self.writer.write(CHUNK)
            sent += len(CHUNK)
            await self.writer.drain()
            await self.received_at_least(sent - IN_FLIGHT)  # keep a bounded amount in flight through the proxies
        self.writer.write_eof()
        return sent


async def test_a_stream_in_flight_when_the_drain_starts_completes_long_before_the_deadline(tmp_path: Path) -> None:
    """docs/e2e.md finding 9: a stream carrying data when the drain's GOAWAY goes out keeps carrying it.

    Each round drains one side (alternately the client-side proxy, whose pool sends GOAWAY to the server-side one,
    and the server-side proxy, whose GOAWAY the client-side one receives) while 64 KiB chunks echo through both
    without pause, and keeps them flowing for 2 MiB more. Every byte must come back, within seconds: a byte lost in a
    proxy stalls a request/response exchange until the drain deadline (30 s here) resets it."""
    a_ip, b_ip = loopback_ips()
    cfg = tmp_path / "workloads.yaml"
    cfg.write_text(config_text(a_ip, b_ip))
    write_certs(tmp_path / "certs")
    for round_ in range(REPEATS):
        app_port, out_port = free_port(b_ip), free_port(a_ip)
        env = {"CONNECTION_TERMINATION_DEADLINE": "30s"}
        a = app(tmp_path, "a", cfg, PYZTUNNEL_DIRECT_OUTBOUND=f"{a_ip}:{out_port}={b_ip}:{app_port}", **env)
        b = app(tmp_path, "b", cfg, PYZTUNNEL_DIRECT_INBOUND=b_ip, **env)
        draining, name = (a, "a") if round_ % 2 == 0 else (b, "b")
        runs = [spawn(x.run(install_signals=False), f"app-{n}") for n, x in (("a", a), ("b", b))]
        tasks: list[asyncio.Task[Any]] = list(runs)
        async with contextlib.asynccontextmanager(echo_server)(b_ip, app_port):
            try:
                await asyncio.wait_for(asyncio.gather(a.started.wait(), b.started.wait()), 10)
                reader, writer = await asyncio.open_connection(a_ip, out_port)
                echoing = Echoing(reader, writer)
                tasks.append(exchange := spawn(echoing.run(), "echo"))
                await asyncio.wait_for(echoing.received_at_least(len(CHUNK)), 5)
                assert draining.drainer is not None
                draining.drainer.signal()
                await asyncio.wait_for(draining.drainer.started.wait(), 5)  # the GOAWAY follows at once
                try:
                    await asyncio.wait_for(echoing.received_at_least(echoing.received + (2 << 20)), 5)
                    echoing.stop()
                    await asyncio.wait_for(asyncio.shield(exchange), 5)
                except AssertionError as exc:
                    raise AssertionError(f"round {round_}, {name} draining: {exc}") from None
                except TimeoutError:
                    raise AssertionError(
                        f"round {round_}: the stream stalled after {echoing.received} bytes, {name} draining"
                    ) from None
                writer.close()
                # Nothing else is open: the draining side ends clean, without waiting for the deadline.
                assert await asyncio.wait_for(runs[0 if draining is a else 1], 10) is drain.Outcome.CLEAN
            finally:
                for x in (a, b):
                    if x.drainer is not None:
                        x.drainer.signal()
                await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 15)
                await cancel_and_wait(*tasks)

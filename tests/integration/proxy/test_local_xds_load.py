"""A big LOCAL_XDS_PATH file is parsed beside the proxy's event loop: while it is parsed (at start and on a change),
readiness answers (`500 not ready` at start) and the config in force stays whole; the new one is applied at once.

"While it is parsed" is proven, not timed: the parse is held at a gate the test opens only after the loop answered."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.workloads import local
from pyztunnel.workloads.model import LocalConfig
from pyztunnel.workloads.watch import ConfigWatch
from tests.integration.proxy.harness import free_port
from tests.integration.proxy.test_drain import app
from tests.integration.proxy.test_process import write_certs

GOOD = "workloads: [{name: a, namespace: n, workloadIps: ['10.0.0.1']}]\n"
GOOD2 = "workloads: [{name: b, namespace: n, workloadIps: ['10.0.0.2']}]\n"
GATE_S = 30  # how long a held parse waits for the test before it goes on (only reached if the loop was blocked)


class Gate:
    """Holds `local.parse` (in whichever thread runs it) until opened; says whether it is inside and whether it
    returned."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.returned = False

    def hold(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = local.parse

        def held(text: str, source: str) -> LocalConfig:
            self.entered.set()
            self.opened.wait(GATE_S)
            try:
                return real(text, source)
            finally:
                self.returned = True

        monkeypatch.setattr(local, "parse", held)

    async def inside(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, GATE_S), "the parse never started"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    held = Gate()
    held.hold(monkeypatch)
    yield held
    held.opened.set()  # never leave a parse thread waiting


async def test_readiness_answers_while_the_file_is_parsed_at_start(tmp_path: Path, gate: Gate) -> None:
    cfg = tmp_path / "workloads.yaml"
    cfg.write_text(GOOD)
    write_certs(tmp_path / "certs")
    port = free_port("127.0.0.1")
    proxy = app(tmp_path, "a", cfg, PYZTUNNEL_READINESS_ADDR=f"127.0.0.1:{port}")
    run = spawn(proxy.run(install_signals=False), "app-a")
    try:
        await gate.inside()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz/ready") as resp:
                body = await resp.text()
                assert (resp.status, gate.returned) == (500, False), body  # answered, not ready, the parse held
                assert "state manager" in body
            gate.opened.set()
            await asyncio.wait_for(proxy.state.synced.wait(), 30)
            async with http.get(f"http://127.0.0.1:{port}/healthz/ready") as resp:
                assert resp.status == 200
        assert proxy.shared.indexes.index.workload_by_ip("10.0.0.1") is not None
    finally:
        await cancel_and_wait(run)
        await proxy.close()


async def test_a_change_is_parsed_beside_the_loop_and_applied_at_once(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "workloads.yaml"
    path.write_text(GOOD)
    watch = ConfigWatch(path)
    gate.opened.set()
    assert await watch.check()
    gate.entered.clear()
    gate.opened.clear()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(GOOD2)
    os.replace(tmp, path)
    check = spawn(watch.check(), "test-config-check")
    try:
        await gate.inside()  # the loop runs this test while the parse is held
        assert watch.index.workload_by_ip("10.0.0.1") is not None  # the old config, whole, until the new one is in
        assert watch.index.workload_by_ip("10.0.0.2") is None
        gate.opened.set()
        assert await asyncio.wait_for(check, 30)
        assert watch.index.workload_by_ip("10.0.0.1") is None and watch.index.workload_by_ip("10.0.0.2") is not None
    finally:
        await cancel_and_wait(check)

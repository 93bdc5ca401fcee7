"""Cancelling what a pod's deletion cancels: the readiness probes and the pod's supervising task must end when
cancelled, also when the cancellation lands while an inner await has just completed (the race `asyncio.wait_for`
loses on Python 3.11: it returns the inner result and drops the cancellation, so a probe loop went on forever and
`evict?wait=1` never answered)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from pyztunnel.aio import spawn
from pyztunnel.cluster import probe
from pyztunnel.cluster.kubelet import stop_task


async def test_a_tcp_probe_keeps_a_cancellation_that_races_its_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    a, b = socket.socketpair()
    b.close()

    async def connect(*_: Any) -> socket.socket:
        await connected
        return a

    monkeypatch.setattr(probe, "_connect", connect)
    task = spawn(probe.tcp(-1, "10.0.0.1", 80, 5.0), "probe")
    await asyncio.sleep(0)  # one loop iteration: the task reaches its await [noqa: sleep-ok]
    # Both in the same loop iteration: the connect completes and the probe's caller is cancelled.
    connected.set_result(None)
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.cancelled(), f"the probe swallowed its cancellation and returned {task.result()!r}"


async def test_an_http_probe_keeps_a_cancellation_that_races_its_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def connect(*_: Any) -> socket.socket:
        await connected
        raise ConnectionRefusedError  # what the inner await ends with does not matter: the cancel must win

    monkeypatch.setattr(probe, "_connect", connect)
    task = spawn(probe.http(-1, "10.0.0.1", 80, "/", 5.0), "probe")
    await asyncio.sleep(0)  # one loop iteration: the task reaches its await [noqa: sleep-ok]
    connected.set_result(None)
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.cancelled(), f"the probe swallowed its cancellation and returned {task.result()!r}"


async def test_stop_task_cancels_again_a_task_that_lost_its_first_cancellation() -> None:
    cancels = 0

    async def stubborn_once() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.get_running_loop().create_future()  # blocks until cancelled
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise

    task = spawn(stubborn_once(), "stubborn-once")
    await asyncio.sleep(0)  # one loop iteration: the task reaches its await [noqa: sleep-ok]
    assert await stop_task(task, 5.0)
    assert task.cancelled() and cancels == 2


async def test_stop_task_gives_up_in_bounded_time_on_a_task_that_ignores_cancellation() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass

    task = spawn(deaf(), "deaf")
    await asyncio.sleep(0)  # one loop iteration: the task reaches its await [noqa: sleep-ok]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await stop_task(task, 0.3)
    assert loop.time() - started < 1.0
    release.set()
    await task


def test_parse_head_reads_status_and_headers() -> None:
    answer = probe.parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Pyztunnel-Config: abc\r\n\r\n")
    assert answer is not None and answer.ok
    assert answer.headers == {"content-type": "text/plain", "x-pyztunnel-config": "abc"}
    not_ready = probe.parse_head(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    assert not_ready is not None and not not_ready.ok and not_ready.headers == {}
    assert probe.parse_head(b"SSH-2.0-OpenSSH\r\n") is None
    assert probe.parse_head(b"") is None

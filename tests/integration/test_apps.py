"""The test backends on loopback: httpbin's answers, tcp-echo's integrity and half-close, and both on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.apps import httpbin, tcp_echo
from pyztunnel.apps._lifecycle import Shutdown

WAIT = 10.0


async def _run(serve: Callable[..., Coroutine[Any, Any, None]], cfg: Any) -> AsyncIterator[tuple[int, Shutdown]]:
    shutdown = Shutdown()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = spawn(serve(cfg, shutdown, lambda sock: ready.set_result(sock.getsockname()[1])), "app-under-test")
    try:
        port = await asyncio.wait_for(asyncio.shield(ready), WAIT)
        yield port, shutdown
        shutdown.stop.set()
        await asyncio.wait_for(task, WAIT)
    finally:
        await cancel_and_wait(task)


@pytest.fixture
async def httpbin_port() -> AsyncIterator[int]:
    async for port, _ in _run(httpbin.serve, httpbin.HttpbinSettings(host="127.0.0.1", port=0)):
        yield port


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async for port, _ in _run(tcp_echo.serve, tcp_echo.TcpEchoSettings(host="127.0.0.1", port=0)):
        yield port


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


# httpbin


async def test_status_codes(httpbin_port: int, http: aiohttp.ClientSession) -> None:
    base = f"http://127.0.0.1:{httpbin_port}"
    for code in (200, 201, 204, 404, 500, 503):
        async with http.get(f"{base}/status/{code}") as resp:
            assert resp.status == code
    async with http.post(f"{base}/status/418") as resp:
        assert resp.status == 418 and "teapot" in await resp.text()
    async with http.get(f"{base}/status/302", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/redirect/1"
    async with http.get(f"{base}/status/200:0,503:1") as resp:
        assert resp.status == 503  # weighted choice with all weight on 503
    for bad in ("abc", "99", "200,x", "600"):
        async with http.get(f"{base}/status/{bad}") as resp:
            assert resp.status == 400


def test_choose_status() -> None:
    import random

    rng = random.Random(1)
    assert httpbin.choose_status("200", rng) == 200
    assert {httpbin.choose_status("200,500", rng) for _ in range(50)} == {200, 500}
    assert httpbin.choose_status("200:0,0:1", rng) is None


async def test_delay_is_real_and_bounded(httpbin_port: int, http: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(f"http://127.0.0.1:{httpbin_port}/delay/0.3?x=1") as resp:
        doc = await resp.json()
    assert loop.time() - started >= 0.3
    assert resp.status == 200 and doc["args"] == {"x": "1"}
    async with http.get(f"http://127.0.0.1:{httpbin_port}/delay/nope") as resp:
        assert resp.status == 400


async def test_bytes_stream_and_drip(httpbin_port: int, http: aiohttp.ClientSession) -> None:
    base = f"http://127.0.0.1:{httpbin_port}"
    for n in (0, 1, 100_000, 5 * 1024 * 1024):
        async with http.get(f"{base}/bytes/{n}") as resp:
            assert len(await resp.read()) == n
    async with http.get(f"{base}/bytes/1000?seed=7") as a, http.get(f"{base}/bytes/1000?seed=7") as b:
        assert await a.read() == await b.read()
    async with http.get(f"{base}/bytes/{10**12}") as resp:
        assert len(await resp.read()) == httpbin.MAX_BYTES
    async with http.get(f"{base}/stream/5") as resp:
        lines = (await resp.text()).splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2, 3, 4]
    async with http.get(f"{base}/stream/1000") as resp:
        assert len((await resp.text()).splitlines()) == httpbin.MAX_STREAM
    async with http.get(f"{base}/drip?duration=0.1&numbytes=5") as resp:
        assert await resp.read() == b"*****"


async def test_request_descriptions(httpbin_port: int, http: aiohttp.ClientSession) -> None:
    base = f"http://127.0.0.1:{httpbin_port}"
    async with http.get(f"{base}/get?a=1&a=2&b=x", headers={"x-custom-thing": "v"}) as resp:
        doc = await resp.json()
    assert doc["args"] == {"a": ["1", "2"], "b": "x"} and doc["headers"]["X-Custom-Thing"] == "v"
    assert doc["origin"] == "127.0.0.1" and doc["url"].endswith("/get?a=1&a=2&b=x")
    async with http.get(f"{base}/headers") as resp:
        assert set(await resp.json()) == {"headers"}
    async with http.get(f"{base}/ip") as resp:
        assert await resp.json() == {"origin": "127.0.0.1"}
    async with http.post(f"{base}/post", json={"k": [1, 2]}) as resp:
        doc = await resp.json()
    assert doc["json"] == {"k": [1, 2]} and doc["data"] == '{"k": [1, 2]}'
    async with http.post(f"{base}/post", data={"f": "v"}) as resp:
        assert (await resp.json())["form"] == {"f": "v"}
    async with http.get(f"{base}/post") as resp:
        assert resp.status == 405
    body = b"0123456789abcdef" * (128 * 1024)  # 2 MiB: above aiohttp's default 1 MiB body limit
    async with http.put(f"{base}/anything/x/y", data=body) as resp:
        doc = await resp.json()
    assert doc["method"] == "PUT" and doc["data"] == body.decode() and doc["url"].endswith("/anything/x/y")
    async with http.get(f"{base}/healthz") as resp:
        assert await resp.text() == "ok\n"


# tcp-echo


async def test_echo_integrity_10mib(echo_port: int) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_port)

    async def send() -> None:
        for i in range(0, len(payload), 256 * 1024):
            writer.write(payload[i : i + 256 * 1024])
            await writer.drain()
        writer.write_eof()  # half-close: the server must echo everything, then close its side

    sender = spawn(send(), "echo-sender")
    digest = hashlib.sha256()
    received = 0
    while chunk := await asyncio.wait_for(reader.read(1 << 20), WAIT):
        digest.update(chunk)
        received += len(chunk)
    await sender
    writer.close()
    assert received == len(payload)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_echo_half_close_keeps_the_other_direction(echo_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
    writer.write(b"last")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), WAIT) == b"last"  # then EOF
    writer.close()


# SIGTERM, on the real command in a subprocess


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pyztunnel", *args, "--host", "127.0.0.1", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
    assert b" listening on 127.0.0.1:" in line, line
    return proc, int(line.rsplit(b":", 1)[1])


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # queued on the listener as it closed (the kernel resets those): poll again
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def _until_refused(port: int) -> None:
    """Poll (with a deadline) until the listener is gone: the signal is delivered asynchronously."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:
        if await _refused(port):
            return
        await asyncio.sleep(0.01)  # polling a condition with a deadline / pacing, not synchronisation [noqa: sleep-ok]
    raise AssertionError(f"port {port} still accepts connections")


@pytest.fixture
async def procs() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_httpbin_sigterm_finishes_in_flight_then_exits(procs: list[asyncio.subprocess.Process]) -> None:
    proc, port = await _start("httpbin")
    procs.append(proc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /drip?duration=0.5&numbytes=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)  # headers out: the request is in flight
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 5" in head
    proc.send_signal(signal.SIGTERM)
    await _until_refused(port)  # it stops accepting at once ...
    assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"*****"  # ... and the request completes
    assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    writer.close()


async def test_tcp_echo_sigterm_keeps_connections_until_they_close(procs: list[asyncio.subprocess.Process]) -> None:
    proc, port = await _start("tcp-echo")
    procs.append(proc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"before")
    assert await asyncio.wait_for(reader.readexactly(6), WAIT) == b"before"
    proc.send_signal(signal.SIGTERM)
    await _until_refused(port)
    writer.write(b"during drain")
    assert await asyncio.wait_for(reader.readexactly(12), WAIT) == b"during drain"
    assert proc.returncode is None
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()
    assert await asyncio.wait_for(proc.wait(), WAIT) == 0


async def test_tcp_echo_grace_expiry_resets_what_is_left(procs: list[asyncio.subprocess.Process]) -> None:
    proc, port = await _start("tcp-echo", "--grace", "200ms")
    procs.append(proc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"x"
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionResetError):  # an RST, not a clean FIN
        await asyncio.wait_for(reader.readexactly(1), WAIT)
    assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    writer.close()


async def test_second_signal_forces_exit(procs: list[asyncio.subprocess.Process]) -> None:
    proc, port = await _start("tcp-echo", "--grace", "60s")
    procs.append(proc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x")
    await asyncio.wait_for(reader.readexactly(1), WAIT)
    proc.send_signal(signal.SIGTERM)
    await _until_refused(port)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    writer.close()


async def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pyztunnel", "httpbin", "--host", "127.0.0.1", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 2
    assert (
        err.decode().strip()
        == f"error: httpbin: port {port} is already in use on 127.0.0.1; choose another with --port"
    )

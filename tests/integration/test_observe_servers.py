"""The readiness, metrics and admin servers on real loopback sockets, including drain behaviour."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyztunnel.aio import spawn
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.observe.loglevels import LogFilter, LogLevels
from pyztunnel.observe.metrics import Metrics, labels_for
from pyztunnel.observe.servers import (
    CONFIG_VERSION_HEADER,
    HttpServer,
    Readiness,
    ServerGroup,
    admin_server,
    listening_socket,
    metrics_server,
    readiness_server,
)

WAIT = 5.0


def url(server: HttpServer, path: str) -> str:
    host, port = server.addresses[0][:2]
    return f"http://{host}:{port}{path}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT), auto_decompress=False) as session:
        yield session


Started = Callable[[HttpServer], Awaitable[HttpServer]]


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    servers: list[HttpServer] = []

    async def start(server: HttpServer) -> HttpServer:
        servers.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


async def test_readiness_answers_as_ztunnel(http: aiohttp.ClientSession, started: Started) -> None:
    readiness = Readiness("workload proxy manager", "state manager")
    server = await started(readiness_server(readiness, [listening_socket("127.0.0.1", 0)]))
    async with http.get(url(server, "/healthz/ready")) as resp:
        assert resp.status == 500
        assert await resp.text() == "not ready, pending: state manager, workload proxy manager\n"
    readiness.unblock("state manager")
    readiness.unblock("workload proxy manager")
    await asyncio.wait_for(readiness.wait_ready(), WAIT)
    async with http.get(url(server, "/healthz/ready")) as resp:
        assert (resp.status, await resp.text()) == (200, "ready\n")
    async with http.post(url(server, "/healthz/ready")) as resp:
        assert resp.status == 405
    async with http.get(url(server, "/other")) as resp:
        assert (resp.status, await resp.read()) == (404, b"")
    readiness.block("workload proxy manager")  # re-armed, e.g. when the ZDS connection drops
    async with http.get(url(server, "/healthz/ready")) as resp:
        assert resp.status == 500 and readiness.pending == ["workload proxy manager"]


async def test_metrics_text_openmetrics_and_gzip(http: aiohttp.ClientSession, started: Started) -> None:
    metrics = Metrics(tag="t1")
    labels = labels_for(ConnectionRecord("10.0.0.1:1", "10.0.0.2:80", "outbound", src_workload="a"))
    metrics.connection_opened(labels)
    server = await started(metrics_server(metrics, [listening_socket("127.0.0.1", 0)]))
    for path in ("/metrics", "/stats/prometheus"):
        async with http.get(url(server, path), headers={"Accept-Encoding": "identity"}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/plain; charset=utf-8"
            fams = {f.name: f for f in text_string_to_metric_families(await resp.text())}
            assert fams["istio_tcp_connections_opened"].samples[0].value == 1
            assert fams["istio_tcp_sockets_open"].samples[0].labels == {"reporter": "source"}
    om = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5", "Accept-Encoding": "identity"}
    async with http.get(url(server, "/metrics"), headers=om) as resp:
        assert resp.headers["Content-Type"] == "application/openmetrics-text;charset=utf-8;version=1.0.0"
        assert (await resp.text()).endswith("# EOF\n")
    async with http.get(url(server, "/metrics"), headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert b'istio_build{component="ztunnel",tag="t1"} 1' in gzip.decompress(await resp.read())
    async with http.get(url(server, "/metrics"), headers={"Accept-Encoding": "gzip;q=0, identity"}) as resp:
        assert "Content-Encoding" not in resp.headers
    async with http.get(url(server, "/nope")) as resp:
        assert resp.status == 404


@pytest.fixture
def restore_root_level() -> Any:
    saved = logging.getLogger().level, logging.getLogger("access").level
    yield
    logging.getLogger().setLevel(saved[0])
    logging.getLogger("access").setLevel(saved[1])


@pytest.mark.usefixtures("restore_root_level")
async def test_admin_endpoints(http: aiohttp.ClientSession, started: Started) -> None:
    quits: list[str] = []

    async def dump() -> dict[str, Any]:
        return {"workloads": [], "services": [], "policies": [], "certificates": [], "version": {"version": "x"}}

    levels = LogLevels(LogFilter.parse("info"))
    server = await started(
        admin_server(
            [listening_socket("127.0.0.1", 0)], config_dump=dump, on_quit=lambda: quits.append("q"), log_levels=levels
        )
    )
    async with http.get(url(server, "/")) as resp:
        body = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        assert '<a href="config_dump">' in body and '<a href="quitquitquit">' in body
    async with http.get(url(server, "/config_dump")) as resp:
        doc = await resp.json()
        assert set(doc) == {"workloads", "services", "policies", "certificates", "version"}
    async with http.get(url(server, "/logging")) as resp:
        assert resp.status == 405 and (await resp.text()).startswith("Invalid HTTP method")
    async with http.post(url(server, "/logging")) as resp:
        assert (resp.status, await resp.text()) == (200, "current log level is info\n")
    async with http.post(url(server, "/logging?level=access=debug")) as resp:
        assert (resp.status, await resp.text()) == (200, "current log level is access=debug,info\n")
        assert logging.getLogger("access").level == logging.DEBUG
    async with http.post(url(server, "/logging?level=warn")) as resp:
        assert await resp.text() == "current log level is access=debug,warn\n"
        assert logging.getLogger().level == logging.WARNING
    async with http.post(url(server, "/logging?level=loud")) as resp:
        assert resp.status == 400 and (await resp.text()).startswith("Invalid level provided: loud")
    async with http.post(url(server, "/logging?reset")) as resp:
        assert await resp.text() == "current log level is info\n"
        assert logging.getLogger("access").level == logging.NOTSET
    async with http.get(url(server, "/quitquitquit")) as resp:
        assert resp.status == 405 and quits == []
    async with http.post(url(server, "/quitquitquit")) as resp:
        assert (resp.status, await resp.text()) == (200, "shutdown now\n") and quits == ["q"]
    async with http.get(url(server, "/debug/unknown")) as resp:
        assert resp.status == 404


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_drain_stops_accepting_and_finishes_in_flight(http: aiohttp.ClientSession) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_dump() -> dict[str, Any]:
        entered.set()
        await release.wait()
        return {"workloads": []}

    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = admin_server([sock], config_dump=slow_dump, on_quit=lambda: None)
    await server.start()
    try:
        # An idle keep-alive connection and an in-flight request exist when the drain starts.
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await idle_reader.readline()).startswith(b"HTTP/1.1 200")
        request = spawn(http.get(url(server, "/config_dump")).__aenter__(), "slow-request")
        await asyncio.wait_for(entered.wait(), WAIT)
        await server.stop_accepting()
        assert await _refused(port)
        # The idle connection is closed at once (its remaining bytes are the rest of the first response).
        await asyncio.wait_for(idle_reader.read(), WAIT)
        assert idle_reader.at_eof()
        idle_writer.close()
        release.set()
        resp = await asyncio.wait_for(request, WAIT)
        assert resp.status == 200 and (await resp.json()) == {"workloads": []}
        resp.release()
    finally:
        await asyncio.wait_for(server.close(), WAIT)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_quitquitquit_can_start_a_drain_that_closes_its_own_server(http: aiohttp.ClientSession) -> None:
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    drained = asyncio.Event()
    server: HttpServer

    async def drain() -> None:
        await server.close()
        drained.set()

    server = admin_server([sock], config_dump=dict, on_quit=lambda: spawn(drain(), "drain") and None)
    await server.start()
    async with http.post(f"http://127.0.0.1:{port}/quitquitquit") as resp:
        assert await resp.text() == "shutdown now\n"
    await asyncio.wait_for(drained.wait(), WAIT)
    assert await _refused(port)


async def test_servers_work_under_uvloop() -> None:
    import uvloop

    async def scenario() -> tuple[int, bool]:
        sock = listening_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = readiness_server(Readiness(), [sock])
        await server.start()
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz/ready") as resp,
            ):
                status = resp.status
            await server.stop_accepting()
            return status, await _refused(port)
        finally:
            await server.close()

    # A separate thread runs a uvloop loop: the test's own loop is asyncio's.
    result = await asyncio.to_thread(uvloop.run, scenario())
    assert result == (200, True)


async def test_server_group_drains_all_three_together(http: aiohttp.ClientSession) -> None:
    socks = [listening_socket("127.0.0.1", 0) for _ in range(3)]
    ports = [s.getsockname()[1] for s in socks]
    readiness = Readiness()
    group = ServerGroup(
        readiness_server(readiness, [socks[0]]),
        metrics_server(Metrics(process_metrics=False), [socks[1]]),
        admin_server([socks[2]], config_dump=dict, on_quit=lambda: None),
    )
    async with group:
        for port, path in zip(ports, ("/healthz/ready", "/metrics", "/config_dump"), strict=True):
            async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                assert resp.status == 200
        await group.stop_accepting()
        assert [await _refused(port) for port in ports] == [True, True, True]
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_readiness_names_the_config_version_when_given(http: aiohttp.ClientSession, started: Started) -> None:
    version: list[str | None] = [None]
    server = await started(readiness_server(Readiness(), [listening_socket("127.0.0.1", 0)], lambda: version[0]))
    async with http.get(url(server, "/healthz/ready")) as resp:
        assert (resp.status, await resp.text()) == (200, "ready\n")
        assert CONFIG_VERSION_HEADER not in resp.headers  # nothing loaded yet: no header, as ztunnel
    version[0] = "0123456789abcdef"
    async with http.get(url(server, "/healthz/ready")) as resp:
        assert resp.headers[CONFIG_VERSION_HEADER] == "0123456789abcdef"

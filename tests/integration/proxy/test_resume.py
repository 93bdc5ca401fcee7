"""Resumable HBONE streams across an upgrade of either end, between `pyztunnel proxy` processes (direct mode,
loopback, real TLS and HTTP/2).

Client → A (outbound, HBONE client) → B (inbound 15008, HBONE server) → app, with continuous checksummed streams both
ways. One end is upgraded (old instance drains and hands its app sockets to the new one, then is SIGKILLed): the
streams go on with no byte lost or corrupted, no reset seen by either end, and one access-log line per connection at
its real end with the bytes of the whole connection. With the switch off at the peer (a ztunnel-like peer), the
streams are not resumable and end with the reset at the old instance's deadline, as ztunnel's do.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.proxy.harness import config_text, free_port, loopback_ips
from tests.integration.proxy.streams import Endpoint, StreamServer, open_clients
from tests.integration.proxy.test_migration import serving, upgrade_and_finish
from tests.integration.proxy.test_process import Proc, start_ready, write_certs

CONNECTIONS = 5


class Nodes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.a_ip, self.b_ip = loopback_ips()
        self.app_port, self.out_port = free_port(self.b_ip), free_port(self.a_ip)
        self.server = StreamServer()
        self.procs: list[Proc] = []
        config = tmp / "workloads.yaml"
        config.write_text(config_text(self.a_ip, self.b_ip))
        write_certs(tmp / "certs")
        self.common = [
            *("--local-xds-path", str(config), "--cert-dir", str(tmp / "certs")),
            *("--readiness-addr", "", "--stats-addr", "", "--admin-addr", "", "--workload-wait", "0s"),
        ]

    async def proxy(self, end: str, name: str, *extra: str, deadline: str = "30s") -> Proc:
        """A proxy of node `end` ("a": the client's outbound side, "b": the server's inbound side)."""
        role = (
            ["--direct-outbound", f"{self.a_ip}:{self.out_port}={self.b_ip}:{self.app_port}"]
            if end == "a"
            else ["--direct-inbound", self.b_ip]
        )
        return await start_ready(
            self.procs,
            self.tmp,
            name,
            *self.common,
            *role,
            *("--handoff-socket", str(self.tmp / f"handoff-{end}.sock")),
            *("--connection-termination-deadline", deadline),
            *extra,
        )

    async def clients(self) -> list[Endpoint]:
        clients = await open_clients(self.a_ip, self.out_port, CONNECTIONS)
        for client in clients:
            await client.wait_received(200_000)
        return clients


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with serving(Nodes(tmp_path)) as n:
        yield n


@pytest.mark.parametrize("moving", ["a", "b"])
async def test_hbone_streams_survive_an_upgrade_of_either_end(nodes: Nodes, moving: str) -> None:
    staying = await nodes.proxy("b" if moving == "a" else "a", "staying")
    old = await nodes.proxy(moving, "old")
    clients = await nodes.clients()
    new = await nodes.proxy(moving, "new")
    await new.wait_for_line("registered to take established connections")
    await old.wait_for_line("a new instance will take established connections")
    await upgrade_and_finish(old, new, clients, nodes.server)  # its HBONE streams too, without a reset
    # One line per connection at its real end on each node's current proxy, with the whole connection's bytes.
    a_proxy = new if moving == "a" else staying
    for client in clients:
        src = client.writer.get_extra_info("sockname")
        line = await a_proxy.wait_for_line(f"src.addr={src[0]}:{src[1]} ")
        assert "connection complete" in line and "error=" not in line, line
        assert f"bytes_sent={client.dir.sent} bytes_recv={client.dir.received}" in line, line
    b_proxy = new if moving == "b" else staying
    inbound = await b_proxy.wait_for_lines('direction="inbound"', CONNECTIONS)
    assert all("connection complete" in line for line in inbound)
    assert len(inbound) == CONNECTIONS and not any("error=" in line for line in inbound), inbound
    assert sorted(int(line.split("bytes_recv=")[1].split()[0]) for line in inbound) == sorted(
        c.dir.sent for c in clients
    )
    assert not any("connection complete" in line for line in old.lines)
    assert not any("reset" in line for line in old.lines + new.lines + staying.lines)


async def test_a_peer_without_resume_keeps_ztunnels_behaviour(nodes: Nodes) -> None:
    await nodes.proxy("b", "staying", "--no-hbone-resume")
    old = await nodes.proxy("a", "old", deadline="1s")
    clients = await nodes.clients()
    new = await nodes.proxy("a", "new")
    await new.wait_for_line("registered to take established connections")
    old.proc.send_signal(signal.SIGTERM)
    moved = await old.wait_for_line("migrated established connections")
    assert "connections=0" in moved  # not resumable: nothing was offered
    await old.wait_for_line("drain duration expired with pending connections")
    for client in clients:
        await client.wait_received(10**12, within=10)  # ends with the reset
    assert all(isinstance(c.dir.error, ConnectionResetError) for c in clients)

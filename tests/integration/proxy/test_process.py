"""`pyztunnel proxy` as processes: two proxies in direct mode on loopback, traffic, access logs, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from pyztunnel.identity.ca import CertificateAuthority
from tests.integration.proxy.harness import CLIENT_ID, SERVER_ID, config_text, free_port, loopback_ips


def write_certs(root: Path) -> None:
    ca = CertificateAuthority.create("cluster.local")
    for identity in (CLIENT_ID, SERVER_ID):
        cert = ca.issue(identity, timedelta(hours=1))
        out = root / identity.service_account
        out.mkdir(parents=True)
        (out / "cert-chain.pem").write_text(cert.chain_pem)
        (out / "key.pem").write_text(cert.key_pem)
        (out / "root-cert.pem").write_text(cert.roots)


async def start_ready(procs: list[Proc], tmp: Path, name: str, *args: str) -> Proc:
    """A proxy process, added to `procs` (for the tear-down) and waited for until it has started."""
    proc = await start_proxy(tmp, name, *args)
    procs.append(proc)
    await proc.wait_for_line("proxy started")
    return proc


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_for_line(self, needle: str, within: float = 30) -> str:
        async def scan() -> str:
            for line in self.lines:
                if needle in line:
                    return line
            assert self.proc.stderr is not None
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"process exited before logging {needle!r}:\n" + "".join(self.lines))
                line = raw.decode()
                self.lines.append(line)
                if needle in line:
                    return line

        return await asyncio.wait_for(scan(), within)

    async def wait_for_lines(self, needle: str, count: int, within: float = 30) -> list[str]:
        """The first `count` lines containing `needle`, reading on until they are there."""

        async def scan() -> None:
            assert self.proc.stderr is not None
            while sum(needle in line for line in self.lines) < count:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"process exited before {count} lines with {needle!r}")
                self.lines.append(raw.decode())

        await asyncio.wait_for(scan(), within)
        return [line for line in self.lines if needle in line][:count]

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), 30)
        self.lines += rest.decode().splitlines(keepends=True)
        return await asyncio.wait_for(self.proc.wait(), 30)


async def http_get(host: str, port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def start_proxy(tmp: Path, name: str, *args: str) -> Proc:
    env = {**os.environ, "PYZTUNNEL_KEY_DIR": str(tmp / f"keys-{name}"), "RUST_LOG": "info", "XDS_ADDRESS": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pyztunnel", "proxy", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    return Proc(proc)


async def test_two_proxy_processes(tmp_path: Path) -> None:
    a_ip, b_ip = loopback_ips()
    app_port, out_port = free_port(b_ip), free_port(a_ip)
    cfg = tmp_path / "workloads.yaml"
    cfg.write_text(config_text(a_ip, b_ip))
    write_certs(tmp_path / "certs")
    common = ["--local-xds-path", str(cfg), "--cert-dir", str(tmp_path / "certs")]

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    app = await asyncio.start_server(echo, b_ip, app_port)
    ports = {name: free_port(a_ip) for name in ("ready", "stats", "admin")}
    servers = [
        *("--readiness-addr", f"{a_ip}:{ports['ready']}", "--stats-addr", f"{a_ip}:{ports['stats']}"),
        *("--admin-addr", f"{a_ip}:{ports['admin']}"),
    ]
    no_servers = ["--readiness-addr", "", "--stats-addr", "", "--admin-addr", ""]
    a = await start_proxy(tmp_path, "a", *common, *servers, "--direct-outbound", f"{a_ip}:{out_port}={b_ip}:{app_port}")
    b = await start_proxy(tmp_path, "b", *common, *no_servers, "--direct-inbound", b_ip)
    try:
        await a.wait_for_line("proxy started")
        await b.wait_for_line("proxy started")
        assert await http_get(a_ip, ports["ready"], "/healthz/ready") == (200, "ready\n")
        reader, writer = await asyncio.open_connection(a_ip, out_port)
        writer.write(b"ping" * 1000)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4000), 10) == b"ping" * 1000
        writer.close()
        await writer.wait_closed()
        out_line = await a.wait_for_line("connection complete")
        in_line = await b.wait_for_line("connection complete")
        status, metrics = await http_get(a_ip, ports["stats"], "/metrics")
        assert status == 200
        opened = [line for line in metrics.splitlines() if line.startswith("istio_tcp_connections_opened_total{")]
        assert len(opened) == 1 and 'reporter="source"' in opened[0] and opened[0].endswith(" 1")
        assert f'destination_principal="{SERVER_ID}"' in opened[0]
        status, dump = await http_get(a_ip, ports["admin"], "/config_dump")
        assert status == 200 and json.loads(dump)["workloads"][0]["name"] == "client-1"
        # A corrupt config is refused; the last good one keeps serving.
        cfg.write_text("workloads: [{namespace: a, colour: red}]\n")
        error_line = await a.wait_for_line("config not loaded")
        assert f"{cfg}:1: " in error_line
        reader, writer = await asyncio.open_connection(a_ip, out_port)
        writer.write(b"again")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"again"
        writer.close()
        # POST /quitquitquit drains and exits like SIGTERM
        assert (await http_get(a_ip, ports["admin"], "/quitquitquit", method="POST"))[0] == 200
        assert await asyncio.wait_for(a.proc.wait(), 15) == 0
    finally:
        codes = [await a.stop(), await b.stop()]
        sys.stderr.write("".join(a.lines + b.lines))
        app.close()
        await app.wait_closed()
    assert codes == [0, 0]
    assert "\tinfo\taccess\tconnection complete\t" in out_line
    assert f'src.identity="{CLIENT_ID}"' in out_line and f'dst.identity="{SERVER_ID}"' in out_line
    assert f"dst.addr={b_ip}:15008 dst.hbone_addr={b_ip}:{app_port}" in out_line
    assert 'direction="outbound" bytes_sent=4000 bytes_recv=4000 duration="' in out_line
    assert 'direction="inbound" bytes_sent=4000 bytes_recv=4000' in in_line
    assert 'dst.workload="server-1" dst.namespace="b"' in in_line
    assert any("shutdown complete" in line for line in a.lines)

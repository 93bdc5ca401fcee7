"""Identity costs: CSR round trips per second against `pyztunnel ca`, and HBONE mTLS handshakes per second.

Peers measured in the same run: signing without gRPC (the CA core alone), and TLS 1.3 handshakes with a plain
server-authenticated `ssl` context pair (no client certificate, default cipher suites). `openssl s_time` against the
mTLS server is reported too when openssl is installed. Options: `--seconds N` per measurement (default 2).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pyztunnel.identity import certs, tls
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.ca_server import add_node_token, start
from pyztunnel.identity.client import CaClient
from pyztunnel.identity.config import CaClientSettings, CaSettings
from pyztunnel.identity.spiffe import Identity


def _seconds(args: list[str]) -> float:
    for arg in args:
        if arg.startswith("--seconds="):
            return float(arg.split("=", 1)[1])
    return 2.0


def _write_workloads(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    workloads = tmp / "workloads.yaml"
    workloads.write_text(
        "workloads:\n"
        + "".join(
            f"- {{name: p{i}, namespace: ns, serviceAccount: sa{i}, node: n, workloadIps: []}}\n" for i in range(8)
        )
    )
    return workloads


async def _csr_rate(tmp: Path, seconds: float, concurrency: int) -> float:
    workloads = _write_workloads(tmp)
    token = add_node_token(tmp / "ca", "n")
    server, port, _ = await start(CaSettings(state_dir=tmp / "ca", listen="127.0.0.1:0", workloads=workloads))
    client = CaClient(
        CaClientSettings(
            ca_address=f"https://127.0.0.1:{port}", ca_root_ca=str(tmp / "ca" / "root-cert.pem"), auth_token=token
        ),
        environ={},
    )
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        identity = Identity("cluster.local", "ns", f"sa{i}")
        while time.perf_counter() < deadline:
            await client.fetch(identity)
            done += 1

    try:
        await client.fetch(Identity("cluster.local", "ns", "sa0"))  # connect first
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return done / (time.perf_counter() - started)
    finally:
        await client.close()
        await server.stop(None)


def _sign_rate(seconds: float) -> float:
    ca = CertificateAuthority.create("cluster.local")
    identity = Identity("cluster.local", "ns", "sa")
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        ca.sign_csr(
            certs.make_csr(identity, certs.new_key()), identity, 86400, max_validity_s=86400, default_validity_s=86400
        )
        done += 1
    return done / (time.perf_counter() - started)


async def _handshake_rate(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, seconds: float) -> float:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    done, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="")
            await reader.read(1)
            writer.close()
            done += 1
        return done / (time.perf_counter() - started)
    finally:
        server.close()
        await server.wait_closed()


def _plain_pair(ca: CertificateAuthority, tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert_pem, key_pem = ca.issue_server(["localhost"], ["127.0.0.1"], timedelta(hours=1))
    (tmp / "c.pem").write_text(key_pem + cert_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(tmp / "c.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cadata=ca.root_pem)
    return server, client


def _s_time(port: int, cert: certs.WorkloadCert, tmp: Path, seconds: float) -> float | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    (tmp / "client.pem").write_text(cert.key_pem + cert.chain_pem)
    (tmp / "root.pem").write_text(cert.roots)
    out = subprocess.run(
        [
            *(openssl, "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(max(1, int(seconds)))),
            *("-cert", str(tmp / "client.pem"), "-CAfile", str(tmp / "root.pem")),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    match = re.search(r"(\d+) connections in (\d+) real seconds", out.stdout)
    return int(match.group(1)) / int(match.group(2)) if match and int(match.group(2)) else None


async def _main(seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pzt-bench-identity-"))
    keys = tls.ContextCache(tmp / "keys")
    try:
        return await _measure(tmp, keys, seconds)
    finally:
        keys.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure(tmp: Path, keys: tls.ContextCache, seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    result["csr_per_s_sequential"] = await _csr_rate(tmp / "a", seconds, 1)
    result["csr_per_s_8_concurrent"] = await _csr_rate(tmp / "b", seconds, 8)
    result["peer_sign_without_grpc_per_s"] = _sign_rate(seconds)
    ca = CertificateAuthority.create("cluster.local")
    server_cert = ca.issue(Identity("cluster.local", "ns", "server"), timedelta(hours=1))
    client_cert = ca.issue(Identity("cluster.local", "ns", "client"), timedelta(hours=1))
    result["mtls_handshakes_per_s"] = await _handshake_rate(keys.server(server_cert), keys.client(client_cert), seconds)
    plain_server, plain_client = _plain_pair(ca, tmp)
    result["peer_plain_tls13_handshakes_per_s"] = await _handshake_rate(plain_server, plain_client, seconds)

    # openssl s_time as the client against the mTLS server context (the server runs in this loop).
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=keys.server(server_cert))
    port = server.sockets[0].getsockname()[1]
    try:
        result["openssl_s_time_mtls_conn_per_s"] = await asyncio.to_thread(_s_time, port, client_cert, tmp, seconds)
    finally:
        server.close()
        await server.wait_closed()
    return result


def run(args: list[str]) -> dict[str, object]:
    seconds = _seconds(args)
    result = asyncio.run(_main(seconds))
    rows = [
        ("CSR round trips/s, 1 at a time", result["csr_per_s_sequential"]),
        ("CSR round trips/s, 8 concurrent (the store's limit)", result["csr_per_s_8_concurrent"]),
        ("peer: CSR make+sign without gRPC, /s", result["peer_sign_without_grpc_per_s"]),
        ("HBONE mTLS handshakes/s (asyncio client+server, one core)", result["mtls_handshakes_per_s"]),
        ("peer: plain TLS 1.3 handshakes/s (no client cert)", result["peer_plain_tls13_handshakes_per_s"]),
        ("openssl s_time client against the mTLS server, conn/s", result["openssl_s_time_mtls_conn_per_s"]),
    ]
    for label, value in rows:
        print(f"  {label:<60} {value:>9.0f}" if isinstance(value, float) else f"  {label:<60} {value!s:>9}")
    result["ratio_csr_grpc_vs_sign"] = round(
        result["csr_per_s_8_concurrent"] / result["peer_sign_without_grpc_per_s"], 3
    )
    result["ratio_mtls_vs_plain_handshakes"] = round(
        result["mtls_handshakes_per_s"] / result["peer_plain_tls13_handshakes_per_s"], 3
    )
    print(f"  ratio CSR over gRPC (8 concurrent) / local signing: {result['ratio_csr_grpc_vs_sign']}")
    print(f"  ratio mTLS / plain TLS 1.3 handshakes: {result['ratio_mtls_vs_plain_handshakes']}")
    return {k: round(v, 1) if isinstance(v, float) and not k.startswith("ratio") else v for k, v in result.items()}

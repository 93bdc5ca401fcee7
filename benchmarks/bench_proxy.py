"""pyztunnel's two-proxy HBONE tunnel against HAProxy as a two-hop mTLS TCP tunnel, on loopback, in one run.

Both chains: client → proxy A (plain TCP in) → mTLS (TLS 1.3) → proxy B → backend. pyztunnel runs in direct mode
(`--direct-outbound` / `--direct-inbound`, real TLS and HTTP/2 CONNECT); HAProxy runs two single-threaded processes
(`mode tcp`, `ssl crt … verify required`). Backends: iperf3 (bulk), nginx (HTTP). Load: iperf3, wrk, hey.

Measures (issue 3's table): bulk throughput of one connection; HTTP requests/s over 100 keep-alive connections; new
connections/s (Connection: close); p50/p99 latency at a fixed 1000 requests/s and the proxies' CPU there; memory per
idle proxied connection. Prints each number for both and the ratio pyztunnel / HAProxy.

    python -m benchmarks proxy [--seconds=3] [--idle=500]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.spiffe import Identity

CLIENT = Identity("cluster.local", "bench", "client")
SERVER = Identity("cluster.local", "bench", "server")
TOOLS = ("haproxy", "nginx", "iperf3", "wrk", "hey")


@dataclass
class Chain:
    name: str
    entry: tuple[str, int]  # where the client connects (proxy A's listener)
    procs: list[subprocess.Popen[bytes]]


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _wait_port(ip: str, port: int, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((ip, port)) == 0:
                return
        time.sleep(0.05)  # polling a port with a deadline, in a benchmark harness
    raise RuntimeError(f"{ip}:{port} did not come up")


def _write_certs(root: Path) -> dict[str, Path]:
    ca = CertificateAuthority.create("cluster.local")
    paths: dict[str, Path] = {}
    for identity in (CLIENT, SERVER):
        cert = ca.issue(identity, timedelta(hours=2))
        out = root / "certs" / identity.service_account
        out.mkdir(parents=True)
        (out / "cert-chain.pem").write_text(cert.chain_pem)
        (out / "key.pem").write_text(cert.key_pem)
        (out / "root-cert.pem").write_text(cert.roots)
        combined = root / f"{identity.service_account}.pem"
        combined.write_text(cert.chain_pem + cert.key_pem)
        paths[identity.service_account] = combined
    paths["root"] = root / "certs" / "client" / "root-cert.pem"
    return paths


def _start_pyztunnel(root: Path, a: str, b: str, backend_port: int) -> Chain:
    """Two `pyztunnel proxy` processes in direct mode; certificates from `root/certs`."""
    (root / "workloads.yaml").write_text(
        f"""workloads:
- {{uid: a, name: client-1, namespace: bench, serviceAccount: client, trustDomain: cluster.local,
   workloadIps: ['{a}'], protocol: HBONE}}
- {{uid: b, name: server-1, namespace: bench, serviceAccount: server, trustDomain: cluster.local,
   workloadIps: ['{b}'], protocol: HBONE}}
"""
    )
    port = _free_port(a)
    common = [sys.executable, "-m", "pyztunnel", "proxy", "--local-xds-path", str(root / "workloads.yaml")]
    common += ["--cert-dir", str(root / "certs"), "--stats-addr", "", "--admin-addr", ""]
    env = {**os.environ, "PYZTUNNEL_KEY_DIR": str(root / "keys"), "RUST_LOG": "warn"}
    ready = [(a, _free_port(a)), (b, _free_port(b))]
    procs = [
        subprocess.Popen(
            [
                *common,
                "--readiness-addr",
                f"{ready[0][0]}:{ready[0][1]}",
                "--direct-outbound",
                f"{a}:{port}={b}:{backend_port}",
            ],
            env=env,
        ),
        subprocess.Popen([*common, "--readiness-addr", f"{ready[1][0]}:{ready[1][1]}", "--direct-inbound", b], env=env),
    ]
    for host, ready_port in ready:  # readiness, not a probe of the data path (that would open a proxied connection)
        _wait_ready(host, ready_port)
    return Chain("pyztunnel", (a, port), procs)


def _wait_ready(host: str, port: int, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)  # polling readiness with a deadline
    raise RuntimeError(f"proxy at {host}:{port} did not become ready")


def _start_haproxy(root: Path, a: str, b: str, backend_port: int, certs: dict[str, Path]) -> Chain:
    port, hop = _free_port(a), _free_port(b)
    head = "global\n    nbthread 1\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
    head += "    timeout server 60s\n"
    cfg_a = root / "haproxy-a.cfg"
    cfg_a.write_text(
        head
        + f"frontend out\n    bind {a}:{port}\n    default_backend hop\nbackend hop\n"
        + f"    server b {b}:{hop} ssl crt {certs['client']} ca-file {certs['root']} verify required"
        + " alpn h2 ssl-min-ver TLSv1.3\n"
    )
    cfg_b = root / "haproxy-b.cfg"
    cfg_b.write_text(
        head
        + f"frontend in\n    bind {b}:{hop} ssl crt {certs['server']} ca-file {certs['root']} verify required"
        + " alpn h2 ssl-min-ver TLSv1.3\n    default_backend app\n"
        + f"backend app\n    server app {b}:{backend_port}\n"
    )
    procs = [subprocess.Popen(["haproxy", "-db", "-f", str(cfg)]) for cfg in (cfg_a, cfg_b)]
    _wait_port(a, port)
    _wait_port(b, hop)
    return Chain("haproxy", (a, port), procs)


@contextlib.contextmanager
def _nginx(root: Path, listens: list[tuple[str, int]]) -> Iterator[None]:
    conf = root / "nginx.conf"
    servers = "".join(
        f"    server {{ listen {ip}:{port}; location / {{ return 200 'ok\\n'; }} }}\n" for ip, port in listens
    )
    conf.write_text(
        f"daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/nginx.err;\n"
        f"events {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n    keepalive_requests 1000000;\n"
        f"    client_body_temp_path {root};\n    proxy_temp_path {root};\n    fastcgi_temp_path {root};\n"
        f"    uwsgi_temp_path {root};\n    scgi_temp_path {root};\n{servers}}}\n"
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(root)], stderr=subprocess.DEVNULL)
    try:
        for ip, port in listens:
            _wait_port(ip, port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _bulk(chain: Chain, backend: tuple[str, int], seconds: float) -> float:
    server = subprocess.Popen(
        ["iperf3", "-s", "--forceflush", "-B", backend[0], "-p", str(backend[1])], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        while "Server listening" not in server.stdout.readline():
            pass
        out = subprocess.run(
            ["iperf3", "-c", chain.entry[0], "-p", str(chain.entry[1]), "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def _wrk(chain: Chain, seconds: float, connections: int, close: bool) -> float:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run([*cmd, f"http://{chain.entry[0]}:{chain.entry[1]}/"], capture_output=True, text=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    return float(match.group(1)) if match else 0.0


def _fixed_rate(chain: Chain, seconds: float) -> dict[str, float]:
    """hey: 10 workers × 100 requests/s = 1000 requests/s; latency percentiles and the proxies' CPU."""
    pids = [p.pid for p in chain.procs]
    cpu0, t0 = _cpu_seconds(pids), time.monotonic()
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", "10", "-q", "100", f"http://{chain.entry[0]}:{chain.entry[1]}/"],
        capture_output=True,
        text=True,
    )
    cpu = (_cpu_seconds(pids) - cpu0) / (time.monotonic() - t0)
    lat = {p: float(v) * 1000 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", out.stdout)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    rate = float(rps.group(1)) if rps else 0.0
    return {
        "p50_ms": lat.get("50", 0.0),
        "p99_ms": lat.get("99", 0.0),
        "rps": rate,
        "cpu_per_1000rps_per_proxy": cpu / len(pids) / max(rate / 1000, 1e-9),
    }


def _idle_memory(chain: Chain, count: int) -> float:
    """KiB of proxy memory per idle proxied connection (both proxies together), `count` connections to nginx."""
    pids = [p.pid for p in chain.procs]
    before = _rss_kib(pids)
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(chain.entry, timeout=10)
            socks.append(s)
        # one request on each makes sure every connection is established end to end before measuring
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            s.recv(4096)
        time.sleep(0.5)  # let the allocator settle before reading RSS (measurement, not synchronisation)
        return (_rss_kib(pids) - before) / count
    finally:
        for s in socks:
            s.close()


def _stop(chain: Chain) -> None:
    for proc in chain.procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in chain.procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _arg(args: list[str], name: str, default: float) -> float:
    for a in args:
        if a.startswith(f"--{name}="):
            return float(a.split("=", 1)[1])
    return default


def run(args: list[str]) -> dict[str, object]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (make install)")
        return {"skipped": missing}
    seconds = _arg(args, "seconds", 3)
    idle = int(_arg(args, "idle", 500))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pzt-bench-") as tmp:
        root = Path(tmp)
        certs = _write_certs(root)
        nets = {"pyztunnel": ("127.0.31.1", "127.0.31.2"), "haproxy": ("127.0.32.1", "127.0.32.2")}
        http = {name: _free_port(b) for name, (_, b) in nets.items()}
        bulk_ports = {name: _free_port(b) for name, (_, b) in nets.items()}
        with _nginx(root, [(nets[name][1], http[name]) for name in nets]):
            for name, (a, b) in nets.items():
                row: dict[str, float] = {}
                for what, backend_port in (("bulk", bulk_ports[name]), ("http", http[name])):
                    if name == "pyztunnel":
                        chain = _start_pyztunnel(root, a, b, backend_port)
                    else:
                        chain = _start_haproxy(root, a, b, backend_port, certs)
                    try:
                        if what == "bulk":
                            row["bulk_gbps"] = _bulk(chain, (b, backend_port), seconds)
                        else:
                            row["rps_100_keepalive"] = _wrk(chain, seconds, 100, close=False)
                            row["new_conns_per_s"] = _wrk(chain, seconds, 50, close=True)
                            row.update(_fixed_rate(chain, seconds))
                            row["idle_kib_per_conn"] = _idle_memory(chain, idle)
                    finally:
                        _stop(chain)
                results[name] = row
    _report(results)
    return {"results": results}


def _report(results: dict[str, dict[str, float]]) -> None:
    rows = [
        ("bulk throughput, 1 connection (Gbit/s)", "bulk_gbps", True),
        ("HTTP requests/s, 100 keep-alive conns", "rps_100_keepalive", True),
        ("new connections/s (Connection: close)", "new_conns_per_s", True),
        ("latency p50 at 1000 rps (ms)", "p50_ms", False),
        ("latency p99 at 1000 rps (ms)", "p99_ms", False),
        ("CPU per 1000 rps per proxy (vCPU)", "cpu_per_1000rps_per_proxy", False),
        ("memory per idle connection (KiB, both proxies)", "idle_kib_per_conn", False),
    ]
    py, ha = results["pyztunnel"], results["haproxy"]
    print(f"{'measure':48} {'pyztunnel':>12} {'haproxy':>12} {'ratio':>8}")
    for label, key, _higher_better in rows:
        ratio = py[key] / ha[key] if ha.get(key) else float("nan")
        print(f"{label:48} {py[key]:12.3f} {ha[key]:12.3f} {ratio:8.2f}")
    print("ratio = pyztunnel / haproxy (for latency, CPU and memory lower is better)")

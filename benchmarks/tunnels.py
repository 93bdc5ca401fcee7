"""Two-hop mTLS tunnels on loopback for bench_mtls: pyztunnel (HBONE) and HAProxy (TLS over TCP), same certificates.

Addresses: a random 127.R.S.0/24 per run, so concurrent runs and other tests never collide:
- .10  client side: each tunnel's first hop listens here (one port per target);
- .20  the server workload: the apps (nginx, iperf3) and pyztunnel's inbound HBONE listener (:15008);
- .30  HAProxy's second hop (TLS, client certificate required).
Every process started here is stopped when its context exits (terminate, then kill), whatever happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

from benchmarks.nginx_util import free_port
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.spiffe import Identity

CLIENT_ID = Identity("cluster.local", "bench-a", "client")
SERVER_ID = Identity("cluster.local", "bench-b", "server")
START_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class Addresses:
    client: str
    server: str
    hop2: str

    @classmethod
    def random(cls) -> Addresses:
        net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        return cls(f"{net}.10", f"{net}.20", f"{net}.30")


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """One side of the comparison: where a client connects for each target, and the proxy processes to watch."""

    name: str
    entry: dict[str, tuple[str, int]]  # target name ("http", "bulk") → address to connect to
    pids: tuple[int, ...]


def wait_until(
    condition: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    within: float = START_TIMEOUT,
) -> None:
    """Poll CONDITION with a deadline (readiness, not a sleep-as-synchronisation); fail fast if PROC died."""
    deadline = time.monotonic() + within
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {within:.0f} s")
        time.sleep(0.02)


def logged(log: Path, needle: str) -> bool:
    return needle in log.read_text(errors="replace")


def listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def process(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ARGV with stdout+stderr to LOG; on exit: SIGTERM, then SIGKILL after 10 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    except BaseException:
        sys.stderr.write(
            f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]) + "\n"
        )
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_certs(root: Path) -> dict[str, Path]:
    """ECDSA P-256 workload certificates from a fresh mesh CA, in the layouts both proxies read.

    pyztunnel: ROOT/pyz/<sa>/{cert-chain,key,root-cert}.pem; HAProxy: ROOT/<sa>.pem (chain + key), ROOT/root.pem.
    """
    ca = CertificateAuthority.create("cluster.local")
    paths = {"pyz": root / "pyz", "root": root / "root.pem"}
    for identity in (CLIENT_ID, SERVER_ID):
        cert = ca.issue(identity, timedelta(hours=2))
        chain = "".join(cert.chain)
        out = paths["pyz"] / identity.service_account
        out.mkdir(parents=True)
        (out / "cert-chain.pem").write_text(chain)
        (out / "key.pem").write_text(cert.key_pem)
        (out / "root-cert.pem").write_text(cert.roots)
        combined = root / f"{identity.service_account}.pem"
        combined.write_text(chain + cert.key_pem)
        paths[identity.service_account] = combined
        paths["root"].write_text(cert.roots)
    return paths


WORKLOADS = """\
workloads:
- {{uid: bench-a-1, name: client-1, namespace: bench-a, serviceAccount: client, trustDomain: cluster.local,
   workloadIps: ['{client}'], protocol: HBONE}}
- {{uid: bench-b-1, name: server-1, namespace: bench-b, serviceAccount: server, trustDomain: cluster.local,
   workloadIps: ['{server}'], protocol: HBONE}}
"""


@contextlib.contextmanager
def pyztunnel_pair(
    tmp: Path,
    addrs: Addresses,
    apps: dict[str, int],
    certs: dict[str, Path],
    extra_env: dict[str, str] | None = None,
    wrap: dict[str, list[str]] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Tunnel]:
    """Client proxy: a direct outbound listener per app (ADDR.client:P=ADDR.server:APP); server proxy: inbound HBONE.
    WRAP: an argv prefix per side ("client", "server") to run that proxy under (a profiler)."""
    config = tmp / "workloads.yaml"
    config.write_text(WORKLOADS.format(client=addrs.client, server=addrs.server))
    entry = {name: (addrs.client, free_port(addrs.client)) for name in apps}
    outbound = ",".join(f"{addrs.client}:{entry[n][1]}={addrs.server}:{port}" for n, port in apps.items())

    def env(name: str, ip: str) -> dict[str, str]:
        values = {
            **os.environ,
            "PYZTUNNEL_KEY_DIR": str(tmp / f"keys-{name}"),
            "LOCAL_XDS_PATH": str(config),
            "XDS_ADDRESS": "",  # the file only (ztunnel's local mode)
            "PYZTUNNEL_CERT_DIR": str(certs["pyz"]),
            "PYZTUNNEL_LISTENER_HANDOFF": "false",
            # Each proxy's own servers on its own loopback address: never the shared 0.0.0.0:1502x.
            "PYZTUNNEL_READINESS_ADDR": f"{ip}:{free_port(ip)}",
            "PYZTUNNEL_STATS_ADDR": f"{ip}:{free_port(ip)}",
            "PYZTUNNEL_ADMIN_ADDR": f"{ip}:{free_port(ip)}",
        }
        values.update(extra_env or {})
        return values

    cmd = [sys.executable, "-m", "pyztunnel", "proxy"]
    wrap = wrap or {}
    server_cmd = [*wrap.get("server", []), *cmd, "--direct-inbound", addrs.server]
    client_cmd = [*wrap.get("client", []), *cmd, "--direct-outbound", outbound]
    with (
        process(server_cmd, tmp / "pyz-server.log", env("b", addrs.server)) as server,
        process(client_cmd, tmp / "pyz-client.log", env("a", addrs.client)) as client,
    ):
        for proc, log in ((server, "pyz-server.log"), (client, "pyz-client.log")):
            wait_until(functools.partial(logged, tmp / log, "proxy started"), log, proc, start_timeout)
        yield Tunnel("pyztunnel", entry, (client.pid, server.pid))


HAPROXY_GLOBAL = """\
global
    nbthread {threads}
    maxconn 8000
    ssl-default-bind-ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256
    ssl-default-server-ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    maxconn 8000
    timeout connect 10s
    timeout client 10m
    timeout server 10m
"""


@contextlib.contextmanager
def haproxy_pair(
    tmp: Path, addrs: Addresses, apps: dict[str, int], certs: dict[str, Path], threads: int = 1
) -> Iterator[Tunnel]:
    """Hop 1: plain TCP in, TLS 1.3 + client certificate out; hop 2: TLS in (client certificate required and
    verified against the mesh root), plain TCP to the app. One haproxy process per hop, like pyztunnel's."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    entry = {name: (addrs.client, free_port(addrs.client)) for name in apps}
    hop2 = {name: free_port(addrs.hop2) for name in apps}
    tag = f"t{threads}"
    one = HAPROXY_GLOBAL.format(threads=threads)
    two = HAPROXY_GLOBAL.format(threads=threads)
    for name, app_port in apps.items():
        one += (
            f"frontend in_{name}\n    bind {addrs.client}:{entry[name][1]}\n    default_backend out_{name}\n"
            f"backend out_{name}\n    server hop2 {addrs.hop2}:{hop2[name]} ssl verify required"
            f" ca-file {certs['root']} crt {certs['client']}\n"
        )
        two += (
            f"frontend in_{name}\n    bind {addrs.hop2}:{hop2[name]} ssl crt {certs['server']}"
            f" ca-file {certs['root']} verify required\n    default_backend app_{name}\n"
            f"backend app_{name}\n    server app {addrs.server}:{app_port}\n"
        )
    (tmp / f"hop1-{tag}.cfg").write_text(one)
    (tmp / f"hop2-{tag}.cfg").write_text(two)
    with (
        process([binary, "-db", "-f", str(tmp / f"hop2-{tag}.cfg")], tmp / f"haproxy-hop2-{tag}.log") as second,
        process([binary, "-db", "-f", str(tmp / f"hop1-{tag}.cfg")], tmp / f"haproxy-hop1-{tag}.log") as first,
    ):
        for name in apps:
            wait_until(functools.partial(listening, addrs.hop2, hop2[name]), "haproxy hop 2", second)
            wait_until(functools.partial(listening, *entry[name]), "haproxy hop 1", first)
        label = "haproxy" if threads == 1 else f"haproxy-{threads}t"
        yield Tunnel(label, entry, (first.pid, second.pid))


@contextlib.contextmanager
def iperf3_server(tmp: Path, host: str) -> Iterator[int]:
    port = free_port(host)
    log = tmp / "iperf3-server.log"
    with process(["iperf3", "-s", "--forceflush", "-B", host, "-p", str(port)], log) as proc:
        wait_until(functools.partial(logged, log, "Server listening"), "iperf3 server", proc)
        yield port


def cpu_seconds(pid: int) -> float:
    """utime + stime of PID so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_seconds(pid: int) -> float:
    """Time PID spent runnable but waiting for a CPU so far (/proc/PID/schedstat, second field, ns): how much of a
    latency comes from sharing the CPUs rather than from the proxy's own work."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")

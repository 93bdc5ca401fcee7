"""XDS at mesh scale: a `pyztunnel proxy` process takes 10 000 and 100 000 workloads + 1 000 services from our delta
ADS server in one response, then 1 % of the workloads change every second for 30 s; beside it, in the same run, the
same state from a LOCAL_XDS_PATH file (ztunnel's other source), loaded and then rewritten once a second.

Measured (the server side sees the proxy's ACKs, so "applied" means decoded, validated, indexed and ACKed):
- push → ACK of the one big response (time from response to applied); target 100 k ≤ 5 s;
- ACK latency p50/p99 of the churn pushes (10 a second, 0.1 % each); target p99 ≤ 100 ms;
- the proxy's RSS growth per 1 000 workloads (VmRSS after the load minus before); target ≤ 2 KiB per workload;
- the file: write → the proxy's readiness names the new version (polled every 20 ms), and RSS the same way; and the
  slowest readiness poll meanwhile (the file is parsed beside the proxy's event loop: a slow answer is a blocked loop).

`python -m benchmarks xds [--workloads=10000,100000] [--services=1000] [--churn-seconds=30] [--pushes-per-second=10]
[--no-file]`
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from collections.abc import Set as AbstractSet
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.cpu_sampler import cpu_seconds
from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.protocols import xds, xds_server
from pyztunnel.protocols._pb import workload_pb2 as wpb
from pyztunnel.proxy.config import LOCAL_XDS_MAX_BYTES
from pyztunnel.workloads.watch import config_version
from pyztunnel.xds.server import XdsServer


def options(args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workloads": [10_000, 100_000],
        "services": 1000,
        "churn_seconds": 30.0,
        "pps": 10,
        "file": True,
    }
    for arg in args:
        key, _, value = arg.lstrip("-").partition("=")
        if key == "workloads":
            out["workloads"] = [int(v) for v in value.split(",")]
        elif key == "services":
            out["services"] = int(value)
        elif key == "churn-seconds":
            out["churn_seconds"] = float(value)
        elif key == "pushes-per-second":
            out["pps"] = int(value)
        elif key == "no-file":
            out["file"] = False
    return out


# ------------------------------------------------------------------ the state


def ip_of(i: int) -> str:
    return f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def svc_key(s: int) -> str:
    return f"ns{s % 50}/svc-{s}.ns{s % 50}.svc.cluster.local"


def workload_payload(i: int, services: int, healthy: bool = True) -> bytes:
    s = i % services
    w = wpb.Workload(
        uid=f"Kubernetes//v1/Pod/ns{s % 50}/pod-{i}",
        name=f"pod-{i}",
        namespace=f"ns{s % 50}",
        addresses=[socket.inet_aton(ip_of(i))],
        tunnel_protocol=wpb.HBONE,
        trust_domain="cluster.local",
        service_account=f"sa-{s}",
        node=f"node-{i % 100}",
        workload_type=wpb.POD,
        canonical_name=f"svc-{s}",
        canonical_revision="v1",
        cluster_id="Kubernetes",
        status=wpb.HEALTHY if healthy else wpb.UNHEALTHY,
    )
    w.services[svc_key(s)].ports.add(service_port=80, target_port=8080)
    return wpb.Address(workload=w).SerializeToString()


def service_payload(s: int) -> bytes:
    ns, _, host = svc_key(s).partition("/")
    svc = wpb.Service(
        name=f"svc-{s}",
        namespace=ns,
        hostname=host,
        addresses=[wpb.NetworkAddress(address=socket.inet_aton(f"10.96.{s >> 8}.{s & 255}"))],
        ports=[wpb.Port(service_port=80, target_port=8080)],
    )
    return wpb.Address(service=svc).SerializeToString()


def file_text(count: int, services: int, unhealthy: AbstractSet[int] = frozenset()) -> str:
    lines = ["workloads:"]
    for i in range(count):
        s = i % services
        status = "Unhealthy" if i in unhealthy else "Healthy"
        lines.append(
            f"- {{uid: Kubernetes//v1/Pod/ns{s % 50}/pod-{i}, name: pod-{i}, namespace: ns{s % 50}, "
            f"serviceAccount: sa-{s}, trustDomain: cluster.local, workloadIps: [{ip_of(i)}], protocol: HBONE, "
            f"node: node-{i % 100}, workloadType: pod, canonicalName: svc-{s}, canonicalRevision: v1, "
            f"clusterId: Kubernetes, status: {status}, services: {{'{svc_key(s)}': {{80: 8080}}}}}}"
        )
    lines.append("services:")
    for s in range(services):
        ns, _, host = svc_key(s).partition("/")
        lines.append(
            f"- {{name: svc-{s}, namespace: {ns}, hostname: {host}, vips: ['/10.96.{s >> 8}.{s & 255}'], "
            f"ports: {{80: 8080}}}}"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the proxy process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def readiness(port: int) -> tuple[int, str]:
    """(status, the config version header) of the proxy's readiness endpoint; (0, "") when it does not answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, ""
    try:
        writer.write(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
    except TimeoutError:
        return 0, ""  # a blocked event loop: not ready
    finally:
        writer.close()
    head = raw.partition(b"\r\n\r\n")[0].decode(errors="replace").split("\r\n")
    version = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("x-pyztunnel-config:")), "")
    return int(head[0].split()[1]), version


@contextlib.asynccontextmanager
async def proxy(tmp: Path, env: dict[str, str]) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    port = free_port()
    full = {
        **os.environ,
        "PYZTUNNEL_READINESS_ADDR": f"127.0.0.1:{port}",
        "PYZTUNNEL_STATS_ADDR": "off",
        "PYZTUNNEL_ADMIN_ADDR": "off",
        "PYZTUNNEL_KEY_DIR": str(tmp / "keys"),
        "NODE_NAME": "bench-node",  # no workload is on it: no certificate fetches
        "CA_ROOT_CA": str(tmp / "none.pem"),
        "RUST_LOG": "warn",
        **env,
    }
    log = (tmp / "proxy.log").open("wb")
    name = ["--pod-name", f"pzt-bench-xds-{tmp.name}"]  # in argv: a leftover can be found
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pyztunnel", "proxy", *name, env=full, stderr=log)
    try:
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log.close()


class Polls:
    slowest_s = 0.0  # the longest a readiness poll waited for its answer


async def until_ready(
    port: int, proc: asyncio.subprocess.Process, within: float, version: str = "", polls: Polls | None = None
) -> float:
    """Poll readiness (every 20 ms) until 200 (and the version, if given); returns when it happened."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode}")
        asked = time.monotonic()
        status, got = await readiness(port)
        if polls is not None:
            polls.slowest_s = max(polls.slowest_s, time.monotonic() - asked)
        if status == 200 and (not version or got == version):
            return time.monotonic()
        await asyncio.sleep(0.02)  # a benchmark's polling interval
    raise RuntimeError(f"the proxy was not ready (version {version or 'any'}) within {within:.0f} s")


# ------------------------------------------------------------------ XDS


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def bench_xds(tmp: Path, count: int, services: int, churn_s: float, pps: int) -> dict[str, Any]:
    ca = CertificateAuthority.create("cluster.local")
    (tmp / "root.pem").write_text(ca.root_pem)
    cert, key = ca.issue_server(["localhost"], ["127.0.0.1"], timedelta(hours=1))
    acks: list[tuple[str, float]] = []
    acked = asyncio.Event()

    def on_event(_stream: xds_server.Stream, event: xds_server.Event, latency: float | None) -> None:
        if event.kind in ("ack", "nack") and latency is not None:
            acks.append((event.kind, latency))
            acked.set()

    server = XdsServer(on_event=on_event)
    port = await server.start("127.0.0.1:0", key, cert + ca.root_pem)
    env = {"XDS_ADDRESS": f"https://127.0.0.1:{port}", "XDS_ROOT_CA": str(tmp / "root.pem"), "AUTH_TOKEN": "bench"}
    catalog = server.catalog
    try:
        async with proxy(tmp, env) as (proc, ready_port):
            await until_ready(ready_port, proc, 60)
            rss0 = rss_kib(proc.pid)
            for i in range(count):
                catalog.put(
                    xds.ADDRESS_TYPE,
                    f"Kubernetes//v1/Pod/ns{(i % services) % 50}/pod-{i}",
                    xds_server.Entry.of(workload_payload(i, services)),
                )
            for s in range(services):
                catalog.put(xds.ADDRESS_TYPE, svc_key(s), xds_server.Entry.of(service_payload(s)))
            acks.clear()
            acked.clear()
            cpu0 = cpu_seconds(proc.pid)
            server.publish()
            await asyncio.wait_for(acked.wait(), 300)
            load_cpu = cpu_seconds(proc.pid) - cpu0
            kind, load_s = acks[0]
            if kind != "ack":
                raise RuntimeError("the proxy NACKed the full state")
            rss1 = rss_kib(proc.pid)
            # churn: 1 % of the workloads per second, in `pps` pushes a second
            per_push = max(1, count // 100 // pps)
            rng = random.Random(7)
            unhealthy: set[int] = set()
            acks.clear()
            pushes = int(churn_s * pps)
            started = time.monotonic()
            for n in range(pushes):
                for i in rng.sample(range(count), per_push):
                    unhealthy ^= {i}
                    name = f"Kubernetes//v1/Pod/ns{(i % services) % 50}/pod-{i}"
                    catalog.put(
                        xds.ADDRESS_TYPE, name, xds_server.Entry.of(workload_payload(i, services, i not in unhealthy))
                    )
                server.publish()
                next_at = started + (n + 1) / pps
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # the churn's pace
            await server.wait(lambda: len(acks) >= pushes, 60)
            latencies = [lat for kind, lat in acks if kind == "ack"]
            return {
                "load_s": round(load_s, 3),
                "load_cpu_s": round(load_cpu, 3),
                "churn_pushes": pushes,
                "churn_per_push": per_push,
                "churn_acked": len(latencies),
                "churn_ack_p50_ms": round(percentile(latencies, 50) * 1000, 1),
                "churn_ack_p99_ms": round(percentile(latencies, 99) * 1000, 1),
                "rss_kib_per_1000": round((rss1 - rss0) / count * 1000, 1),
                "rss_before_mib": round(rss0 / 1024, 1),
                "rss_after_mib": round(rss1 / 1024, 1),
            }
    finally:
        await server.close()


async def bench_file(tmp: Path, count: int, services: int, churn_s: float) -> dict[str, Any]:
    path = tmp / "workloads.yaml"

    def write(text: str) -> str:
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_text(text)
        os.replace(tmp_path, path)
        return config_version(text.encode())

    text = file_text(count, services)
    if len(text.encode()) > LOCAL_XDS_MAX_BYTES:  # the proxy refuses it (bounded input): nothing to time
        return {
            "skipped": f"{len(text.encode()) / 2**20:.0f} MiB, over LOCAL_XDS_PATH's {LOCAL_XDS_MAX_BYTES >> 20} MiB bound"
        }
    version = write("workloads: []\n")
    env = {"XDS_ADDRESS": "", "LOCAL_XDS_PATH": str(path), "PYZTUNNEL_CONFIG_POLL": "0.02s"}
    async with proxy(tmp, env) as (proc, ready_port):
        await until_ready(ready_port, proc, 60, version)
        rss0 = rss_kib(proc.pid)
        polls = Polls()
        started = time.monotonic()
        version = write(text)
        load_s = await until_ready(ready_port, proc, 600, version, polls) - started
        rss1 = rss_kib(proc.pid)
        rng = random.Random(7)
        unhealthy: set[int] = set()
        reloads: list[float] = []
        end = time.monotonic() + churn_s
        while time.monotonic() < end:
            unhealthy ^= set(rng.sample(range(count), max(1, count // 100)))
            started = time.monotonic()
            version = write(file_text(count, services, unhealthy))
            reloads.append(await until_ready(ready_port, proc, 600, version, polls) - started)
        return {
            "load_s": round(load_s, 3),
            "slowest_poll_ms": round(polls.slowest_s * 1000, 1),
            "reloads": len(reloads),
            "reload_p50_ms": round(percentile(reloads, 50) * 1000, 1),
            "reload_p99_ms": round(percentile(reloads, 99) * 1000, 1),
            "rss_kib_per_1000": round((rss1 - rss0) / count * 1000, 1),
        }


def run(args: list[str]) -> dict[str, Any]:
    opts = options(args)
    results: dict[str, Any] = {"options": opts, "load_average": os.getloadavg()}
    for count in opts["workloads"]:
        with tempfile.TemporaryDirectory(prefix="pzt-bench-xds-") as tmp:
            over_xds = asyncio.run(bench_xds(Path(tmp), count, opts["services"], opts["churn_seconds"], opts["pps"]))
        from_file: dict[str, Any] = {"load_s": float("nan"), "reloads": 0, "rss_kib_per_1000": float("nan")}
        from_file |= {"reload_p50_ms": float("nan"), "reload_p99_ms": float("nan"), "slowest_poll_ms": float("nan")}
        if opts["file"]:
            with tempfile.TemporaryDirectory(prefix="pzt-bench-xds-") as tmp:
                from_file = asyncio.run(bench_file(Path(tmp), count, opts["services"], opts["churn_seconds"]))
        results[str(count)] = {"xds": over_xds, "file": from_file}
        print(
            f"{count} workloads + {opts['services']} services:\n"
            f"  XDS:  one response applied (push → ACK) {over_xds['load_s']:.2f} s ({over_xds['load_cpu_s']:.2f} s of"
            f" the proxy's CPU); churn {over_xds['churn_per_push']}"
            f" workloads × {opts['pps']}/s: ACK p50 {over_xds['churn_ack_p50_ms']} ms, p99 "
            f"{over_xds['churn_ack_p99_ms']} ms ({over_xds['churn_acked']}/{over_xds['churn_pushes']} acked); RSS "
            f"{over_xds['rss_kib_per_1000']} KiB per 1000 workloads\n"
            + (
                f"  file: not run ({from_file['skipped']})"
                if "skipped" in from_file
                else f"  file: loaded (write → readiness names it) {from_file['load_s']:.2f} s; rewritten once a "
                f"second: p50 {from_file['reload_p50_ms']} ms, p99 {from_file['reload_p99_ms']} ms "
                f"({from_file['reloads']} reloads); RSS {from_file['rss_kib_per_1000']} KiB per 1000 workloads; "
                f"slowest readiness answer meanwhile {from_file['slowest_poll_ms']} ms"
            ),
            flush=True,
        )
        if count >= 100_000:
            targets = (
                ("100 k applied ≤ 5 s", over_xds["load_s"] <= 5),
                ("churn ACK p99 ≤ 100 ms", over_xds["churn_ack_p99_ms"] <= 100),
                ("≤ 2 KiB RSS per workload", over_xds["rss_kib_per_1000"] <= 2048),
            )
            print("  targets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets))
    print(f"load average at start: {results['load_average']}")
    return results

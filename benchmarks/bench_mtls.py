"""pyztunnel as a two-hop HBONE/mTLS tunnel against HAProxy as a two-hop mTLS TCP tunnel (issues 3 and 14), in one run.

Targets are issue 14's: bulk and keep-alive >= 1.0x HAProxy, new connections >= 3x, added p50 and p99 <= 1.2x each, CPU per
request of the busiest proxy <= 1.0x (all paired per-round ratios), memory per idle connection <= 16 KiB.

Sides (all on loopback, one run, measured measure by measure so machine noise hits every side alike):
- direct: the client talks to the app;
- haproxy: hop 1 (TCP in, TLS 1.3 + client certificate out) → hop 2 (TLS in, client certificate verified) → app;
- pyztunnel: client proxy (direct outbound listener) → HBONE (HTTP/2 CONNECT over mTLS, pooled) → server proxy → app.
Each proxy hop is one process with one thread (`nbthread 1`), as each pyztunnel proxy is one Python process.
Apps: nginx (1 worker, `/` answers "ok\\n") and an iperf3 server.

Every number but memory is the median of interleaved rounds (direct, haproxy, pyztunnel, direct, …), and the ratio
pyztunnel/haproxy is the median of the ratios measured within each round: the CPUs are shared with other work, and
a side measured seconds after another sees nearly the same machine.

Flags: `--duration S` seconds per measure and round (default 3), `--rounds N` interleaved rounds of every measure
but memory (default 3; the median is reported), `--idle N` idle connections for the memory measure (default 1000), `--haproxy-threads N` adds a
side with N-thread haproxies; `--quick` = 1 s, 1 round, 300 idle connections (about 30 s in all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import tunnels
from benchmarks.nginx_util import nginx
from benchmarks.tunnels import Tunnel

FIXED_RATE = 1000  # requests/s for the latency and CPU measures
RATE_CONNECTIONS = 10


@dataclasses.dataclass(frozen=True)
class Options:
    duration: int = 3
    idle: int = 1000
    haproxy_threads: int = 0
    rounds: int = 3

    @classmethod
    def parse(cls, args: list[str]) -> Options:
        values: dict[str, int] = {}
        if "--quick" in args:
            values.update(duration=1, idle=300, rounds=1)
        for arg in args:
            for name in ("duration", "idle", "haproxy-threads", "rounds"):
                if arg.startswith(f"--{name}="):
                    values[name.replace("-", "_")] = int(arg.split("=", 1)[1])
        return cls(**values)


# ---------------------------------------------------------------------------------------------------------- measures
def bulk_gbps(host: str, port: int, duration: int) -> float:
    """iperf3, one connection, client → server; Gbit/s received. The server takes one test at a time and notices the
    previous test's end only when its proxied control connection closes: "busy" is retried until a deadline."""
    deadline = time.monotonic() + 15
    while True:
        out = subprocess.run(
            ["iperf3", "-c", host, "-p", str(port), "-P", "1", "-t", str(duration), "-J"],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        )
        report = json.loads(out.stdout)
        error = report.get("error")
        if error is None:
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
        if "busy" not in error or time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 via {host}:{port}: {error}")
        time.sleep(0.2)  # polling the server's readiness, bounded by the deadline


def wrk_rps(url: str, connections: int, duration: int, *headers: str) -> float:
    """wrk's requests/s; any socket error or non-2xx answer fails the measure (a fast error is not a result)."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "10s"]
    for header in headers:
        cmd += ["-H", header]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 30).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # With "Connection: close" wrk counts the server's close after each answer as a read error; only the rest count.
    bad = 0 if errors is None else int(errors[1]) + int(errors[3]) + int(errors[4])
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad or non2xx:
        raise RuntimeError(f"wrk saw errors through {url}:\n{out}")
    return float(rate[1])


@dataclasses.dataclass(frozen=True)
class FixedRate:
    p50_ms: float
    p99_ms: float
    qps: float
    calls: int
    cpu_s: tuple[float, ...]  # CPU seconds each proxy process spent over the run
    wait_s: tuple[float, ...]  # seconds each proxy process waited runnable for a CPU (shared machine)


def fixed_rate(url: str, duration: int, pids: tuple[int, ...], tmp: Path) -> FixedRate:
    """`pyztunnel load` at FIXED_RATE over RATE_CONNECTIONS keep-alive connections (10 µs histogram resolution),
    and the CPU seconds the proxies spent meanwhile (divided by the calls made: CPU per request, rate-independent)."""
    result = tmp / "load.json"
    cmd = [sys.executable, "-m", "pyztunnel", "load", "-qps", str(FIXED_RATE), "-c", str(RATE_CONNECTIONS)]
    cmd += ["-t", f"{duration}s", "-r", "0.00001", "-workers", "1", "-quiet", "-json", str(result), url]
    before = [tunnels.cpu_seconds(pid) for pid in pids]
    waited = [tunnels.runqueue_wait_seconds(pid) for pid in pids]
    subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30)
    after = [tunnels.cpu_seconds(pid) for pid in pids]
    wait = tuple(tunnels.runqueue_wait_seconds(pid) - w for pid, w in zip(pids, waited, strict=True))
    data = json.loads(result.read_text())
    codes = data["RetCodes"]
    if set(codes) != {"200"}:
        raise RuntimeError(f"fixed-rate run through {url} answered {codes}")
    hist = data["DurationHistogram"]
    pct = {float(p["Percentile"]): float(p["Value"]) * 1000 for p in hist["Percentiles"]}
    calls = int(hist["Count"]) + RATE_CONNECTIONS  # plus one warmup call per connection
    cpu = tuple(a - b for a, b in zip(after, before, strict=True))
    return FixedRate(pct[50.0], pct[99.0], float(data["ActualQPS"]), calls, cpu, wait)


def summarize_fixed_rate(runs: list[FixedRate]) -> dict[str, float | None]:
    """Median latency over interleaved rounds (a noisy neighbour hits one round, not the result); CPU over all calls,
    as vCPU per 1000 requests/s (CPU seconds per call x 1000)."""
    calls = sum(r.calls for r in runs)
    per_proxy = [sum(r.cpu_s[i] for r in runs) / calls * 1000 for i in range(len(runs[0].cpu_s))]
    return {
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "fixed_qps": statistics.median(r.qps for r in runs),
        "cpu_max_proxy": max(per_proxy) if per_proxy else None,
        "cpu_both": sum(per_proxy) if per_proxy else None,
        "runq_wait_us": sum(sum(r.wait_s) for r in runs) / calls * 1e6 if per_proxy else None,
    }


def busiest_cpu(run: FixedRate) -> float:
    """vCPU per 1000 requests/s of the busiest proxy in one round (for the paired ratio)."""
    return max(run.cpu_s) / run.calls * 1000


def idle_kib_per_connection(host: str, port: int, count: int, pids: tuple[int, ...]) -> tuple[float, ...]:
    """Open COUNT connections, one request each (so every hop is established), hold them idle; each proxy's
    RSS delta / COUNT (KiB)."""
    before = [tunnels.rss_kib(pid) for pid in pids]
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            held.append(idle_connection(host, port))
        after = [tunnels.rss_kib(pid) for pid in pids]
    finally:
        for sock in held:
            sock.close()
    return tuple((a - b) / count for a, b in zip(after, before, strict=True))


def idle_connection(host: str, port: int, timeout: float = 10) -> socket.socket:
    """A connection through HOST:PORT after one request and its answer (every hop is established), left open."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        got = b""
        while not got.endswith(b"\r\n\r\nok\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"a connection via {host}:{port} closed before the answer")
            got += chunk
    except BaseException:
        sock.close()
        raise
    return sock


# ------------------------------------------------------------------------------------------------------------ table
@dataclasses.dataclass(frozen=True)
class Row:
    measure: str
    unit: str
    values: dict[str, float | None]  # side → value
    target: str
    met: bool | None
    ratio: float | None
    judged: bool = True


def _ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or peer is None or peer <= 0:
        return None
    return ours / peer


def paired_ratio(ours: list[float], peer: list[float]) -> float | None:
    """Median over rounds of ours/peer measured in the same round (seconds apart): robust to a neighbour's load that
    changes between rounds, which a ratio of two medians is not. Rounds where the peer's value is <= 0 are skipped."""
    ratios = [o / p for o, p in zip(ours, peer, strict=True) if p > 0]
    return statistics.median(ratios) if ratios else None


def build_rows(
    results: dict[str, dict[str, float | None]], sides: list[str], ratios: dict[str, float | None]
) -> list[Row]:
    def row(
        key: str, label: str, unit: str, target: str, check: Callable[[float, float | None], bool | None] | None
    ) -> Row:
        """CHECK None: an informational row, never judged."""
        values = {side: results[side].get(key) for side in sides}
        ours, peer = values.get("pyztunnel"), values.get("haproxy")
        ratio = ratios[key] if key in ratios else _ratio(ours, peer)
        met = None if ours is None or check is None else check(ours, ratio)
        return Row(label, unit, values, target, met, ratio, judged=check is not None)

    def at_most(limit: float) -> Callable[[float, float | None], bool | None]:
        # Added latency through HAProxy within noise of zero: no ratio to judge (shown as n/a, never as met).
        return lambda _, r: None if r is None else r <= limit

    return [
        row("bulk_gbps", "bulk, 1 connection", "Gbit/s", ">= 1.0x haproxy", lambda _, r: r is not None and r >= 1.0),
        row(
            "keepalive_rps",
            "HTTP req/s, 100 keep-alive conns",
            "req/s",
            ">= 1.0x",
            lambda _, r: r is not None and r >= 1,
        ),
        row("newconn_rps", "new connections/s", "conn/s", ">= 3x", lambda _, r: r is not None and r >= 3.0),
        row("added_p50_ms", "added latency p50 @1000 rps", "ms", "<= 1.2x", at_most(1.2)),
        row("added_p99_ms", "added latency p99 @1000 rps", "ms", "<= 1.2x", at_most(1.2)),
        row("cpu_max_proxy", "CPU per 1000 rps, busiest proxy", "vCPU", "<= 1.0x", at_most(1.0)),
        row("cpu_both", "CPU per 1000 rps, both proxies", "vCPU", "(info)", None),
        row("runq_wait_us", "CPU wait per request, both proxies", "us", "(info: sharing)", None),
        row("idle_kib", "memory per idle connection, both proxies", "KiB", "<= 16", lambda v, _: v <= 16),
        row("idle_kib_client", "  of which client-side proxy", "KiB", "(info)", None),
    ]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def render(rows: list[Row], sides: list[str]) -> str:
    head = ["measure", "unit", *sides, "pyz/haproxy (paired)", "target", "met"]
    body = [
        [
            r.measure,
            r.unit,
            *(_fmt(r.values[s]) for s in sides),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target,
            "" if not r.judged else "n/a" if r.met is None else ("yes" if r.met else "NO"),
        ]
        for r in rows
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------- run
def run(args: list[str]) -> dict[str, object]:
    opts = Options.parse(args)
    d = opts.duration
    addrs = tunnels.Addresses.random()
    with tempfile.TemporaryDirectory(prefix="pzt-bench-mtls-") as tmp_text, contextlib.ExitStack() as stack:
        tmp = Path(tmp_text)
        certs = tunnels.write_certs(tmp / "certs")
        apps = {
            "http": stack.enter_context(nginx(workers=1, host=addrs.server)),
            "bulk": stack.enter_context(tunnels.iperf3_server(tmp, addrs.server)),
        }
        direct = Tunnel("direct", {name: (addrs.server, port) for name, port in apps.items()}, ())
        sides: list[Tunnel] = [direct, stack.enter_context(tunnels.haproxy_pair(tmp, addrs, apps, certs))]
        if opts.haproxy_threads > 1:
            sides.append(stack.enter_context(tunnels.haproxy_pair(tmp, addrs, apps, certs, opts.haproxy_threads)))
        sides.append(stack.enter_context(tunnels.pyztunnel_pair(tmp, addrs, apps, certs)))
        names = [s.name for s in sides]
        print(
            f"sides: {', '.join(names)}; {d} s per measure; apps on {addrs.server}; haproxy {_haproxy_version()};"
            f" {os.cpu_count()} CPUs, load average {_loadavg()}",
            flush=True,
        )
        results: dict[str, dict[str, float | None]] = {s.name: {} for s in sides}

        def each(label: str, measure: Callable[[Tunnel], dict[str, float | None]]) -> None:
            started = time.monotonic()
            shown: dict[str, dict[str, str]] = {}
            for side in sides:
                new = measure(side)
                results[side.name].update(new)
                shown[side.name] = {k: _fmt(v) for k, v in new.items()}
            print(f"  {label} ({time.monotonic() - started:.0f} s): {shown}", flush=True)

        def url(side: Tunnel) -> str:
            host, port = side.entry["http"]
            return f"http://{host}:{port}/"

        def memory(side: Tunnel) -> dict[str, float | None]:
            if not side.pids:
                return {"idle_kib": None}
            client, server = idle_kib_per_connection(*side.entry["http"], opts.idle, side.pids)
            return {"idle_kib": client + server, "idle_kib_client": client, "idle_kib_server": server}

        rate_runs: dict[str, list[FixedRate]] = {name: [] for name in names}

        def rate(side: Tunnel) -> dict[str, float | None]:
            run = fixed_rate(url(side), d, side.pids, tmp)
            rate_runs[side.name].append(run)
            return {"p50_ms": run.p50_ms, "p99_ms": run.p99_ms}

        each("memory per idle connection", memory)  # first, while the proxies are fresh: the least flattering
        throughput: dict[str, Callable[[Tunnel], float]] = {
            "bulk_gbps": lambda s: bulk_gbps(*s.entry["bulk"], max(d, 1)),
            "keepalive_rps": lambda s: wrk_rps(url(s), 100, d),
            "newconn_rps": lambda s: wrk_rps(url(s), 50, d, "Connection: close"),
        }
        samples: dict[tuple[str, str], list[float]] = {}

        def sampled(key: str, side: Tunnel) -> dict[str, float | None]:
            samples.setdefault((side.name, key), []).append(throughput[key](side))
            return {key: samples[side.name, key][-1]}

        # Rounds interleave the sides (direct, haproxy, pyztunnel, direct, …): a noisy neighbour on these shared CPUs
        # then lands in one round of every side rather than in all of one side; each number is the median of rounds.
        for key in throughput:
            for n in range(opts.rounds):
                each(f"{key}, round {n + 1}/{opts.rounds}", functools.partial(sampled, key))
        for (name, key), values in samples.items():
            results[name][key] = statistics.median(values)
        for n in range(opts.rounds):
            each(f"fixed {FIXED_RATE} rps, round {n + 1}/{opts.rounds}", rate)
        added: dict[tuple[str, str], list[float]] = {}
        for name in names:
            results[name].update(summarize_fixed_rate(rate_runs[name]))
            if name == "direct":
                continue
            for p in ("p50", "p99"):
                key = f"added_{p}_ms"
                added[name, key] = [
                    getattr(own, f"{p}_ms") - getattr(base, f"{p}_ms")
                    for own, base in zip(rate_runs[name], rate_runs["direct"], strict=True)
                ]
                results[name][key] = statistics.median(added[name, key])
        ratios = {key: paired_ratio(samples["pyztunnel", key], samples["haproxy", key]) for key in throughput}
        ratios["cpu_max_proxy"] = paired_ratio(
            [busiest_cpu(r) for r in rate_runs["pyztunnel"]], [busiest_cpu(r) for r in rate_runs["haproxy"]]
        )
        for key in ("added_p50_ms", "added_p99_ms"):
            ratios[key] = paired_ratio(added["pyztunnel", key], added["haproxy", key])
    rows = build_rows(results, names, ratios)
    print(f"load average at the end {_loadavg()} (other processes share these CPUs: compare ratios, not absolutes)")
    print(render(rows, names), flush=True)
    unmet = [r.measure for r in rows if r.met is False]
    print("unmet: " + (", ".join(unmet) if unmet else "none"), flush=True)
    unjudged = [r.measure for r in rows if r.judged and r.met is None and r.values.get("pyztunnel") is not None]
    if unjudged:
        print("not judged (haproxy's own value within noise of zero): " + ", ".join(unjudged), flush=True)
    return {
        "duration_s": d,
        "rounds": opts.rounds,
        "idle_connections": opts.idle,
        "results": results,
        "rows": [dataclasses.asdict(r) for r in rows],
        "rounds_samples": {f"{side}/{key}": values for (side, key), values in samples.items()},
        "unmet": unmet,
    }


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _haproxy_version() -> str:
    out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    match = re.search(r"version (\S+)", out)
    return match[1] if match else "?"

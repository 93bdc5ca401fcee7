"""Where a pyztunnel proxy's CPU goes on bench_mtls's path (issue 14's profiles, docs/bench.md). Not a benchmark: a
profiler run against one proxy of the same two-hop HBONE/mTLS tunnel, on loopback.

    python -m benchmarks.profile_mtls callgrind [--side=server] [--modes=keepalive,bulk,newconn] [--requests=3000]
    python -m benchmarks.profile_mtls pyspy [--side=server] [--modes=…] [--seconds=6] [--pyspy=PATH]
    python -m benchmarks.profile_mtls memory [--connections=500] [--frames=12] [--top=25]

Every mode takes `--tls-transport=memory|socket`: the proxies' PYZTUNNEL_TLS_TRANSPORT (default: theirs).

- `callgrind`: the proxy runs under `valgrind --tool=callgrind` with instrumentation off until a measure starts;
  each measure is a fixed amount of work (N keep-alive requests over 10 connections; 64 MiB of iperf3 bulk; N/10 new
  connections with one request each), counted in instructions (Ir): the same on a loaded machine as on a quiet one,
  so two versions of the proxy can be compared on this shared machine. Printed: Ir per request / MiB / connection,
  and the share of each native object (the interpreter = all pure-Python code; libcrypto = AES-GCM and ECDSA; libssl;
  uvloop; libc) and of the top functions.
- `pyspy`: py-spy (PyPI, not a project dependency: pass its path) samples the proxy with native frames while wrk or
  iperf3 drives it at full speed; samples are folded by what the Python code was doing (categories below).
- `memory`: both proxies run under tracemalloc (benchmarks/memsnap.py); N idle connections (one request each, like
  bench_mtls's memory row) are opened, then N more: the Python memory the second N hold, per connection and by
  allocation site (file:line, bytes and blocks per connection). Deterministic, so fine on a loaded machine; RSS
  (what bench_mtls reports) adds what Python does not trace (OpenSSL's buffers, allocator slack). An HBONE connection
  serves 100 streams (the pool's default), so its own cost shows as 1/100 of it per idle connection.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks import bench_mtls, tunnels
from benchmarks.nginx_util import nginx
from benchmarks.tunnels import Tunnel

RATE_CONNECTIONS = 10
BULK_MIB = 64


def _flags(args: list[str]) -> dict[str, str]:
    out = {"side": "server", "modes": "keepalive,bulk,newconn", "requests": "3000", "seconds": "6", "pyspy": "py-spy"}
    out |= {"connections": "500", "frames": "12", "top": "25", "tls-transport": ""}
    for arg in args:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in out:
            raise SystemExit(f"unknown flag {arg!r}; flags: {', '.join('--' + k for k in out)}")
        out[key] = value
    return out


def _load(url: str, requests: int, keepalive: bool, connections: int = RATE_CONNECTIONS) -> None:
    cmd = [sys.executable, "-m", "pyztunnel", "load", "-qps", "0", "-c", str(connections), "-n", str(requests)]
    cmd += ["-timeout", "60s", "-quiet", "-workers", "1"]
    if not keepalive:
        cmd.append("-keepalive=false")
    subprocess.run([*cmd, url], check=True, capture_output=True, timeout=3600)


def _bulk(host: str, port: int, mib: int) -> None:
    subprocess.run(
        ["iperf3", "-c", host, "-p", str(port), "-n", f"{mib}M", "-J"], check=True, capture_output=True, timeout=3600
    )


@contextlib.contextmanager
def _pair(
    tmp: Path, wrap: dict[str, list[str]], start_timeout: float, extra_env: dict[str, str] | None = None
) -> Iterator[Tunnel]:
    addrs = tunnels.Addresses.random()
    certs = tunnels.write_certs(tmp / "certs")
    with contextlib.ExitStack() as stack:
        apps = {
            "http": stack.enter_context(nginx(workers=1, host=addrs.server)),
            "bulk": stack.enter_context(tunnels.iperf3_server(tmp, addrs.server)),
        }
        yield stack.enter_context(tunnels.pyztunnel_pair(tmp, addrs, apps, certs, extra_env, wrap, start_timeout))


def proxy_env(flags: dict[str, str]) -> dict[str, str]:
    """The proxies' environment for these flags."""
    return {"PYZTUNNEL_TLS_TRANSPORT": flags["tls-transport"]} if flags["tls-transport"] else {}


def _url(t: Tunnel) -> str:
    host, port = t.entry["http"]
    return f"http://{host}:{port}/"


# ------------------------------------------------------------------------------------------------------- callgrind
def _annotate(path: Path) -> tuple[int, list[tuple[int, str, str]]]:
    """Total Ir and (Ir, function, object) per function, self cost."""
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--show-percs=no", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0
    rows: list[tuple[int, str, str]] = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(?.*?PROGRAM TOTALS", line)
        if m:
            total = int(m[1].replace(",", ""))
            continue
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S+?):(.+?)(?: \[(.+)\])?$", line)
        if m:
            rows.append((int(m[1].replace(",", "")), m[3].strip(), m[4] or m[2]))
    return total, rows


OBJECTS = (  # first match wins: uvloop and _ssl live under lib/python3.11/
    ("uvloop + libuv", ("uvloop", "libuv")),
    ("_ssl module", ("_ssl.", "Modules/_ssl")),
    ("libcrypto (AES-GCM, ECDSA, SHA)", ("libcrypto",)),
    ("libssl (TLS records, handshake)", ("libssl",)),
    ("libc (memcpy, malloc)", ("libc.so", "libc-", "./malloc", "./string", "./stdio", "./libio", "./nptl", "sysdeps")),
    ("interpreter (all pure-Python code)", ("python3", "libpython", "Python-3.")),
)


def _by_object(rows: list[tuple[int, str, str]]) -> dict[str, int]:
    out: dict[str, int] = collections.Counter()
    for ir, _, obj in rows:
        label = next((name for name, keys in OBJECTS if any(k in obj for k in keys)), f"other ({obj})")
        out[label if not label.startswith("other") else "other"] += ir
    return dict(out)


def callgrind(args: list[str]) -> dict[str, object]:
    flags = _flags(args)
    requests, side = int(flags["requests"]), flags["side"]
    modes = flags["modes"].split(",")
    result: dict[str, object] = {"side": side, "requests": requests}
    with tempfile.TemporaryDirectory(prefix="pzt-profile-") as tmp_text:
        tmp = Path(tmp_text)
        out = tmp / "callgrind.out"
        wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
        with _pair(tmp, {side: wrap}, 300, proxy_env(flags)) as t:
            pid = t.pids[0 if side == "client" else 1]
            _load(_url(t), RATE_CONNECTIONS, True)  # the HBONE connection exists before anything is counted
            work: dict[str, tuple[Callable[[], None], float, str]] = {
                "keepalive": (lambda: _load(_url(t), requests, True), requests, "request"),
                "bulk": (lambda: _bulk(*t.entry["bulk"], BULK_MIB), BULK_MIB, "MiB"),
                "newconn": (lambda: _load(_url(t), requests // 10, False), requests // 10, "connection"),
            }
            for mode in modes:
                run, units, unit = work[mode]
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
                subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
                began = time.monotonic()
                run()
                subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
                subprocess.run(["callgrind_control", "-d", mode, str(pid)], check=True, capture_output=True)
                dump = max(tmp.glob(f"callgrind.out.{pid}.*"), key=lambda p: p.stat().st_mtime)
                total, rows = _annotate(dump)
                shutil.copy(dump, Path("bench-results") / f"callgrind-{side}-{mode}.out")
                per = total / units
                objects = {k: round(v / total, 3) for k, v in sorted(_by_object(rows).items(), key=lambda kv: -kv[1])}
                top = [
                    (name, Path(obj).name, round(ir / total, 3)) for ir, name, obj in sorted(rows, reverse=True)[:25]
                ]
                result[mode] = {"ir_per_unit": round(per), "unit": unit, "objects": objects, "top": top}
                print(f"== {side} proxy, {mode}: {per:,.0f} Ir per {unit} ({time.monotonic() - began:.0f} s)")
                for name, share in objects.items():
                    print(f"   {share:6.1%}  {name}")
                for name, obj, share in top[:15]:
                    print(f"   {share:6.1%}  {name}  [{obj}]")
    return result


# ---------------------------------------------------------------------------------------------------------- py-spy
# The owner of a sample is its innermost Python frame (what the proxy's code was doing); its kind is where the CPU was
# below that frame: the TLS libraries, libc (syscalls, memcpy, malloc), uvloop's C code, or the interpreter itself.
OWNERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log + metrics", ("observe/", "telemetry.py", "logging/")),
    ("hpack", ("hpack/",)),
    ("h2 + hyperframe", ("h2/", "hyperframe/")),
    ("hbone.py (h2 subclass, DATA paths)", ("protocols/hbone.py",)),
    ("relay.py (legs)", ("proxy/relay.py",)),
    ("h2conn.py (HBONE connection shell)", ("proxy/h2conn.py",)),
    (
        "connection setup (outbound, inbound, pool, tls)",
        ("outbound.py", "inbound.py", "pool.py", "identity/", "pod.py"),
    ),
    ("uvloop only (no Python frame below the loop)", ("asyncio/runners.py",)),
    ("asyncio (tasks, futures)", ("asyncio/",)),
    ("ssl.py (SSLObject read/write, called by uvloop)", ("/ssl.py",)),
)
_PY_FRAME = re.compile(r"\((?:.*\.py|<frozen [^>]+>):\d+\)$")


def _classify(stack: list[str]) -> tuple[str, str]:
    python = [i for i, f in enumerate(stack) if _PY_FRAME.search(f)]
    inner = python[-1] if python else -1
    frame = stack[inner] if python else ""
    owner = next((name for name, keys in OWNERS if any(k in frame for k in keys)), "other Python")
    below = stack[inner + 1 :]
    leaf = stack[-1]
    if "libcrypto" in leaf or "libssl" in leaf:
        kind = "TLS libs"
    elif "libc.so" in leaf:
        kind = "libc"
    elif any("loop.c" in f or "uv_" in f or "uv__" in f for f in below):
        kind = "uvloop C"
    else:
        kind = "interpreter"
    return owner, kind


def _fold(raw: Path) -> tuple[int, dict[str, dict[str, int]]]:
    total = 0
    shares: dict[str, dict[str, int]] = {}
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        owner, kind = _classify(stack_text.split(";"))
        kinds = shares.setdefault(owner, {})
        kinds[kind] = kinds.get(kind, 0) + count
    return total, shares


def pyspy(args: list[str]) -> dict[str, object]:
    flags = _flags(args)
    seconds, side = int(flags["seconds"]), flags["side"]
    result: dict[str, object] = {"side": side, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="pzt-profile-") as tmp_text:
        tmp = Path(tmp_text)
        with _pair(tmp, {}, tunnels.START_TIMEOUT, proxy_env(flags)) as t:
            pid = t.pids[0 if side == "client" else 1]
            drive: dict[str, list[str]] = {
                "keepalive": ["wrk", "-t2", "-c100", f"-d{seconds + 2}s", _url(t)],
                "newconn": ["wrk", "-t2", "-c50", f"-d{seconds + 2}s", "-H", "Connection: close", _url(t)],
                "bulk": ["iperf3", "-c", t.entry["bulk"][0], "-p", str(t.entry["bulk"][1]), "-t", str(seconds + 2)],
            }
            _load(_url(t), RATE_CONNECTIONS, True)
            for mode in flags["modes"].split(","):
                raw = tmp / f"{mode}.txt"
                load = subprocess.Popen(drive[mode], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    record = [flags["pyspy"], "record", "--native", "-r", "200", "-f", "raw", "-d", str(seconds)]
                    subprocess.run(
                        [*record, "-o", str(raw), "--pid", str(pid)],
                        check=True,
                        capture_output=True,
                        timeout=seconds + 60,
                    )
                finally:
                    load.wait(timeout=60)
                shutil.copy(raw, Path("bench-results") / f"pyspy-{side}-{mode}.txt")
                total, shares = _fold(raw)
                busy = total / (200 * seconds)
                result[mode] = {"samples": total, "busy": round(busy, 2), "shares": shares}
                print(f"== {side} proxy, {mode}: {total} samples ({busy:.0%} of one core)")
                for name, kinds in sorted(shares.items(), key=lambda kv: -sum(kv[1].values())):
                    split = ", ".join(
                        f"{k} {n / max(total, 1):.0%}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])
                    )
                    print(f"   {sum(kinds.values()) / max(total, 1):6.1%}  {name}  ({split})")
    return result


# ---------------------------------------------------------------------------------------------------------- memory
def _snapshot(folder: Path, pid: int, label: str) -> Path:
    (folder / f"{pid}.{label}.req").touch()
    tunnels.wait_until((folder / f"{pid}.{label}.done").exists, f"snapshot {label} of {pid}", within=300)
    return folder / f"{pid}.{label}.snap"


def _hold_idle(t: Tunnel, count: int, held: list[socket.socket]) -> None:
    for _ in range(count):
        held.append(bench_mtls.idle_connection(*t.entry["http"], timeout=30))


def _short(filename: str) -> str:
    return re.sub(r"^.*?(site-packages/|/src/|/lib/python3\.\d+/)", "", filename)


def _per_connection(before: Path, after: Path, count: int, top: int) -> dict[str, object]:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "*/benchmarks/memsnap.py")]
    old = tracemalloc.Snapshot.load(str(before)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(after)).filter_traces(ignore)
    sites = new.compare_to(old, "lineno")
    total = sum(s.size_diff for s in sites)
    rows = [
        (f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}", s.size_diff, s.count_diff) for s in sites[:top]
    ]
    return {
        "bytes": round(total / count),
        "blocks": round(sum(s.count_diff for s in sites) / count, 1),
        "sites": [(where, round(size / count), round(blocks / count, 2)) for where, size, blocks in rows],
    }


def memory(args: list[str]) -> dict[str, object]:
    flags = _flags(args)
    count, top = int(flags["connections"]), int(flags["top"])
    result: dict[str, object] = {"side": "both", "connections": count}
    with tempfile.TemporaryDirectory(prefix="pzt-profile-") as tmp_text:
        tmp = Path(tmp_text)
        folder = tmp / "snapshots"
        folder.mkdir()
        wrap = [sys.executable, "-m", "benchmarks.memsnap"]
        env = {"PZT_MEMSNAP_DIR": str(folder), "PZT_MEMSNAP_FRAMES": flags["frames"], **proxy_env(flags)}
        held: list[socket.socket] = []
        with _pair(tmp, {"client": wrap, "server": wrap}, tunnels.START_TIMEOUT, env) as t:
            try:
                _hold_idle(t, 20, held)  # the first HBONE connection and whatever else is made once
                for pid in t.pids:
                    _snapshot(folder, pid, "start")
                _hold_idle(t, count, held)
                first = [_snapshot(folder, pid, "first") for pid in t.pids]
                _hold_idle(t, count, held)
                second = [_snapshot(folder, pid, "second") for pid in t.pids]
            finally:
                for sock in held:
                    sock.close()
            for side, before, after in zip(("client", "server"), first, second, strict=True):
                shares = _per_connection(before, after, count, top)
                result[side] = shares
                print(f"== {side} proxy: {shares['bytes']} B in {shares['blocks']} blocks per idle connection (traced)")
                for where, size, blocks in typing.cast(list[tuple[str, int, float]], shares["sites"]):
                    print(f"   {size:6d} B {blocks:5.2f}  {where}")
    return result


def main(argv: list[str]) -> int:
    modes: dict[str, Callable[[list[str]], dict[str, object]]] = {
        "callgrind": callgrind,
        "pyspy": pyspy,
        "memory": memory,
    }
    if not argv or argv[0] not in modes:
        print(__doc__)
        return 2
    Path("bench-results").mkdir(exist_ok=True)
    result = modes[argv[0]](argv[1:])
    side = result["side"]
    Path(f"bench-results/profile-{argv[0]}-{side}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

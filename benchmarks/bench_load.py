"""`pyztunnel load` against wrk, both hitting the same local nginx in the same run.

Target (issue 5): at least a quarter of wrk's request rate, and 1000 concurrent connections held. Flags:
`--duration S` (default 5), `--connections N` (default 50).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.nginx_util import nginx


def _flag(args: list[str], name: str, default: int) -> int:
    for arg in args:
        if arg.startswith(f"--{name}="):
            return int(arg.split("=", 1)[1])
    return default


def _wrk(url: str, connections: int, duration: int) -> float:
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", url], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(match.group(1))


def _load(url: str, connections: int, duration: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pzt-bench-") as tmp:
        path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "pyztunnel", "load", "-qps", "0", "-c", str(connections), "-t", f"{duration}s"]
        cmd += ["-quiet", "-timeout", "10s", "-json", str(path), url]
        subprocess.run(cmd, capture_output=True, text=True, check=True)
        result: dict[str, object] = json.loads(path.read_text())
        return result


def run(args: list[str]) -> dict[str, object]:
    duration = _flag(args, "duration", 5)
    connections = _flag(args, "connections", 50)
    out: dict[str, object] = {"duration_s": duration}
    with nginx(workers=1) as port:
        url = f"http://127.0.0.1:{port}/status/418"
        wrk_rate = _wrk(url, connections, duration)
        ours = _load(url, connections, duration)
        ours_rate = float(ours["ActualQPS"])  # type: ignore[arg-type]
        ratio = ours_rate / wrk_rate
        print(
            f"-c {connections}: wrk {wrk_rate:,.0f} req/s, pyztunnel load {ours_rate:,.0f} req/s, ratio {ratio:.2f} (target >= 0.25)"
        )
        big = _load(url, 1000, duration)
        big_codes = big["RetCodes"]
        print(
            f"-c 1000: pyztunnel load {float(big['ActualQPS']):,.0f} req/s, sockets {big['SocketCount']} (1000 = all held), "  # type: ignore[arg-type]
            f"codes {big_codes}"
        )
    out.update(
        connections=connections,
        wrk_rps=round(wrk_rate),
        load_rps=round(ours_rate),
        ratio=round(ratio, 3),
        load_codes=ours["RetCodes"],
        c1000_rps=round(float(big["ActualQPS"])),  # type: ignore[arg-type]
        c1000_sockets=big["SocketCount"],
        c1000_codes=big_codes,
        target_met=ratio >= 0.25 and big["SocketCount"] == 1000 and set(big_codes) == {"418"},  # type: ignore[call-overload]
    )
    return out

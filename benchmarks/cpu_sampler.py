"""CPU seconds per second of a run, by role (proxies old and new, gateway, load, httpbin, cluster machinery), read from
/proc while a benchmark runs: what explains a dip in throughput on a machine whose CPUs the load saturates (the new
proxy's start-up competing with the old one's relaying) as opposed to a stall (CPUs idle while traffic waits)."""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

ROLES = (
    ("proxy", ("pyztunnel proxy",)),
    ("load", ("pyztunnel load",)),
    ("httpbin", ("pyztunnel httpbin",)),
    ("gateway (nginx)", ("nginx",)),
    ("agent", ("pyztunnel agent",)),
    ("upgrade cli", ("pyztunnel upgrade",)),
    ("ca", ("pyztunnel ca",)),
    ("cluster controller", ("pyztunnel cluster", "cluster.controller", "pyztunnel.cluster")),
)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _role(cmdline: str) -> str:
    return next((name for name, keys in ROLES if any(k in cmdline for k in keys)), "other")


class CpuSampler:
    """Samples every process's utime+stime every `interval` s in a thread; `per_second(start)` folds the deltas into
    seconds since `start` (time.monotonic()) by role. Proxies are told apart by pid (old and new instances)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._last: dict[int, float] = {}
        self._cmd: dict[int, str] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []  # (monotonic, role → CPU s since the last sample)
        self.proxy_pids: dict[int, float] = {}  # pid → first seen (monotonic)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        used: dict[str, float] = collections.defaultdict(float)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cpu = cpu_seconds(pid)
                # Read every time: `ip netns exec … python -m pyztunnel load` changes its command line at exec.
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                self._cmd[pid] = raw.replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            role = _role(self._cmd[pid])
            if role == "proxy":
                self.proxy_pids.setdefault(pid, now)
                role = f"proxy {pid}"
            if pid in self._last:
                used[role] += cpu - self._last[pid]
            self._last[pid] = cpu
        self.samples.append((now, dict(used)))

    def per_second(self, start: float) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
        for at, used in self.samples[1:]:
            second = int(at - start)
            for role, cpu in used.items():
                out[second][role] += cpu
        return {s: dict(roles) for s, roles in out.items()}


def table(per_second: dict[int, dict[str, float]], seconds: list[int]) -> str:
    """Markdown: CPU seconds per role in each of `seconds` (2.0 = both CPUs of this machine)."""
    roles = sorted({r for s in seconds for r in per_second.get(s, {})}, key=lambda r: (not r.startswith("proxy"), r))
    lines = ["| second | all | " + " | ".join(roles) + " |", "|---|---|" + "---|" * len(roles)]
    for s in seconds:
        used = per_second.get(s, {})
        cells = [f"{used.get(r, 0.0):.2f}" for r in roles]
        lines.append(f"| {s} | {sum(used.values()):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""Finding and killing a cluster's processes, also after `kill -9` of its controller (scan /proc).

A process belongs to cluster `c` when its argv names the cluster's state dir or `--name c`/`--cluster c` of a
pyztunnel command, or when it lives in one of the cluster's network namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import Iterable
from pathlib import Path

from pyztunnel.netns import netns_inode

PROC = Path("/proc")


def _argv(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


NetnsId = tuple[int, int]  # (st_dev, st_ino) of a namespace


def _net_inode(pid: int) -> NetnsId | None:
    try:
        return netns_inode(PROC / str(pid) / "ns" / "net")
    except OSError:
        return None


def netns_ids(paths: Iterable[Path]) -> set[NetnsId]:
    """Identities of the namespaces bound at these paths (missing ones are skipped)."""
    out = set()
    for path in paths:
        with contextlib.suppress(OSError):
            out.add(netns_inode(path))
    return out


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def _protected() -> set[int]:
    """This process and its ancestors (a `cluster down` run from a test must not kill the test runner)."""
    out = set()
    pid = os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            stat = (PROC / str(pid) / "stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def names_cluster(argv: list[str], cluster: str, state_dir: str) -> bool:
    if any(state_dir == a or a.startswith(state_dir + "/") or f"={state_dir}" in a for a in argv):
        return True
    if not any("pyztunnel" in a for a in argv):
        return False
    return any(a in ("--name", "--cluster") and b == cluster for a, b in itertools.pairwise(argv)) or any(
        a in (f"--name={cluster}", f"--cluster={cluster}") for a in argv
    )


def processes_in(inodes: set[NetnsId]) -> list[int]:
    protected = _protected()
    return [pid for pid in _pids() if pid not in protected and _net_inode(pid) in inodes]


def cluster_processes(cluster: str, state_dir: Path, netns_inodes: set[NetnsId]) -> list[int]:
    protected = _protected()
    out = []
    for pid in _pids():
        if pid in protected:
            continue
        if _net_inode(pid) in netns_inodes or names_cluster(_argv(pid), cluster, str(state_dir)):
            out.append(pid)
    return out


async def sigkill_all(pids: Iterable[int], limit: float = 5.0) -> None:
    """SIGKILL and wait until each is gone (or a zombie: reaped by its parent, no longer running)."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    # Polling /proc with a deadline: there is no event to wait on for processes we did not start.
    while any(_alive(pid) for pid in pids) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

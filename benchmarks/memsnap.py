"""Run a command's Python program with tracemalloc snapshots on request (profile_mtls memory). Not a benchmark.

    python -m benchmarks.memsnap PYTHON -m MODULE ARGS...   (the argv prefix tunnels.pyztunnel_pair's `wrap` takes)

A daemon thread watches $PZT_MEMSNAP_DIR for `<pid>.<label>.req`: `start` starts tracing ($PZT_MEMSNAP_FRAMES frames),
any other label collects garbage and dumps a snapshot to `<pid>.<label>.snap`; the request is renamed `.done` after.
Tracing starts on request, so the program's start (imports, certificates) costs nothing and is not in the snapshots.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def _serve(folder: Path, frames: int) -> None:
    prefix = f"{os.getpid()}."
    while True:
        for req in sorted(folder.glob(prefix + "*.req")):
            label = req.name[len(prefix) : -len(".req")]
            if label == "start":
                tracemalloc.start(frames)
            else:
                gc.collect()
                tracemalloc.take_snapshot().dump(str(folder / f"{prefix}{label}.snap"))
            req.rename(req.with_suffix(".done"))
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit("usage: python -m benchmarks.memsnap PYTHON -m MODULE ARGS...")
    folder = Path(os.environ["PZT_MEMSNAP_DIR"])
    frames = int(os.environ.get("PZT_MEMSNAP_FRAMES", "12"))
    threading.Thread(target=_serve, args=(folder, frames), daemon=True, name="memsnap").start()
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

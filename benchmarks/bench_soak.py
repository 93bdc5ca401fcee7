"""The soak: N consecutive rolling upgrades of every node's proxy under one mixed load (issue 11, "Measure").

One local cluster (pyztunnel's defaults, `experiment.soak.soak_spec`), one load of C connections for the whole run:
keep-alive HTTP and a new connection per request through the gateway, long-lived TCP and HBONE streams that check
and count their bytes (`experiment.soak.MixedLoad`). Per upgrade: failed, retried, streams broken, bytes lost, the
worst second's p99, the upgrade's time. Target: 0 failed, 0 retried, 0 bytes lost in every upgrade. Root.

    python -m benchmarks soak [--upgrades=20] [--connections=1000] [--grace=30] [--quick]

`--quick`: 1 upgrade, -c 40 (the smoke run of `tests/system/test_soak_smoke.py`). Load files and the upgrade logs go
to bench-results/soak/. No peer: ztunnel's behaviour is the experiment's (`python -m benchmarks upgrade`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import flags
from pyztunnel.cluster import manage, spec
from pyztunnel.experiment import soak

NAME = "tsoak"
DEFAULTS = {"upgrades": "20", "connections": "1000", "grace": "30", "out": "bench-results/soak"}
QUICK = {"upgrades": "1", "connections": "40"}
FLAGS = ("upgrades", "connections", "grace", "out", "quick", "name")
USAGE = "--upgrades=N --connections=C --grace=SECONDS --out=DIR --quick"


def options(args: list[str]) -> dict[str, str]:
    return flags.parse(args, "soak", {**DEFAULTS, "name": f"{NAME}{os.getpid() % 10000}"}, QUICK, FLAGS, USAGE)


def run(args: list[str]) -> dict[str, Any]:
    if os.geteuid() != 0:
        print("skipped: needs root (a local cluster)")
        return {"skipped": "needs root"}
    opts = options(args)
    upgrades, connections, grace = int(opts["upgrades"]), int(opts["connections"]), int(opts["grace"])
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    cluster = opts["name"]
    state = manage.up(soak.soak_spec(spec.load(None), grace), cluster)
    spans: list[tuple[float, float]] = []
    try:
        load = soak.MixedLoad(state, connections, out / "load")
        try:
            for i in range(1, upgrades + 1):
                begin = time.monotonic()
                soak.upgrade(cluster, f"soak{i}", out / f"upgrade-{i}.log")
                spans.append((begin, time.monotonic()))
                print(f"upgrade {i}/{upgrades}: {spans[-1][1] - begin:.1f}s", flush=True)
        finally:
            results = load.stop()
    finally:
        asyncio.run(manage.down(cluster))
    windows = [soak.window(results, begin, end) for begin, end in spans]
    totals = soak.totals(results)
    print_table(windows, totals, connections)
    return {
        "connections": connections,
        "split": soak.split(connections),
        "upgrades": [dataclasses.asdict(w) for w in windows],
        "totals": totals,
        "clean": all(w.clean() for w in windows) and totals["bytes_lost"] == 0 and totals["retried"] == 0,
        "load_average": os.getloadavg(),
    }


def print_table(windows: list[soak.Window], totals: dict[str, int], connections: int) -> None:
    print(
        f"{'upgrade':>7} {'seconds':>8} {'calls':>9} {'failed':>6} {'retried':>7} {'broken':>6} {'lost B':>8} {'p99':>7}"
    )
    for i, w in enumerate(windows, 1):
        print(
            f"{i:>7} {w.seconds:>8.1f} {w.calls:>9} {w.failed:>6} {w.retried:>7} {w.broken:>6} "
            f"{w.bytes_lost:>8} {w.p99_s * 1000:>5.0f}ms"
        )
    print(
        f"-c {connections}, whole run: streams broken {totals['broken']}, bytes lost {totals['bytes_lost']}, "
        f"corrupted {totals['bytes_corrupted']}, echoed {totals['bytes_echoed']}, retried {totals['retried']}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )

"""Local cluster: `cluster up` of the default spec (target ≤ 5 s) and a node with 100 mesh pods (target ≤ 30 s).

Needs root. Runs the mesh when this build has the proxy, agent and CA; otherwise says so and runs without it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import yaml

from pyztunnel.cluster import manage, spec

TARGET_UP_S = 5.0
TARGET_100_S = 30.0
RUNS = 3  # the machine is shared: the median of a few runs


def _timed_up(loaded: spec.LoadedSpec, name: str, no_mesh: bool) -> tuple[float, float, dict[str, Any]]:
    asyncio.run(manage.down(name))
    started = time.monotonic()
    try:
        state = manage.up(loaded, name, no_mesh=no_mesh, timeout=180)
        up_s = time.monotonic() - started
    finally:
        down_started = time.monotonic()
        asyncio.run(manage.down(name))
        down_s = time.monotonic() - down_started
    return up_s, down_s, state


def hundred_pods(mesh: bool) -> spec.LoadedSpec:
    doc = {
        "nodes": [{"name": "node-1"}],
        "deployments": [
            {
                "name": "pod",
                "replicas": 100,
                "mesh": mesh,
                "command": ["sleep", "infinity"],
                "terminationGracePeriodSeconds": 0,
            }
        ],
    }
    if not mesh:
        doc |= {"proxy": {"enabled": False}, "ca": {"enabled": False}}
    return spec.parse(yaml.safe_dump(doc), "bench-100-pods.yaml")


def run(args: list[str]) -> dict[str, object]:
    if os.geteuid() != 0:
        print("skipped: needs root (network namespaces)")
        return {"skipped": "needs root"}
    result: dict[str, object] = {}
    default = spec.load(None)
    missing = manage.missing_components(default.spec)
    mesh = not missing
    if missing:
        print(f"note: {'; '.join(missing)} — measuring without the mesh")
    if any("httpbin" in m for m in missing):
        print("default spec: skipped (no httpbin in this build)")
    else:
        runs = [_timed_up(default, "bcl1", no_mesh=not mesh) for _ in range(RUNS)]
        ups = sorted(r[0] for r in runs)
        up_s, down_s, state = statistics.median(ups), statistics.median(r[1] for r in runs), runs[0][2]
        pods = len(state["pods"]) + len(state["proxies"])
        print(
            f"default spec{'' if mesh else ' (no mesh)'}: up median {up_s:.2f}s (min {ups[0]:.2f}s, {RUNS} runs) for "
            f"{len(state['nodes'])} nodes, {pods} pods (target ≤ {TARGET_UP_S:.0f}s, ratio {up_s / TARGET_UP_S:.2f}); "
            f"down {down_s:.2f}s"
        )
        result |= {
            "default_up_s": round(up_s, 3),
            "default_up_min_s": round(ups[0], 3),
            "default_down_s": round(down_s, 3),
            "default_mesh": mesh,
        }
    hundred_mesh = not [m for m in manage.missing_components(hundred_pods(True).spec) if "deployment" not in m]
    up_s, down_s, state = _timed_up(hundred_pods(hundred_mesh), "bcl2", no_mesh=False)
    print(
        f"one node, 100 {'mesh ' if hundred_mesh else 'non-mesh '}pods: up {up_s:.2f}s "
        f"(target ≤ {TARGET_100_S:.0f}s, ratio {up_s / TARGET_100_S:.2f}); down {down_s:.2f}s"
    )
    result |= {"pods100_up_s": round(up_s, 3), "pods100_down_s": round(down_s, 3), "pods100_mesh": hundred_mesh}
    return result

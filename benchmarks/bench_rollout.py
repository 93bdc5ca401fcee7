"""Rollout time of a local cluster per strategy: RollingUpdate (surge, 1/0) then NodeDrain, on 3 nodes.

Default: the built-in default cluster with the real proxy (needs everything `make demo` needs). `--stand-in`: the same
3 nodes and deployment shapes outside the mesh, with a stand-in proxy that only answers `/healthz/ready`: it measures
the orchestration (controller, strategy, grace periods of the evicted pods), not the proxy's start. Root.
Peer: RollingUpdate, measured in the same run; the ratio is drain / rolling.

    python -m benchmarks rollout [--stand-in]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from pyztunnel.cluster import manage
from pyztunnel.cluster import spec as cluster_spec
from pyztunnel.rollout.local import LocalBackend
from pyztunnel.rollout.plan import Plan
from pyztunnel.rollout.store import RolloutRecord
from pyztunnel.rollout.strategies import Rollout
from pyztunnel.rollout.testing import STAND_IN_PROXY

NAME = "tbrl"


def stand_in_spec(script: Path) -> str:
    return textwrap.dedent(
        f"""
        nodes: [{{name: node-1}}, {{name: node-2}}, {{name: node-3}}]
        deployments:
          - {{name: client, namespace: default, mesh: false, command: [sleep, infinity],
              terminationGracePeriodSeconds: 1, nodeName: node-1}}
          - {{name: gateway, namespace: istio-system, mesh: false, command: [sleep, infinity],
              terminationGracePeriodSeconds: 5}}
          - {{name: httpbin, namespace: default, mesh: false, replicas: 2,
              command: [{sys.executable}, -m, http.server, "8080"], ports: [8080],
              readinessProbe: {{httpGet: {{path: /, port: 8080}}}}, terminationGracePeriodSeconds: 5}}
        proxy: {{version: v1, command: [{sys.executable}, {script}]}}
        agent: {{enabled: false}}
        ca: {{enabled: false}}
        """
    )


async def _roll(base: Path, plan: Plan) -> tuple[float, RolloutRecord]:
    started = time.monotonic()
    async with LocalBackend(NAME, base) as backend:
        record = await Rollout(backend, plan).run()
    return time.monotonic() - started, record


def run(args: list[str]) -> dict[str, Any]:
    if os.geteuid() != 0:
        print("skipped: needs root (a local cluster)")
        return {"skipped": "needs root"}
    stand_in = "--stand-in" in args
    results: dict[str, Any] = {"mode": "stand-in proxy" if stand_in else "real proxy"}
    with tempfile.TemporaryDirectory(prefix="pzt-bench-rollout-") as tmp:
        base = Path(tmp)
        if stand_in:
            script = base / "stand_in.py"
            script.write_text(STAND_IN_PROXY)
            loaded = cluster_spec.parse(stand_in_spec(script), "<bench stand-in>")
        else:
            loaded = cluster_spec.load(None)
        try:
            manage.up(loaded, NAME, base=base, timeout=180)
            for strategy, version in (("rolling", "bench-2"), ("drain", "bench-3")):
                took, record = asyncio.run(_roll(base, Plan(version, strategy=strategy)))  # type: ignore[arg-type]
                results[strategy] = {
                    "total_s": round(took, 2),
                    "per_node_s": {n: r.elapsed for n, r in record.progress.items()},
                }
        finally:
            asyncio.run(manage.down(NAME, base))
    rolling, drain = results["rolling"]["total_s"], results["drain"]["total_s"]
    results["drain_vs_rolling"] = round(drain / rolling, 2) if rolling else None
    print(f"rollout of 3 nodes ({results['mode']}):")
    for strategy in ("rolling", "drain"):
        per_node = ", ".join(f"{n} {s:.1f}s" for n, s in results[strategy]["per_node_s"].items())
        print(f"  {strategy:<8} {results[strategy]['total_s']:6.1f} s   ({per_node})")
    print(f"  drain / rolling = {results['drain_vs_rolling']}")
    return results

"""Failed requests per upgrade with each of pyztunnel's mechanisms on/off (issue 4's headline table).

The experiment's mechanism matrix (`pyztunnel experiment seed --scenarios mechanisms`), short: for each scenario a local
cluster (the built-in default one), `pyztunnel load -qps 0 -c N` from the client pod through the gateway to httpbin,
and a rolling upgrade of every node's proxy in the middle of the load. Root.
Peer: ztunnel's behaviour (every mechanism off), measured in the same run; the ratio is failed(ours)/failed(ztunnel).

    python -m benchmarks upgrade [--connections=1000] [--duration=12] [--gateway-retry] [--scenarios=KEYS] [--quick]

`--quick`: -c 100, 8 s, for a smoke run. The experiment's report (report.md, plot.png, runs/) goes to
bench-results/upgrade/.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

from benchmarks import flags
from pyztunnel.cluster import spec
from pyztunnel.experiment import report
from pyztunnel.experiment.cli import write_report
from pyztunnel.experiment.runner import Plan, run_scenario
from pyztunnel.experiment.scenarios import BASELINE, seed_scenarios, select

NAME = "tbup"
DEFAULTS = {"connections": "1000", "duration": "12", "scenarios": "mechanisms"}
QUICK = {"connections": "100", "duration": "8"}
FLAGS = ("connections", "duration", "scenarios", "gateway_retry", "quick")
USAGE = "--connections=N --duration=SECONDS --scenarios=KEYS --gateway-retry --quick"


def options(args: list[str]) -> dict[str, str]:
    return flags.parse(args, "upgrade", DEFAULTS, QUICK, FLAGS, USAGE)


def run(args: list[str]) -> dict[str, Any]:
    if os.geteuid() != 0:
        print("skipped: needs root (a local cluster)")
        return {"skipped": "needs root"}
    opts = options(args)
    connections, duration = int(opts["connections"]), float(opts["duration"])
    gateway_retry = opts.get("gateway_retry") == "true"
    scenarios = select(seed_scenarios(duration), opts["scenarios"])
    out = Path("bench-results/upgrade")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    plan = Plan(NAME, duration, (connections,), 1, "10s", gateway_retry, out)
    base = spec.load(None)
    started = time.monotonic()
    runs: list[report.Run] = []
    versions = [0]
    for scenario in scenarios:
        runs += run_scenario(plan, scenario, base, print, versions)
    write_report(runs, plan, time.monotonic() - started, shlex.join(["python", "-m", "benchmarks", "upgrade", *args]))
    print(report.mechanism_tables(runs, gateway_retry))

    baseline = next((r for r in runs if r.scenario.key == BASELINE), None)
    results: dict[str, Any] = {"connections": connections, "duration_s": duration, "gateway_retry": gateway_retry}
    for r in runs:
        results[r.scenario.key] = {
            "mechanisms": r.scenario.mechanisms,
            "calls": r.calls,
            "failed": r.failed,
            "connection_errors": r.connection_errors,
            "gateway_errors": r.gateway_errors,
            "upgrade_s": round(r.upgrade_s, 1),
            "upgrade_error": r.upgrade_error,
            "failed_vs_ztunnel": round(r.failed / baseline.failed, 3) if baseline and baseline.failed else None,
        }
    if baseline is not None:
        print(f"failed(ours) / failed(ztunnel's behaviour, {baseline.failed}) at -c {connections}:")
        for r in runs:
            if r is not baseline:
                ratio = results[r.scenario.key]["failed_vs_ztunnel"]
                print(f"  {r.scenario.key:<13} {r.failed:6d}  {'n/a' if ratio is None else f'{ratio:.3f}'}")
    print(f"report: {out / 'report.md'}")
    return results

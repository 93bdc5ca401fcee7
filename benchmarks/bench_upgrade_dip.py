"""Throughput and p99 second by second while every node's proxy is rolled (issue 14's upgrade dip). Root.

The experiment's `pyztunnel` scenario (every mechanism on, grace 10 s) on the built-in local cluster:
`pyztunnel load -qps 0 -c N` (keep-alive) from the client pod through the gateway to httpbin, steady load for the
`--steady` seconds before the rollout and after it, and per second of the rollout its calls/s and p99 against the
steady state's (experiment/dip.py). Targets: every second >= 90 % of the steady throughput, p99 <= 1.5x, 0 failed.

    python -m benchmarks upgrade_dip [--connections=1000] [--steady=10] [--grace=10] [--name=tdip] [--quick]

`--quick`: -c 100, 3 s steady (a smoke run). The experiment's report (report.md, plot.png, runs/) and the per-second
table (dip.md) go to bench-results/upgrade_dip/.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import cpu_sampler, flags
from benchmarks.cpu_sampler import CpuSampler
from pyztunnel.cluster import spec
from pyztunnel.experiment import dip
from pyztunnel.experiment.cli import write_report
from pyztunnel.experiment.runner import Plan, run_scenario
from pyztunnel.experiment.scenarios import seed_scenarios, select

DEFAULTS = {"connections": "1000", "steady": "10", "grace": "10", "name": "tdip", "startup_nice": "0"}
QUICK = {"connections": "100", "steady": "3"}
RAMP_S = 2  # the load's first seconds (connections warming up) are not part of the steady state
FLAGS = ("connections", "steady", "grace", "name", "startup_nice", "quick")
USAGE = "--connections=N --steady=SECONDS --grace=SECONDS --name=CLUSTER --startup-nice=N --quick"


def options(args: list[str]) -> dict[str, str]:
    return flags.parse(args, "upgrade_dip", DEFAULTS, QUICK, FLAGS, USAGE)


def _load_start(result: Mapping[str, Any]) -> float | None:
    """The load's start (its JSON's StartTime, wall clock) on the monotonic clock the sampler uses."""
    try:
        started = datetime.datetime.fromisoformat(str(result["StartTime"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None
    return started - (time.time() - time.monotonic())


def run(args: list[str]) -> dict[str, Any]:
    if os.geteuid() != 0:
        print("skipped: needs root (a local cluster)")
        return {"skipped": "needs root"}
    opts = options(args)
    connections, steady = int(opts["connections"]), int(opts["steady"])
    # The runner keeps a quarter of the nominal duration of steady load before the upgrade, and as much after it.
    duration = 4.0 * (steady + RAMP_S)
    grace = float(opts["grace"])
    nice = int(opts["startup_nice"])
    scenario = dataclasses.replace(
        select(seed_scenarios(duration), "pyztunnel")[0],
        title=f"pyztunnel's defaults (every mechanism on, grace {grace:g} s, startup nice {nice})",
        grace_s=grace,
        startup_nice=nice,
    )
    out = Path("bench-results/upgrade_dip")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    plan = Plan(opts["name"], duration, (connections,), 1, "10s", False, out)
    started = time.monotonic()
    with CpuSampler() as sampler:
        runs = run_scenario(plan, scenario, spec.load(None), print, [0])
    command = shlex.join(["python", "-m", "benchmarks", "upgrade_dip", *args])
    write_report(runs, plan, time.monotonic() - started, command)
    (result,) = runs
    found = dip.analyse(
        result.result.get("Timeline", []), result.upgrade_start_s, result.upgrade_end_s, steady, result.failed
    )
    text = f"`{command}`, -c {connections}, grace {opts['grace']} s\n\n{dip.table(found)}\n\n{dip.summary(found)}\n"
    load_start = _load_start(result.result)
    if load_start is not None and found.rollout:
        shown = list(range(found.rollout[0].index - 3, found.rollout[-1].index + 3))
        cpu = cpu_sampler.table(sampler.per_second(load_start), shown)
        text += f"\nCPU seconds per second by process (2.00 = both CPUs; proxies by pid):\n\n{cpu}\n"
    (out / "dip.md").write_text(text)
    print(text)
    return {
        "connections": connections,
        "steady_s": steady,
        "upgrade_s": round(result.upgrade_s, 1),
        "upgrade_error": result.upgrade_error,
        "calls": result.calls,
        "failed": result.failed,
        "retried": result.retried,
        "steady_calls_per_s": found.steady_calls,
        "steady_p99_ms": found.steady_p99_ms,
        "rollout": [dataclasses.asdict(s) for s in found.rollout],
        "worst_throughput": found.worst_throughput,
        "worst_p99": found.worst_p99,
        "met": found.met,
    }

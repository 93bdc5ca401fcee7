"""`pyztunnel experiment seed`: the seeds' experiment reproduced on the local cluster, and its report."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from pyztunnel import settings
from pyztunnel.cluster import spec
from pyztunnel.errors import UserError, require_root
from pyztunnel.experiment import report
from pyztunnel.experiment.runner import Plan, run_scenario
from pyztunnel.experiment.scenarios import seed_scenarios, select
from pyztunnel.settings import Duration, setting


@settings.group("experiment")
@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
    duration: Duration = setting(
        Duration(20), "Nominal run length (the seeds': 60s); grace periods scale with it, as do warm-up and tail", gt=0
    )
    connections: list[str] = setting(["1000", "100"], "Load connections per run (fortio -c), comma-separated")
    repeat: int = setting(1, "Runs per scenario and -c (the seeds repeated theirs to see the spread)", ge=1)
    scenarios: str = setting(
        "",
        "Scenarios by number, key or group, comma-separated: groups 'seeds' (the default: the seeds' five), "
        "'mechanisms' (each of pyztunnel's mechanisms on/off: the per-mechanism table), 'all'",
    )
    timeout: str = setting("10s", "Per-request timeout of the load (fortio -timeout)")
    gateway_retry: bool = setting(False, "The gateway (nginx) retries a request after an upstream error")
    out: Path = setting(Path("out/experiment"), "Output directory: report.md, plot.png, runs/*.json|txt")
    name: str = setting("exp", "Name of the local cluster the experiment builds (and removes)")


QUICK = {"duration": "8s", "connections": "100", "repeat": 1}


@click.group("experiment")
def experiment() -> None:
    """Reproduce the seeds' upgrade experiment and report."""


@experiment.command("seed")
@click.option("--quick", is_flag=True, help="A short run for a laptop or CI: 8s, -c 100, one run per scenario")
@settings.cli_options(ExperimentSettings)
def seed(quick: bool, **kw: Any) -> None:
    """Upgrade every node's proxy under load, per scenario (the seeds': ztunnel's behaviour, a long grace period,
    capped upstream connection age, node drain, pyztunnel's defaults; or `--scenarios mechanisms`: each of
    pyztunnel's mechanisms on/off), and write the report."""
    require_root("pyztunnel experiment seed")
    if quick:
        kw = {**{k: v for k, v in QUICK.items()}, **{k: v for k, v in kw.items() if v is not None}}
    cfg = settings.load(ExperimentSettings, cli=kw)
    try:
        connections = tuple(int(c) for c in cfg.connections)
    except ValueError:
        raise UserError(f"--connections takes whole numbers, not {','.join(cfg.connections)!r}") from None
    if cfg.repeat < 1 or not connections or min(connections) < 1:
        raise UserError("--repeat and --connections must be at least 1")
    scenarios = select(seed_scenarios(float(cfg.duration)), cfg.scenarios)
    out = cfg.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    plan = Plan(cfg.name, float(cfg.duration), connections, cfg.repeat, cfg.timeout, cfg.gateway_retry, out)
    base = spec.load(None)
    started = time.monotonic()
    runs: list[report.Run] = []
    versions = [0]
    for scenario in scenarios:
        runs += run_scenario(plan, scenario, base, click.echo, versions)
    write_report(runs, plan, time.monotonic() - started, shlex.join(["pyztunnel", *sys.argv[1:]]))
    click.echo(f"\n{report.markdown_table(runs)}\n{report.mechanism_tables(runs, plan.gateway_retry)}")
    click.echo(f"report: {out / 'report.md'}, plot: {out / 'plot.png'}")


def write_report(runs: list[report.Run], plan: Plan, took_s: float, command: str) -> None:
    retry = "retries a request on another upstream connection" if plan.gateway_retry else "does not retry"
    lines = [
        "# The seeds' experiment, reproduced",
        "",
        f"`{command}`",
        "",
        f"Load: `pyztunnel load -qps 0 -c C -timeout {plan.timeout}` from the `client` pod (outside the mesh) to the",
        "gateway's ClusterIP (`/status/418`); every node's proxy upgraded in the middle of the load. On an upstream",
        f"error the gateway (nginx) {retry}. Nominal duration {plan.duration_s:g}s, {plan.repeat} run(s) per row;",
        f"whole experiment {took_s:.0f}s. Failed = non-OK codes and socket errors (fortio's `Code` lines); retried =",
        "requests fortio would have retried silently on a fresh socket.",
        "",
        report.markdown_table(runs),
        "## Per mechanism",
        "",
        report.mechanism_tables(runs, plan.gateway_retry),
        "## fortio lines per run",
        "",
    ]
    for run in runs:
        lines += [f"### {run.scenario.key}, -c {run.connections}, run {run.repeat + 1}", "", "```"]
        lines += [report.fortio_summary(run), "```", ""]
    (plan.out / "report.md").write_text("\n".join(lines))
    (plan.out / "results.json").write_text(
        json.dumps(
            [
                {
                    "scenario": dataclasses.asdict(r.scenario),
                    "connections": r.connections,
                    "repeat": r.repeat,
                    "failed": r.failed,
                    "retried": r.retried,
                    "connection_errors": r.connection_errors,
                    "gateway_errors": r.gateway_errors,
                    "calls": r.calls,
                    "upgrade_error": r.upgrade_error,
                    "upgrade_start_s": r.upgrade_start_s,
                    "upgrade_end_s": r.upgrade_end_s,
                }
                for r in runs
            ],
            indent=2,
        )
    )
    report.write_plot(runs, plan.out / "plot.png")

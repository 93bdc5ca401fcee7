"""`pyztunnel advise LOG…`: recommend terminationGracePeriodSeconds from ztunnel (or pyztunnel) access logs."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from pyztunnel.advise.parse import AccessLogParser
from pyztunnel.advise.report import AdviseOptions, analyse, as_json, skipped_summary, text
from pyztunnel.advise.sources import feed_paths
from pyztunnel.errors import UserError


@click.command("advise")
@click.argument("logs", nargs=-1, required=False)
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path),
    default=None,
    help="Read the proxy pods' logs from this Kubernetes cluster (as kubectl logs) instead of files.",
)
@click.option("--context", default=None, help="The kubeconfig context (default: its current-context).")
@click.option("--daemonset", default=None, help="NAMESPACE/NAME of the proxy DaemonSet (default: app=ztunnel).")
@click.option(
    "--apply",
    "apply_flag",
    is_flag=True,
    help="With --kubeconfig: patch the recommended terminationGracePeriodSeconds into the DaemonSet.",
)
@click.option(
    "--quantile",
    type=click.FloatRange(0, 100, min_open=True),
    default=99.9,
    show_default=True,
    help="Connection-duration quantile the drain must cover.",
)
@click.option(
    "--margin",
    "margin_percent",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Margin added to that quantile, in percent.",
)
@click.option(
    "--current-grace",
    type=click.IntRange(0),
    default=None,
    help="The terminationGracePeriodSeconds in use now (default: the DaemonSet's with --kubeconfig, else 30).",
)
@click.option(
    "--nodes",
    type=click.IntRange(1),
    default=None,
    help="Nodes the DaemonSet rolls over, one at a time (default: the cluster's with --kubeconfig, else 1).",
)
@click.option(
    "--node-startup",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds a new proxy needs on a node before the rollout moves on.",
)
@click.option(
    "--direction",
    type=click.Choice(["all", "inbound", "outbound"]),
    default="all",
    show_default=True,
    help="Only connections of this direction (each connection is logged by both ends' proxies).",
)
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="Services shown in the table.")
@click.option("--json", "as_json_flag", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a histogram of durations (PNG) to this file.",
)
def advise(
    logs: tuple[str, ...],
    kubeconfig: Path | None,
    context: str | None,
    daemonset: str | None,
    apply_flag: bool,
    quantile: float,
    margin_percent: float,
    current_grace: int | None,
    nodes: int | None,
    node_startup: float,
    direction: str,
    top: int,
    as_json_flag: bool,
    plot_path: Path | None,
) -> None:
    """Recommend terminationGracePeriodSeconds from access logs (files, .gz, or - for stdin, or the proxy pods of a
    Kubernetes cluster with --kubeconfig)."""
    parser = AccessLogParser()
    source = None
    if kubeconfig is not None:
        if logs:
            raise UserError("give log files or --kubeconfig, not both")
        from pyztunnel.advise.kube import KubeSource, read_logs

        source = KubeSource(kubeconfig, context, daemonset)
        facts = asyncio.run(read_logs(source, parser))
        logs = tuple(f"{facts.where}: pod/{p}" for p in facts.pods) or (facts.where,)
        current_grace = facts.grace if current_grace is None else current_grace
        nodes = facts.nodes if nodes is None else nodes
    elif not logs:
        raise UserError("give access log files (or - for stdin), or --kubeconfig to read the proxy pods' logs")
    elif apply_flag:
        raise UserError("--apply needs --kubeconfig (the DaemonSet to patch)")
    else:
        feed_paths(parser, list(logs))
    current_grace = 30 if current_grace is None else current_grace
    nodes = 1 if nodes is None else nodes
    parsed = parser.result
    if direction != "all":
        kept = [c for c in parsed.connections if c.direction == direction]
        parsed.skipped[f"direction is not {direction}"] += len(parsed.connections) - len(kept)
        parsed.connections = kept
    if parsed.lines in (0, parsed.blank):
        click.echo(f"error: the input is empty ({', '.join(logs)}): nothing to analyse", err=True)
        sys.exit(1)
    if not parsed.connections:
        click.echo(
            f"error: no 'connection complete' access log lines in {parsed.lines} lines ({skipped_summary(parsed)}); "
            "are these ztunnel logs at level info with access logs on?",
            err=True,
        )
        sys.exit(1)
    options = AdviseOptions(quantile, margin_percent, current_grace, nodes, node_startup, top)
    result = analyse(parsed, logs, options)
    if plot_path is not None:
        from pyztunnel.advise.plot import plot

        plot(
            [c.duration for c in parsed.connections],
            result.current.drain,
            result.recommendation.resulting_drain,
            f"p{quantile:g}",
            plot_path,
        )
    if as_json_flag:
        click.echo(json.dumps(as_json(result), indent=2))
    else:
        click.echo(text(result), nl=False)
        if plot_path is not None:
            click.echo(f"\nHistogram written to {plot_path}")
    if apply_flag and source is not None:
        from pyztunnel.advise.kube import apply_grace

        click.echo(asyncio.run(apply_grace(source, result.recommendation.grace)))

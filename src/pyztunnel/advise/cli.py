"""`pyztunnel advise LOG…`: recommend terminationGracePeriodSeconds from ztunnel (or pyztunnel) access logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pyztunnel.advise.parse import AccessLogParser
from pyztunnel.advise.report import AdviseOptions, analyse, as_json, skipped_summary, text
from pyztunnel.advise.sources import feed_paths


@click.command("advise")
@click.argument("logs", nargs=-1, required=True)
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
    default=30,
    show_default=True,
    help="The terminationGracePeriodSeconds in use now (Helm and Sail default: 30).",
)
@click.option(
    "--nodes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Nodes the DaemonSet rolls over, one at a time.",
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
    quantile: float,
    margin_percent: float,
    current_grace: int,
    nodes: int,
    node_startup: float,
    direction: str,
    top: int,
    as_json_flag: bool,
    plot_path: Path | None,
) -> None:
    """Recommend terminationGracePeriodSeconds from access logs (files, .gz, or - for stdin)."""
    parser = AccessLogParser()
    feed_paths(parser, list(logs))
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

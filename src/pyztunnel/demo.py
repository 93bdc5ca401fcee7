"""`pyztunnel demo`: the default cluster, its status, traffic client → gateway → httpbin, then (when those parts
exist) the upgrade-under-load report. A thin orchestration over the cluster's APIs."""

from __future__ import annotations

import asyncio
import collections
import importlib
import subprocess
import sys
import time
from typing import Any

import click

from pyztunnel.cluster import manage, spec
from pyztunnel.cluster.client import Client, ControllerUnavailable
from pyztunnel.cluster.control_plane import describe_config_source
from pyztunnel.cluster.layout import Layout
from pyztunnel.cluster.show import print_status
from pyztunnel.errors import require_root

# The upgrade-under-load part: a module with `run(cluster: str, state: dict) -> None` (the experiment's demo step).
UPGRADE_HOOK = "pyztunnel.experiment.demo"


def _running_state(name: str) -> dict[str, Any] | None:
    layout = Layout.of(name)
    if manage.controller_pid(layout) is None:
        return None
    try:
        state = Client(layout, name).state()
    except ControllerUnavailable:
        return None
    return state if state.get("ready") else None


def send(name: str, state: dict[str, Any], path: str, count: int) -> collections.Counter[str]:
    """GET `path` through the gateway's VIP `count` times from the client pod (outside the mesh)."""
    gateway = next(s for s in state["services"] if s["name"] == "gateway")
    client = next(p for p in state["pods"] if p["owner"]["name"] == "client" and p["ready"])
    url = f"http://{gateway['vip']}:{gateway['ports'][0]['port']}{path}"
    argv = ["ip", "netns", "exec", client["netns"], sys.executable, "-m", "pyztunnel.cluster.fetch", *[url] * count]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60 + 5 * count)
    return collections.Counter(out.stdout.split("\n")[:-1] or [f"error: {out.stderr.strip()}"])


@click.command("demo")
@click.option("--name", default="demo", show_default=True, help="Cluster name")
@click.option("--keep", is_flag=True, help="Leave the cluster running at the end")
@click.option("--no-mesh", is_flag=True, help="Run every pod outside the mesh")
@click.option(
    "--requests",
    "count",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Requests sent through the gateway",
)
def demo(name: str, keep: bool, no_mesh: bool, count: int) -> None:
    """Run the main job on the built-in default cluster: traffic, an upgrade, a report."""
    require_root("pyztunnel demo")
    loaded = spec.load(None)
    missing = manage.missing_components(loaded.spec)
    if missing and not no_mesh:
        click.echo(f"note: {'; '.join(missing)}: running without the mesh", err=True)
        no_mesh = True
    state = _running_state(name)
    built = state is None
    if state is None:
        click.echo(f"bringing up cluster {name} (default spec{', no mesh' if no_mesh else ''}) …")
        started = time.monotonic()
        state = manage.up(loaded, name, no_mesh=no_mesh)
        click.echo(f"cluster {name} is up in {time.monotonic() - started:.1f}s")
    else:
        click.echo(f"reusing the running cluster {name}")
    try:
        print_status(state)
        click.echo(describe_config_source(state))
        click.echo(f"\nclient → gateway → httpbin: GET /status/418 ×{count}")
        for code, n in sorted(send(name, state, "/status/418", count).items()):
            click.echo(f"  {code}: {n}")
        _upgrade_under_load(name, state)
    finally:
        if built and not keep:
            asyncio.run(manage.down(name))
            click.echo(f"cluster {name} removed (use --keep to leave it running)")


def _upgrade_under_load(name: str, state: dict[str, Any]) -> None:
    if not manage.module_available(UPGRADE_HOOK):
        click.echo("\n(the upgrade-under-load report runs here once 'pyztunnel experiment' is part of the build)")
        return
    if not state["daemonset"]["enabled"]:
        click.echo("\n(no proxy DaemonSet in this cluster: no upgrade to show)")
        return
    importlib.import_module(UPGRADE_HOOK).run(name, state)

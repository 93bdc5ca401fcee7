"""`pyztunnel cluster …`: the local one-machine cluster (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from pyztunnel import settings
from pyztunnel.cluster.layout import DEFAULT_BASE, DEFAULT_NAME, Layout, check_name
from pyztunnel.cluster.manage import UP_TIMEOUT
from pyztunnel.errors import UserError, require_root
from pyztunnel.settings import Duration, setting


@settings.group("cluster")
@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    name: str = setting(DEFAULT_NAME, "Cluster name ([a-z][a-z0-9]{0,11})", env="PYZTUNNEL_CLUSTER")
    state_dir: Path = setting(
        DEFAULT_BASE, "Directory holding one state directory per cluster", env="PYZTUNNEL_STATE_DIR"
    )


@settings.group("cluster-up")
@dataclasses.dataclass(frozen=True)
class UpSettings:
    timeout: Duration = setting(Duration(UP_TIMEOUT), "How long to wait for every pod to be ready", gt=0)


def _target(kw: dict[str, Any]) -> tuple[str, Layout]:
    cfg = settings.load(ClusterSettings, cli={k: kw.pop(k, None) for k in ("name", "state_dir")})
    return check_name(cfg.name), Layout.of(cfg.name, cfg.state_dir)


def _client(kw: dict[str, Any]) -> Any:
    from pyztunnel.cluster.client import Client

    name, layout = _target(kw)
    return Client(layout, name)


@click.group("cluster")
def cluster() -> None:
    """The local one-machine cluster: nodes and pods in network namespaces."""


@cluster.command("up")
@click.option("-f", "--file", "spec_file", type=click.Path(path_type=Path), help="Cluster spec (default: built-in)")
@click.option("--no-mesh", is_flag=True, help="Every pod outside the mesh; no proxies, no CA")
@settings.cli_options(UpSettings)
@settings.cli_options(ClusterSettings)
def up_cmd(spec_file: Path | None, no_mesh: bool, **kw: Any) -> None:
    """Build a cluster; return when every pod is ready (or remove what was built and fail)."""
    from pyztunnel.cluster import manage, spec

    timeout = settings.load(UpSettings, cli={"timeout": kw.pop("timeout", None)}).timeout
    name, layout = _target(kw)
    loaded = spec.load(spec_file)
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    started = time.monotonic()
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"cluster {name}: starting") as status:

        def progress(state: dict[str, Any]) -> None:
            pods = [*state["proxies"], *state["pods"]]
            ready = sum(p["ready"] for p in pods)
            status.update(f"cluster {name}: {state['phase']}, {ready}/{len(pods)} pods ready")

        state = manage.up(loaded, name, base=layout.root.parent, no_mesh=no_mesh, timeout=timeout, progress=progress)
    pods = len(state["pods"]) + len(state["proxies"])
    click.echo(f"cluster {name} is up in {time.monotonic() - started:.1f}s: {len(state['nodes'])} nodes, {pods} pods")


@cluster.command("down")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Remove every cluster under the state dir; with the default state dir, also clusters on this machine whose "
    "state dir is gone (namespaces left behind)",
)
@settings.cli_options(ClusterSettings)
def down_cmd(everything: bool, **kw: Any) -> None:
    """Remove a cluster: processes, namespaces, links, nft tables, state files. Idempotent."""
    from pyztunnel.cluster import manage

    require_root("pyztunnel cluster down")
    name, layout = _target(kw)
    base = layout.root.parent
    # Scoped to the state dir: a test (or a second user) with a state dir of its own never removes others' clusters.
    names = manage.known_clusters(base, orphans=base == DEFAULT_BASE) if everything else [name]
    for n in names:
        removed = asyncio.run(manage.down(n, layout.root.parent))
        click.echo(f"cluster {n} removed" if removed else f"cluster {n}: nothing to remove")
    if not names:
        click.echo("no cluster to remove")


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the controller's state as JSON")
@settings.cli_options(ClusterSettings)
def status_cmd(as_json: bool, **kw: Any) -> None:
    """Nodes, pods and services of a cluster."""
    from pyztunnel.cluster.client import ControllerUnavailable

    client = _client(kw)
    stale = False
    try:
        state = client.state()
    except ControllerUnavailable:
        saved = client.saved_state()
        if saved is None:
            raise
        state, stale = saved, True
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    from pyztunnel.cluster.show import print_status

    print_status(state, stale=stale)


@cluster.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@settings.cli_options(ClusterSettings)
def exec_cmd(pod: str, command: tuple[str, ...], **kw: Any) -> None:
    """Run a command inside a pod's network namespace (POD may be a deployment name); its exit code is returned."""
    require_root("pyztunnel cluster exec")
    record = _resolve(kw, pod)
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UserError("give the command to run after '--', e.g. 'pyztunnel cluster exec client -- ip addr'")
    if argv[0] == "pyztunnel":
        argv = [sys.executable, "-m", "pyztunnel", *argv[1:]]
    env = {**os.environ, "POD_NAME": record["name"], "POD_NAMESPACE": record["namespace"], "POD_IP": record["ip"]}
    sys.stdout.flush()
    os.execvpe("ip", ["ip", "netns", "exec", record["netns"], *argv], env)


def _resolve(kw: dict[str, Any], pod: str) -> dict[str, Any]:
    from pyztunnel.cluster.client import find_pod

    client = _client(kw)
    record = find_pod(client.state(), pod)
    if record is None:
        raise UserError(
            f"cluster {client.name!r} has no pod or deployment named {pod!r} (see 'pyztunnel cluster status')"
        )
    return record


@cluster.command("logs")
@click.argument("pod")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines")
@settings.cli_options(ClusterSettings)
def logs_cmd(pod: str, follow: bool, **kw: Any) -> None:
    """Print a pod's log (also: agent-<node>, ca, controller)."""
    name, layout = _target(kw)
    path = layout.log(pod)
    if not path.exists():
        from pyztunnel.cluster.client import Client, find_pod

        state = Client(layout, name).saved_state() or {}
        record = find_pod(state, pod)
        if record is None:
            raise UserError(f"cluster {name!r} has no log for {pod!r} (logs are in {layout.root / 'logs'})")
        path = layout.log(record["name"])
    if follow:
        os.execvp("tail", ["tail", "-n", "+1", "-F", str(path)])
    sys.stdout.write(path.read_text(errors="replace"))


@cluster.command("scale")
@click.argument("deployment")
@click.argument("replicas", type=click.IntRange(0, 1000))
@settings.cli_options(ClusterSettings)
def scale_cmd(deployment: str, replicas: int, **kw: Any) -> None:
    """Set a deployment's replica count."""
    _client(kw).call("POST", f"/v1/deployments/{deployment}/scale", {"replicas": replicas})
    click.echo(f"deployment {deployment} scaled to {replicas}")


@cluster.command("delete-pod")
@click.argument("pod")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Return only once the pod is gone")
@settings.cli_options(ClusterSettings)
def delete_pod_cmd(pod: str, wait: bool, **kw: Any) -> None:
    """Delete a pod: SIGTERM, its grace period, SIGKILL. Its deployment replaces it."""
    client = _client(kw)
    suffix = "?wait=1" if wait else ""
    answer = client.call("DELETE", f"/v1/pods/{pod}{suffix}", timeout=3600)
    click.echo(f"pod {pod} deleted (grace {answer['terminationGracePeriodSeconds']:g}s)")


@cluster.command("cordon")
@click.argument("node")
@settings.cli_options(ClusterSettings)
def cordon_cmd(node: str, **kw: Any) -> None:
    """Mark a node unschedulable."""
    _client(kw).call("POST", f"/v1/nodes/{node}/cordon")
    click.echo(f"node {node} cordoned")


@cluster.command("uncordon")
@click.argument("node")
@settings.cli_options(ClusterSettings)
def uncordon_cmd(node: str, **kw: Any) -> None:
    """Mark a node schedulable again."""
    _client(kw).call("POST", f"/v1/nodes/{node}/uncordon")
    click.echo(f"node {node} uncordoned")


@cluster.command("drain")
@click.argument("node")
@settings.cli_options(ClusterSettings)
def drain_cmd(node: str, **kw: Any) -> None:
    """Cordon a node and evict its pods (DaemonSet pods stay); return when they are gone."""
    client = _client(kw)
    client.call("POST", f"/v1/nodes/{node}/cordon")
    state = client.state()
    victims = [p for p in state["pods"] if p["node"] == node]
    for pod in victims:
        client.call("POST", f"/v1/pods/{pod['name']}/evict")
        click.echo(f"evicting pod {pod['name']}")
    deadline = time.monotonic() + max((p["terminationGracePeriodSeconds"] for p in victims), default=0) + 30
    names = {p["name"] for p in victims}
    while names & {p["name"] for p in client.state()["pods"]}:
        if time.monotonic() > deadline:
            raise UserError(f"node {node}: pods still terminating: {', '.join(sorted(names))}")
        time.sleep(0.1)  # polling the controller's state with a deadline
    click.echo(f"node {node} drained")


@cluster.command("controller", hidden=True)
@click.option("--name", required=True)
@click.option("--cluster-dir", required=True, type=click.Path(path_type=Path), help="<state-dir>/<name>")
@click.option("--no-mesh", is_flag=True)
@click.option("--no-agent", is_flag=True)
def controller_cmd(name: str, cluster_dir: Path, no_mesh: bool, no_agent: bool) -> None:
    """Run the controller of a cluster (started detached by 'cluster up')."""
    from pyztunnel.aio import install_uvloop
    from pyztunnel.cluster.controller import Controller, load_spec
    from pyztunnel.observe import logging as ztlog

    ztlog.setup()
    install_uvloop()
    layout = Layout(cluster_dir)
    spec = load_spec(layout)
    if no_mesh:
        spec = spec.without_mesh()
    if no_agent:
        spec = spec.without_agent()

    async def main() -> None:
        await Controller(name, layout, spec).run()

    asyncio.run(main())

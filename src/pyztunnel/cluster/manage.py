"""Bringing a cluster up (spawn the detached controller, wait until every pod is ready) and down (remove everything,
also after `kill -9` of every process). Used by the `cluster` commands, the demo, tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyztunnel.cluster import reaper, topology
from pyztunnel.cluster.client import Client, ControllerUnavailable
from pyztunnel.cluster.layout import NAME_RULE, Layout, base_dir, check_name
from pyztunnel.cluster.process import CRASH_LOOP_RESTARTS, tail
from pyztunnel.cluster.spec import ClusterSpec, LoadedSpec
from pyztunnel.commands import SUBCOMMANDS
from pyztunnel.errors import UserError, require_program, require_root
from pyztunnel.netns import NETNS_RUN_DIR

UP_TIMEOUT = 120.0


def missing_components(spec: ClusterSpec) -> list[str]:
    """Commands of the spec that cannot run here: programs not installed, pyztunnel subcommands not in this build."""
    commands: list[tuple[str, list[str]]] = [(f"deployment {d.name}", d.command) for d in spec.deployments]
    if spec.proxy.enabled:
        commands.append(("proxy DaemonSet", spec.proxy.command))
    if spec.agent.enabled:
        commands.append(("agent", spec.agent.command))
    if spec.ca.enabled:
        commands.append(("ca", spec.ca.command))
    problems = []
    for what, argv in commands:
        if argv[0] == "pyztunnel":
            sub = argv[1] if len(argv) > 1 else ""
            entry = SUBCOMMANDS.get(sub)
            if entry is None or not module_available(entry[0]):
                problems.append(f"{what}: 'pyztunnel {sub}' is not available in this build")
        elif "/" not in argv[0] and "$(" not in argv[0] and shutil.which(argv[0]) is None:
            problems.append(f"{what}: '{argv[0]}' is not installed (run 'make install')")
    return problems


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def controller_pid(layout: Layout) -> int | None:
    """The pid of the cluster's live controller (a recycled pid running something else does not count)."""
    try:
        pid = int(layout.pid_file.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(layout.root).encode() in argv else None


def exists(name: str, layout: Layout) -> bool:
    return controller_pid(layout) is not None or bool(topology.cluster_namespaces(name))


def up(
    loaded: LoadedSpec,
    name: str,
    *,
    base: Path | None = None,
    no_mesh: bool = False,
    timeout: float = UP_TIMEOUT,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build the cluster and return its state once every pod is ready. On failure everything built is removed and a
    UserError says why."""
    require_root("pyztunnel cluster up")
    require_program("ip", "iproute2")
    require_program("nft", "nftables")
    check_name(name)
    layout = Layout.of(name, base)
    spec = loaded.spec.without_mesh() if no_mesh else loaded.spec
    # Pods outside the mesh need no agent: without one in this build, the controller plumbs them itself.
    no_agent = spec.agent.enabled and not spec.any_mesh and not module_available(SUBCOMMANDS["agent"][0])
    if no_agent:
        spec = spec.without_agent()
    if exists(name, layout):
        raise UserError(f"cluster {name!r} already exists; remove it first with 'pyztunnel cluster down --name {name}'")
    problems = missing_components(spec)
    if problems:
        hint = "" if no_mesh else "; or run without the mesh parts: 'pyztunnel cluster up --no-mesh'"
        raise UserError(f"cannot start cluster {name!r}: " + "; ".join(problems) + hint)
    if layout.root.exists():
        shutil.rmtree(layout.root)  # leftovers of a cluster whose processes and namespaces are gone
    layout.root.mkdir(parents=True)
    (layout.root / "logs").mkdir()
    layout.spec.write_text(loaded.text)
    argv = [
        sys.executable,
        "-m",
        "pyztunnel",
        "cluster",
        "controller",
        "--name",
        name,
        "--cluster-dir",
        str(layout.root),
    ]
    if no_mesh:
        argv.append("--no-mesh")
    if no_agent:
        argv.append("--no-agent")
    with layout.log("controller").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    client = Client(layout, name, timeout=5.0)
    try:
        return _wait_ready(client, proc, layout, timeout, progress)
    except BaseException:
        asyncio.run(down(name, base))
        raise


def _wait_ready(
    client: Client,
    proc: subprocess.Popen[bytes],
    layout: Layout,
    timeout: float,
    progress: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] | None = None
    while True:
        code = proc.poll()
        if code is not None:
            raise UserError(
                f"cluster {client.name!r}: the controller exited with {code}; {tail(layout.log('controller'))}"
            )
        if layout.socket.exists():
            with contextlib.suppress(ControllerUnavailable):
                state = client.state()
                if progress is not None:
                    progress(state)
                if state["phase"] == "failed":
                    raise UserError(f"cluster {client.name!r} failed to start: {state['error']}")
                if state["ready"]:
                    return state
                crashing = crash_looping(state)
                if crashing:
                    raise UserError(f"cluster {client.name!r}: {crashing}; {tail(layout.log(crashing.split()[1]))}")
        if time.monotonic() > deadline:
            raise UserError(f"cluster {client.name!r} was not ready after {timeout:.0f}s: {not_ready(state, layout)}")
        time.sleep(0.05)  # polling the controller's readiness with a deadline


def crash_looping(state: dict[str, Any]) -> str | None:
    for pod in [*state["proxies"], *state["pods"]]:
        if not pod["ready"] and pod["restarts"] >= CRASH_LOOP_RESTARTS:
            return f"pod {pod['name']} keeps exiting ({pod['restarts']} restarts)"
    return None


def not_ready(state: dict[str, Any] | None, layout: Layout) -> str:
    if state is None:
        return f"the controller never answered; {tail(layout.log('controller'))}"
    waiting = []
    for node in state["nodes"]:
        if node["agent"]["enabled"] and not node["agent"]["ready"]:
            waiting.append(f"agent of {node['name']} ({tail(layout.log('agent-' + node['name']))})")
    for pod in [*state["proxies"], *state["pods"]]:
        if not pod["ready"] and pod["phase"] != "Terminating":
            why = pod["message"] or tail(layout.log(pod["name"]))
            waiting.append(f"pod {pod['name']} {pod['phase']} ({why})")
    current = state.get("workloadsVersion")
    generation = (state.get("controlPlane") or {}).get("generation")
    for proxy in state["proxies"]:
        loaded = proxy.get("configVersion")
        acked = proxy.get("xds")
        if proxy["ready"] and acked is not None and not acked["current"]:
            waiting.append(
                f"proxy {proxy['name']} has not ACKed the control plane's config ({acked['acked']}, not {generation})"
            )
        elif proxy["ready"] and acked is None and loaded is not None and loaded != current:
            waiting.append(f"proxy {proxy['name']} has not loaded the last workloads.yaml ({loaded}, not {current})")
    return "; ".join(waiting) or f"phase {state['phase']}"


def known_clusters(base: Path | None = None, *, orphans: bool = True) -> list[str]:
    """Clusters with a state dir under `base`; with `orphans`, also any cluster with namespaces left behind (those
    carry no state dir, so they may belong to a run with another state dir: only a machine-wide cleanup takes them)."""
    root = base or base_dir()
    dirs = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    namespaces: list[str] = []
    if orphans:
        with contextlib.suppress(FileNotFoundError):
            namespaces = [p.name for p in NETNS_RUN_DIR.iterdir()]
    return clusters_from(dirs, namespaces)


def clusters_from(state_dirs: list[str], namespaces: list[str]) -> list[str]:
    """Cluster names from state dir names and namespace names (`pzt-<c>-fabric|node-…|pod-…`; others' test
    namespaces such as `pzt-tagent-x` are not clusters)."""
    names = {d for d in state_dirs if NAME_RULE.match(d)}
    for ns in namespaces:
        parts = ns.split("-")
        if (
            len(parts) >= 3
            and parts[0] == "pzt"
            and (parts[2] == "fabric" or (parts[2] in ("node", "pod") and len(parts) > 3))
        ):
            names.add(parts[1])
    return sorted(n for n in names if NAME_RULE.match(n))


async def down(name: str, base: Path | None = None) -> bool:
    """Remove every trace of the cluster: processes, namespaces (with their links and nft tables), state files.
    Idempotent; needs no live controller. True when something was removed."""
    layout = Layout.of(name, base)
    removed = False
    pid = controller_pid(layout)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # first, so nothing is restarted while we clean up
        removed = True
    namespaces = topology.cluster_namespaces(name)
    inodes = reaper.netns_ids(NETNS_RUN_DIR / ns for ns in namespaces)
    for _ in range(5):
        pids = reaper.cluster_processes(name, layout.root, inodes)
        if not pids:
            break
        removed = True
        await reaper.sigkill_all(pids)
    if namespaces:
        removed = True
        await topology.delete_namespaces(namespaces)
    if layout.root.exists():
        removed = True
        shutil.rmtree(layout.root, ignore_errors=True)
    return removed

"""Runs the seeds' experiment on the local cluster: for each scenario a cluster configured for it, fortio-style load
from the client pod (outside the mesh) through the gateway to httpbin, and an upgrade of every node's proxy in the
middle of the load. The load runs until the upgrade is over plus a tail, then is interrupted (fortio's `-t 0`), so
the upgrade always falls inside the measured window whatever the grace period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from pyztunnel import yamlfile
from pyztunnel.cluster import manage, spec
from pyztunnel.cluster.layout import Layout
from pyztunnel.errors import UserError
from pyztunnel.experiment.report import Run
from pyztunnel.experiment.scenarios import Scenario

STARTED_PREFIX = "Starting at"  # the load generator's line once every connection is warmed up
START_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class Plan:
    cluster: str
    duration_s: float  # nominal run length: warm-up before the upgrade and tail after it are each a quarter of it
    connections: tuple[int, ...]
    repeat: int
    timeout: str  # the load's per-request timeout, as fortio's -timeout
    gateway_retry: bool  # nginx retries a request on another upstream connection after an upstream error
    out: Path


def scenario_spec(base: spec.LoadedSpec, scenario: Scenario, gateway_retry: bool) -> spec.LoadedSpec:
    """The default cluster spec configured for one scenario."""
    doc = yamlfile.load(base.text)
    proxy = doc.setdefault("proxy", {})
    proxy["terminationGracePeriodSeconds"] = int(scenario.grace_s)
    proxy.setdefault("env", {})["PYZTUNNEL_LISTENER_HANDOFF"] = "true" if scenario.listener_handoff else "false"
    proxy["env"]["PYZTUNNEL_CONNECTION_MIGRATION"] = "true" if scenario.connection_migration else "false"
    # A proxy without the setting ignores the variable (settings.load reads only the variables it declares).
    proxy["env"]["PYZTUNNEL_HBONE_RESUME"] = "true" if scenario.hbone_resume else "false"
    proxy["env"]["PYZTUNNEL_STARTUP_NICE"] = str(scenario.startup_nice)
    if scenario.strategy == "drain":
        proxy["updateStrategy"] = {"type": "OnDelete"}
    doc.setdefault("agent", {})["tcpMigrateReq"] = 1 if scenario.tcp_migrate_req else 0
    # The same switch in the proxy: its own reuseport migrate program (pyztunnel.reuseport), which works where the
    # agent's sysctl cannot be written (Kubernetes); off with the sysctl, so the ztunnel scenario has neither.
    proxy["env"]["PYZTUNNEL_TCP_MIGRATE_REQ"] = "true" if scenario.tcp_migrate_req else "false"
    for deployment in doc.get("deployments", []):
        if deployment["name"] != "gateway":
            continue
        env = deployment.setdefault("env", {})
        if scenario.gateway_keepalive_time_s is not None:
            env["KEEPALIVE_TIME"] = f"{int(scenario.gateway_keepalive_time_s * 1000)}ms"
        env["PROXY_NEXT_UPSTREAM"] = "error timeout" if gateway_retry else "off"
    return spec.parse(yaml.safe_dump(doc, sort_keys=False), f"<experiment {scenario.key}>")


def gateway_url(state: dict[str, Any]) -> str:
    gateway = next(s for s in state["services"] if s["name"] == "gateway")
    return f"http://{gateway['vip']}:{gateway['ports'][0]['port']}/status/418"


def nodes_to_upgrade(state: dict[str, Any], scenario: Scenario) -> list[str] | None:
    """Every node, except for a drain the node of the load generator's pod: draining it would evict the load itself
    (in the seeds the client ran apart from the nodes being drained)."""
    if scenario.strategy != "drain":
        return None
    client_nodes = {p["node"] for p in state["pods"] if p["owner"]["name"] == "client"}
    return [n["name"] for n in state["nodes"] if n["name"] not in client_nodes]


# nginx's error-log messages for an upstream connection that failed under a request (then retried, per
# proxy_next_upstream, or answered 502): what the gateway's retry hides from the client.
UPSTREAM_ERRORS = ("upstream prematurely closed", "recv() failed", "writev() failed", "send() failed")


def gateway_upstream_errors(cluster: str, state: dict[str, Any]) -> int:
    """Upstream errors in the error logs of the gateway's pods: those of `state` and of the cluster's current state
    (a drain replaces evicted pods; their logs stay)."""
    layout = Layout.of(cluster)
    pods = list(state["pods"])
    try:
        pods += json.loads(layout.state.read_text())["pods"]
    except (OSError, ValueError, KeyError):
        pass  # the state as given is all there is
    names = {p["name"] for p in pods if p["owner"]["name"] == "gateway"}
    count = 0
    for name in sorted(names):
        try:
            text = layout.log(name).read_text(errors="replace")
        except OSError:
            continue
        count += sum(1 for line in text.splitlines() if any(m in line for m in UPSTREAM_ERRORS))
    return count


def client_netns(state: dict[str, Any]) -> str:
    for pod in state["pods"]:
        if pod["owner"]["name"] == "client" and pod["ready"]:
            return str(pod["netns"])
    raise UserError("the cluster has no ready 'client' pod to run the load from")


class LoadProcess:
    """`pyztunnel load` inside the client pod, until interrupted; its text output is teed to a file."""

    def __init__(
        self,
        netns: str,
        url: str,
        connections: int,
        timeout: str,
        json_path: Path,
        text_path: Path,
        extra: Sequence[str] = (),
    ):
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "pyztunnel", "load"]
        argv += ["-qps", "0", "-c", str(connections), "-t", "0", "-timeout", timeout, "-json", str(json_path)]
        argv += [*extra, url]
        self.json_path = json_path
        self.text = text_path.open("w")
        self.started = threading.Event()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started_at = 0.0
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.text.write(line)
            if line.startswith(STARTED_PREFIX) and not self.started.is_set():
                self.started_at = time.monotonic()
                self.started.set()
        self.text.flush()

    def wait_started(self) -> None:
        if not self.started.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop()
            raise UserError(f"the load generator did not start; see {self.text.name}")

    def stop(self) -> dict[str, Any]:
        """Interrupt the load (it prints and writes its results, as fortio does on ^C) and return the JSON."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        self.text.close()
        try:
            result: dict[str, Any] = json.loads(self.json_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"the load generator wrote no results ({exc}); see {self.text.name}") from None
        return result


def upgrade(cluster: str, version: str, scenario: Scenario, log: Path, nodes: list[str] | None = None) -> None:
    argv = [sys.executable, "-m", "pyztunnel", "upgrade", "--name", cluster, "--version", version]
    argv += ["--strategy", scenario.strategy, "--grace", str(int(scenario.grace_s))]
    if nodes:
        argv += ["--nodes", ",".join(nodes)]
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    if done.returncode != 0:
        raise UserError(f"the upgrade failed (exit {done.returncode}); see {log}")


def run_scenario(
    plan: Plan, scenario: Scenario, base: spec.LoadedSpec, say: Callable[[str], None], versions: list[int]
) -> list[Run]:
    configured = scenario_spec(base, scenario, plan.gateway_retry)
    say(f"scenario {scenario.key}: {scenario.title}")
    state = manage.up(configured, plan.cluster)
    runs: list[Run] = []
    try:
        warm = tail = max(1.0, plan.duration_s * scenario.duration_factor / 4)
        for connections in plan.connections:
            for repeat in range(plan.repeat):
                stem = plan.out / "runs" / f"{scenario.key}-c{connections}-{repeat + 1}"
                load = LoadProcess(
                    client_netns(state),
                    gateway_url(state),
                    connections,
                    plan.timeout,
                    stem.with_suffix(".json"),
                    stem.with_suffix(".txt"),
                )
                upgrade_error: str | None = None
                errors_before = gateway_upstream_errors(plan.cluster, state)
                try:
                    load.wait_started()
                    time.sleep(warm)  # the experiment's design: steady load before the upgrade
                    versions[0] += 1
                    upgrade_start = time.monotonic() - load.started_at
                    try:
                        upgrade(
                            plan.cluster,
                            f"v{versions[0]}",
                            scenario,
                            stem.with_suffix(".upgrade.log"),
                            nodes_to_upgrade(state, scenario),
                        )
                    except UserError as exc:
                        upgrade_error = str(exc)  # reported in the table; this scenario's cluster is not reused
                    upgrade_end = time.monotonic() - load.started_at
                    time.sleep(tail)  # and steady load after it, so late failures are seen
                finally:
                    result = load.stop()
                gateway_errors = gateway_upstream_errors(plan.cluster, state) - errors_before
                run = Run(
                    scenario, connections, repeat, result, upgrade_start, upgrade_end, upgrade_error, gateway_errors
                )
                outcome = f"upgrade FAILED: {upgrade_error}" if upgrade_error else f"{run.upgrade_s:.1f}s upgrade"
                say(
                    f"  -c {connections} run {repeat + 1}: {run.calls} calls, {run.failed} failed, "
                    f"{run.retried} retried, {gateway_errors} gateway upstream errors, {outcome}"
                )
                runs.append(run)
                if upgrade_error:
                    return runs
    finally:
        keep_logs(plan.cluster, plan.out / "logs" / scenario.key)
        asyncio.run(manage.down(plan.cluster))
    return runs


def keep_logs(cluster: str, dest: Path) -> None:
    """Copy the cluster's logs (proxies, agents, pods, controller) before the cluster is removed: what explains a
    row's failures after the run."""
    shutil.rmtree(dest, ignore_errors=True)
    try:
        shutil.copytree(Layout.of(cluster).root / "logs", dest)
    except OSError:
        pass  # a cluster that never came up has no logs; the experiment's own output says why

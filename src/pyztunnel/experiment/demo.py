"""The demo's last step: upgrade every node's proxy of the running demo cluster under load, and say what the
clients saw. The same pieces as the experiment, one scenario (the cluster as it runs), one run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click

from pyztunnel.cluster.client import Client
from pyztunnel.cluster.control_plane import describe_config_source
from pyztunnel.cluster.layout import Layout
from pyztunnel.experiment import report
from pyztunnel.experiment.runner import LoadProcess, client_netns, gateway_upstream_errors, gateway_url, upgrade
from pyztunnel.experiment.scenarios import Scenario

CONNECTIONS = 100
WARM_S = TAIL_S = 3.0


def run(cluster: str, state: dict[str, Any]) -> None:
    daemonset = state["daemonset"]
    handoff = daemonset.get("env", {}).get("PYZTUNNEL_LISTENER_HANDOFF", "true") != "false"
    grace = float(daemonset.get("terminationGracePeriodSeconds", 30))
    scenario = Scenario("demo", "the demo cluster as configured", handoff, True, grace)
    version = f"{daemonset.get('version', 'v')}-demo{int(time.time())}"
    out = Path(tempfile.mkdtemp(prefix="pyztunnel-demo-"))
    click.echo(f"\nupgrade under load: pyztunnel load -qps 0 -c {CONNECTIONS} through the gateway; upgrading every")
    click.echo(f"node's proxy to {version} (rolling, grace {grace:g}s) after {WARM_S:g}s of load …")
    load = LoadProcess(client_netns(state), gateway_url(state), CONNECTIONS, "10s", out / "load.json", out / "load.txt")
    errors_before = gateway_upstream_errors(cluster, state)
    try:
        load.wait_started()
        time.sleep(WARM_S)  # steady load before the upgrade, as in the seeds
        upgrade_start = time.monotonic() - load.started_at
        upgrade(cluster, version, scenario, out / "upgrade.log")
        upgrade_end = time.monotonic() - load.started_at
        time.sleep(TAIL_S)
    finally:
        result = load.stop()
    run_ = report.Run(scenario, CONNECTIONS, 0, result, upgrade_start, upgrade_end)
    hidden = gateway_upstream_errors(cluster, state) - errors_before
    click.echo(report.fortio_summary(run_))
    click.echo(
        f"upgrade took {run_.upgrade_s:.1f}s; failed requests: {run_.failed}; retried by the load generator on a "
        f"fresh socket: {run_.retried}; upstream errors the gateway retried (its error log): {hidden} "
        f"(target: all 0). Full output: {out}"
    )
    after = Client(Layout.of(cluster), cluster).state()
    click.echo(f"the new proxies' {describe_config_source(after)}")

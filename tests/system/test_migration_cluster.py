"""Connection migration on the real local cluster: the non-mesh client's keep-alive connections to the mesh gateway
(inbound plaintext relays, 15006 → nginx, on the gateway's node) survive a rolling upgrade of every node's proxy
whose drain is far shorter than the load; with `PYZTUNNEL_CONNECTION_MIGRATION=false` they are reset as in ztunnel.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyztunnel.cluster import manage, spec
from pyztunnel.cluster.layout import Layout
from pyztunnel.experiment.runner import LoadProcess, client_netns, gateway_url, scenario_spec, upgrade
from pyztunnel.experiment.scenarios import Scenario
from tests.system.cluster_fixtures import wait_for

LOAD_BYTES = 500_000  # what the client receives before and after the upgrade: the load is flowing
LOAD_TIMEOUT_S = 30.0


def received_bytes(netns: str) -> int:
    """Bytes the client pod's interfaces received (its /proc/net/dev)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/dev"], capture_output=True, text=True)
    return sum(int(line.split(":", 1)[1].split()[0]) for line in out.stdout.splitlines()[2:] if ":" in line)


def traffic_past(netns: str, amount: int) -> Callable[[], bool]:
    """A condition: the client has received `amount` more bytes than now."""
    target = received_bytes(netns) + amount
    return lambda: received_bytes(netns) >= target


NAME = f"tmig{os.getpid() % 100000}"  # unique per run: a concurrent suite must not remove ours
CONNECTIONS = 20
# Grace 4 s → a 3 s drain: without migration every client connection still open 3 s after SIGTERM is reset.
SCENARIO = Scenario("migrate", "connection migration", listener_handoff=True, tcp_migrate_req=True, grace_s=4)


def run(tmp: Path, migration: bool) -> tuple[dict[str, Any], str]:
    configured = scenario_spec(spec.load(None), SCENARIO, gateway_retry=True)
    doc = yaml.safe_load(configured.text)
    doc["proxy"]["env"]["PYZTUNNEL_CONNECTION_MIGRATION"] = "true" if migration else "false"
    configured = spec.parse(yaml.safe_dump(doc, sort_keys=False), "<test migration>")
    try:
        state = manage.up(configured, NAME)
        load = LoadProcess(
            client_netns(state), gateway_url(state), CONNECTIONS, "5s", tmp / "load.json", tmp / "load.txt"
        )
        try:
            load.wait_started()
            netns = client_netns(state)
            wait_for("steady load before the upgrade", traffic_past(netns, LOAD_BYTES), LOAD_TIMEOUT_S)
            upgrade(NAME, "v2", SCENARIO, tmp / "upgrade.log")
            # and after it, through the new proxies, so late failures are seen
            wait_for("load after the upgrade", traffic_past(netns, LOAD_BYTES), LOAD_TIMEOUT_S)
        finally:
            result = load.stop()
        logs = "".join(p.read_text() for p in sorted((Layout.of(NAME).root / "logs").glob("ztunnel-*.log")))
    finally:
        asyncio.run(manage.down(NAME))
    print((tmp / "load.txt").read_text())
    return result, logs


@pytest.mark.parametrize("migration", [True, False], ids=["migration", "ztunnel"])
def test_keepalive_connections_through_the_gateway_survive_a_rolling_upgrade(tmp_path: Path, migration: bool) -> None:
    result, logs = run(tmp_path, migration)
    codes = result["RetCodes"]
    moved = sum(int(m) for m in re.findall(r"migrated established connections\tconnections=(\d+)", logs))
    if migration:
        assert result["Retried"] == 0, result.get("RetriedKinds")
        assert result["SocketCount"] == CONNECTIONS
        # Every answer is the app's 418, except (rarely, under CPU contention) a 502 of nginx whose upstream HBONE
        # stream was reset at an old proxy's deadline twice in a row: HBONE legs do not migrate (docs/migration.md,
        # the remaining gap). The client's own connections are never touched, as the two lines above show.
        others = {code: n for code, n in codes.items() if code != "418"}
        assert set(others) <= {"502"} and sum(others.values()) <= codes["418"] // 1000, codes
        # The gateway's node proxy moved the client's connections (and the nginx → app ones of plaintext pods).
        assert moved >= CONNECTIONS, logs[-3000:]
        assert "took over established connections" in logs
    else:
        # ztunnel's behaviour: the connections still open at the old proxy's deadline are reset.
        assert result["Retried"] > 0 or result["SocketCount"] > CONNECTIONS
        assert moved == 0 and "registered to take" not in logs

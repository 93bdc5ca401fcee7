"""kill -9 of the new and of the old proxy at each phase of the handover, on the real local cluster, under the soak's
mixed load (keep-alive and new-connection HTTP through the gateway, long-lived TCP and HBONE streams that check
their bytes). Each fault is injected by the proxy itself at its phase (`PYZTUNNEL_FAULT`, once per marker file); the
kubelet restarts a killed proxy, as in Kubernetes. The outcome each must have is docs/lifecycle.md's table ("What a
crash loses").

One cluster for the module (node-2 holds the gateway and the echo server, so its proxy carries every kind of
connection: inbound plaintext from the client, inbound HBONE from the mesh client, outbound HBONE to httpbin), and one
rolling upgrade of node-2 per fault. An old-side fault needs a proxy armed when it was created: one upgrade creates
it with the fault in its env, the next one (env cleared) makes it the old instance.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyztunnel.cluster import spec
from pyztunnel.experiment import soak
from tests.system.cluster_fixtures import Cluster, running, wait_for

NODE = "node-2"
GRACE_S = 10  # a 9 s drain
CONNECTIONS = 40  # 34 keep-alive, 2 new-connection, 2 TCP streams, 2 HBONE streams
_versions = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pins = {"gateway": NODE, "echo": NODE, "meshclient": "node-1"}
    with running("tflt", soak.soak_spec(spec.load(None), GRACE_S, pins=pins)) as c:
        yield c


def set_fault(cluster: Cluster, phase: str, marker: Path | None) -> None:
    """The proxy template's fault (new proxies get it); "" disarms (a merged or a replaced env both clear it)."""
    env = dict(cluster.state()["daemonset"]["env"])
    env["PYZTUNNEL_FAULT"], env["PYZTUNNEL_FAULT_MARKER"] = phase, str(marker or "")
    cluster.api.call("PUT", "/v1/daemonset", {"env": env})


def upgrade_node(cluster: Cluster, out: Path) -> None:
    version = f"f{next(_versions)}"
    soak.upgrade(cluster.name, version, out / f"upgrade-{version}.log", [NODE])


class Outcome:
    """What the upgrade cost each kind of load, and whether the node serves afterwards."""

    def __init__(self, results: dict[str, dict[str, Any]], begin: float, end: float):
        self.kinds = {k: soak.window({k: r}, begin, end) for k, r in results.items()}
        self.totals = soak.totals(results)

    def __getitem__(self, kind: str) -> soak.Window:
        return self.kinds[kind]

    def __repr__(self) -> str:
        return f"{self.kinds} {self.totals}"


def faulted_upgrade(cluster: Cluster, tmp: Path, phase: str) -> Outcome:
    marker = tmp / "fired"
    if phase.startswith("old-"):
        set_fault(cluster, phase, marker)
        upgrade_node(cluster, tmp)  # the node's proxy is armed: it dies when it is the old one, at that phase
        set_fault(cluster, "", None)
        assert not marker.exists(), "an old-side fault fired in a new instance"
    else:
        set_fault(cluster, phase, marker)
    try:
        load = soak.MixedLoad(cluster.state(), CONNECTIONS, tmp / "load")
        try:
            begin = time.monotonic()
            upgrade_node(cluster, tmp)
            if phase.startswith("new-"):
                wait_restarted(cluster, marker)
            assert_serving(cluster)
            end = time.monotonic()
        finally:
            results = load.stop()
    finally:
        set_fault(cluster, "", None)
    assert marker.exists(), f"the fault {phase} never fired"
    outcome = Outcome(results, begin, end)
    print(f"{phase}: {outcome}")
    assert outcome.totals["bytes_corrupted"] == 0  # whatever breaks, no stream ever gets a wrong byte
    return outcome


def wait_restarted(cluster: Cluster, marker: Path) -> None:
    """The killed new instance is back: its pod restarted and ready again. The rollout may be done before the kill
    (a new-stream-resume fault fires once the old instance has handed everything over, as the rollout sees the
    node done), so the upgrade's end says nothing about the restart; until it listens, new connections are refused."""

    def back() -> bool:
        if not marker.exists():
            return False
        mine = [p for p in cluster.state()["proxies"] if p["node"] == NODE and p["phase"] == "Running"]
        newest = max(mine, key=lambda p: p["createdAt"], default=None)
        return newest is not None and newest["restarts"] >= 1 and newest["ready"]

    wait_for("the killed proxy's restart to be ready", back, timeout=60)


def assert_serving(cluster: Cluster) -> None:
    """After the upgrade the node's new proxy serves new connections: 20 requests through the gateway, all 418."""
    client = next(p for p in cluster.state()["pods"] if p["owner"]["name"] == "client")
    gateway = next(s for s in cluster.last["services"] if s["name"] == "gateway")
    url = f"http://{gateway['vip']}:{gateway['ports'][0]['port']}/status/418"
    assert cluster.fetch(client["netns"], *[url] * 20) == ["418"] * 20


def assert_clean(outcome: Outcome, *kinds: str) -> None:
    for kind in kinds or soak.KINDS:
        w = outcome[kind]
        assert (w.failed, w.retried, w.broken, w.bytes_lost) == (0, 0, 0, 0), (kind, w)


# The new instance dies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["new-before-handoff", "new-listeners-received"])
def test_a_new_instance_killed_before_it_holds_anything_costs_nothing(
    cluster: Cluster, tmp_path: Path, phase: str
) -> None:
    assert_clean(faulted_upgrade(cluster, tmp_path, phase))


@pytest.mark.parametrize("phase", ["new-confirmed", "new-registered"])
def test_a_new_instance_killed_after_it_accepts_costs_only_what_it_accepted(
    cluster: Cluster, tmp_path: Path, phase: str
) -> None:
    """It accepts on a pod's adopted listeners as soon as it has them (before it registers, before it is ready).
    When it dies the old one accepts on them again at once (the lease ended), and nothing it held is lost; only
    connections the new one had accepted itself, in the moments before it died, may be: a new connection or two."""
    outcome = faulted_upgrade(cluster, tmp_path, phase)
    assert_clean(outcome, "keepalive", "tcp-streams", "hbone-streams")
    fresh = outcome["new-connections"]
    assert fresh.failed + fresh.retried <= soak.split(CONNECTIONS)["new-connections"], fresh


def test_a_new_instance_killed_in_the_migration_leaves_the_rest_to_its_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Killed with the first batch unanswered: the plain-TCP relays of the batch stay with the old instance and go to
    the restarted one in another round (no client connection is reset, the TCP stream is intact); the HBONE streams
    stopped for that batch go on from the old instance (the gateway's upstream streams by a resume CONNECT of its
    own; the mesh client's stream waits parked for its peer's resume, which queues on the shared listener until the
    restart adopts it, and the restart gets the parked socket in the next round); new connections queue on the shared
    listeners (kept open by the draining old one) until the restart adopts them. By design lost: connections the new
    one had accepted itself before it died."""
    outcome = faulted_upgrade(cluster, tmp_path, "new-migration-batch")
    assert_clean(outcome, "keepalive", "tcp-streams", "hbone-streams")
    fresh = outcome["new-connections"]
    assert fresh.failed + fresh.retried <= soak.split(CONNECTIONS)["new-connections"], fresh


def test_a_new_instance_killed_while_it_resumes_streams_is_a_crash_of_the_nodes_proxy(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Everything was committed to it and the old one has exited: its death is that of the node's only proxy. Its
    connections die with it and new ones fail until its restart listens (by design); afterwards the node serves, and
    no stream ever gets a wrong byte (checked by faulted_upgrade)."""
    outcome = faulted_upgrade(cluster, tmp_path, "new-stream-resume")
    assert outcome["keepalive"].retried <= soak.split(CONNECTIONS)["keepalive"], outcome  # each reset once at most


# The old instance dies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["old-handoff-connected", "old-listeners-sent", "old-released"])
def test_an_old_instance_killed_during_the_handoff_loses_only_its_own_connections(
    cluster: Cluster, tmp_path: Path, phase: str
) -> None:
    """Its established connections die with it (a crash of the proxy that holds them: ztunnel's behaviour). What
    must not be lost: the listeners (the new one holds its copies) and every connection after; each client
    connection is reset at most once."""
    outcome = faulted_upgrade(cluster, tmp_path, phase)
    for kind, connections in soak.split(CONNECTIONS).items():
        w = outcome[kind]
        assert w.broken <= connections and w.retried <= connections, (kind, w)


def test_an_old_instance_killed_in_the_migration_leaves_its_batch_to_the_new_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Killed with its first batch sent but not decided: the new instance holds the last copies of those sockets and
    keeps them (the plain-TCP relays: client connections and the TCP stream); what was not sent dies with it."""
    outcome = faulted_upgrade(cluster, tmp_path, "old-migration-batch")
    assert_clean(outcome, "tcp-streams")
    assert outcome["keepalive"].retried == 0


def test_an_old_instance_killed_after_its_commit_costs_nothing_committed(cluster: Cluster, tmp_path: Path) -> None:
    outcome = faulted_upgrade(cluster, tmp_path, "old-committed")
    assert_clean(outcome, "tcp-streams")
    assert outcome["keepalive"].retried == 0

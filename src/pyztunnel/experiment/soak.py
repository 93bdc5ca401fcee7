"""Rolling upgrades under one mixed load, and what each upgrade cost (the soak, `benchmarks/bench_soak.py`; the
fault tests, `tests/system/test_upgrade_faults.py`).

The cluster is the default one with pyztunnel's defaults (listener handoff, tcp_migrate_req, connection migration,
resumable HBONE streams) and two more mesh pods: `echo` (`pyztunnel tcp-echo`) and `meshclient`. One load of C
connections runs through every upgrade, split four ways:
- keep-alive HTTP, client (outside the mesh) → gateway VIP → httpbin (HBONE), the bulk;
- a new connection per request, the same path (5 %);
- long-lived TCP streams, client → echo VIP (plain TCP into the echo's node proxy: inbound plaintext) (2 %);
- long-lived HBONE streams, meshclient → echo VIP (outbound HBONE at one node, inbound at the other) (2 %).
Streams carry checksummed data and count their bytes (`pyztunnel load -stream`): a broken one is reopened and its
bytes in flight are counted lost. Each upgrade's window (its start to its end, widened to whole seconds) is read from
the loads' per-second timelines: failed, retried, streams broken, bytes lost, the worst second's p99.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pyztunnel import yamlfile
from pyztunnel.cluster import spec
from pyztunnel.experiment.runner import LoadProcess, client_netns, gateway_url

ECHO_PORT = 9000
KINDS = ("keepalive", "new-connections", "tcp-streams", "hbone-streams")


def soak_spec(
    base: spec.LoadedSpec,
    grace_s: int,
    proxy_env: Mapping[str, str] | None = None,
    pins: Mapping[str, str] | None = None,
) -> spec.LoadedSpec:
    """The default cluster with pyztunnel's defaults, the echo and meshclient pods, the drain grace `grace_s`, extra
    proxy env, and deployments pinned to nodes (`pins`: deployment → node)."""
    doc: dict[str, Any] = yamlfile.load(base.text)
    proxy = doc.setdefault("proxy", {})
    proxy["terminationGracePeriodSeconds"] = grace_s
    env = proxy.setdefault("env", {})
    for name in ("PYZTUNNEL_LISTENER_HANDOFF", "PYZTUNNEL_CONNECTION_MIGRATION", "PYZTUNNEL_HBONE_RESUME"):
        env[name] = "true"
    env.update(proxy_env or {})
    doc.setdefault("agent", {})["tcpMigrateReq"] = 1
    doc["deployments"] += [
        {
            "name": "meshclient",
            "mesh": True,
            "command": ["sleep", "infinity"],
            "terminationGracePeriodSeconds": 1,
        },
        {
            "name": "echo",
            "mesh": True,
            "serviceAccount": "echo",
            "command": ["pyztunnel", "tcp-echo", "--port", str(ECHO_PORT), "--grace", "30s"],
            "ports": [ECHO_PORT],
            "readinessProbe": {"tcpSocket": {"port": ECHO_PORT}},
            "terminationGracePeriodSeconds": 1,
        },
    ]
    doc["services"].append(
        {"name": "echo", "namespace": "default", "selector": {"app": "echo"}, "ports": [{"port": ECHO_PORT}]}
    )
    for deployment in doc["deployments"]:
        if deployment["name"] == "gateway":
            # Every hop's connections live for ever and nobody retries: what an upgrade breaks shows.
            deployment.setdefault("env", {}).update({"KEEPALIVE_TIME": "1h", "PROXY_NEXT_UPSTREAM": "off"})
        if pins and deployment["name"] in pins:
            deployment["nodeName"] = pins[deployment["name"]]
    return spec.parse(yaml.safe_dump(doc, sort_keys=False), "<soak>")


def upgrade(cluster: str, version: str, log: Path, nodes: Sequence[str] = ()) -> None:
    """`pyztunnel upgrade` (RollingUpdate) of every node, or of `nodes`; raises with the log's path if it fails."""
    argv = [sys.executable, "-m", "pyztunnel", "upgrade", "--name", cluster, "--version", version]
    if nodes:
        argv += ["--nodes", ",".join(nodes)]
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    if done.returncode != 0:
        raise RuntimeError(f"upgrade to {version} failed (exit {done.returncode}); see {log}")


def split(connections: int) -> dict[str, int]:
    """How C connections are shared between the four kinds (each gets at least one)."""
    small = {"new-connections": max(1, connections // 20), "tcp-streams": max(1, connections // 50)}
    small["hbone-streams"] = small["tcp-streams"]
    return {"keepalive": max(1, connections - sum(small.values())), **small}


def _netns_of(state: Mapping[str, Any], deployment: str) -> str:
    return str(next(p["netns"] for p in state["pods"] if p["owner"]["name"] == deployment and p["ready"]))


def _echo_url(state: Mapping[str, Any]) -> str:
    vip = next(s["vip"] for s in state["services"] if s["name"] == "echo")
    return f"tcp://{vip}:{ECHO_PORT}"


class MixedLoad:
    """The four loads, started together (each warmed up) and interrupted together."""

    def __init__(self, state: Mapping[str, Any], connections: int, out: Path) -> None:
        shares = split(connections)
        client, mesh = client_netns(dict(state)), _netns_of(state, "meshclient")
        where = {
            "keepalive": (client, gateway_url(dict(state)), []),
            "new-connections": (client, gateway_url(dict(state)), ["-keepalive=false"]),
            "tcp-streams": (client, _echo_url(state), ["-stream"]),
            "hbone-streams": (mesh, _echo_url(state), ["-stream"]),
        }
        out.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, LoadProcess] = {}
        try:
            for kind in KINDS:
                netns, url, extra = where[kind]
                self.procs[kind] = LoadProcess(
                    netns, url, shares[kind], "10s", out / f"{kind}.json", out / f"{kind}.txt", extra
                )
            for proc in self.procs.values():
                proc.wait_started()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, dict[str, Any]]:
        results = {}
        for kind, proc in self.procs.items():
            results[kind] = proc.stop()
        return results


@dataclasses.dataclass
class Window:
    """What one upgrade cost, from the loads' timelines."""

    seconds: float
    calls: int = 0
    failed: int = 0
    retried: int = 0
    broken: int = 0
    bytes_lost: int = 0
    p99_s: float = 0.0

    def clean(self) -> bool:
        return self.failed == 0 and self.retried == 0 and self.broken == 0 and self.bytes_lost == 0


def window(results: Mapping[str, Mapping[str, Any]], begin: float, end: float) -> Window:
    """The seconds of every load's timeline that overlap [begin, end] (time.monotonic(); a load's `TimelineStart`
    is its second 0 on the same clock)."""
    out = Window(seconds=end - begin)
    for kind, result in results.items():
        zero = float(result["TimelineStart"])
        first, last = int(begin - zero), int(end - zero)
        for sec in result.get("Timeline", []):
            if not first <= sec["Second"] <= last:
                continue
            out.calls += sec["Calls"]
            out.failed += sec["Errors"]
            out.retried += sec["Retried"]
            out.broken += sec.get("Broken", 0)
            out.bytes_lost += sec.get("BytesLost", 0)
            if kind in ("keepalive", "new-connections"):
                out.p99_s = max(out.p99_s, float(sec["P99"]))
    return out


def totals(results: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """The whole run's stream counts (what the timelines may miss: a stream broken in a second after the last)."""
    streams = [r.get("Stream", {}) for r in results.values()]
    return {
        "broken": sum(int(s.get("Broken", 0)) for s in streams),
        "bytes_lost": sum(int(s.get("BytesLost", 0)) for s in streams),
        "bytes_corrupted": sum(int(s.get("BytesCorrupted", 0)) for s in streams),
        "bytes_echoed": sum(int(s.get("BytesEchoed", 0)) for s in streams),
        "retried": sum(int(r.get("Retried", 0)) for r in results.values()),
    }

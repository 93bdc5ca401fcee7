"""What `cluster up` says when it gives up: a proxy that is ready but has not loaded the last workloads.yaml."""

from __future__ import annotations

from pathlib import Path

from pyztunnel.cluster.layout import Layout
from pyztunnel.cluster.manage import not_ready


def test_not_ready_names_a_proxy_behind_the_last_workloads(tmp_path: Path) -> None:
    proxy = {"name": "ztunnel-a", "phase": "Running", "ready": True, "message": "", "configVersion": "old"}
    other = {**proxy, "name": "ztunnel-b", "configVersion": "new"}
    ztunnel = {**proxy, "name": "ztunnel-c", "configVersion": None}  # no header: judged by the controller's timer
    state = {"phase": "running", "nodes": [], "pods": [], "proxies": [proxy, other, ztunnel], "workloadsVersion": "new"}
    assert not_ready(state, Layout(tmp_path)) == (
        "proxy ztunnel-a has not loaded the last workloads.yaml (old, not new)"
    )

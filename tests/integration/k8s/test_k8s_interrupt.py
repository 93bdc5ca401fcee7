"""Ctrl-C in the middle of a drain (the process gets SIGINT while a PDB holds an eviction): the node stays cordoned,
and the run says so, with the resume state; re-running the same command finishes and uncordons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

from pyztunnel.kubeapi.store import Store
from tests.integration.k8s.conftest import QUICK, Kube
from tests.integration.k8s.test_k8s_drain import web_on_node_1


def cordoned(node: str) -> Callable[[Store], bool]:
    def done(store: Store) -> bool:
        n = store.find("nodes", None, node)
        return bool(n and n["spec"].get("unschedulable"))

    return done


def evicting(store: Store) -> bool:
    ds = store.find("daemonsets", "istio-system", "ztunnel") or {"metadata": {}}
    state = (ds["metadata"].get("annotations") or {}).get("pyztunnel.io/rollout", "")
    return '"phase": "evict"' in state


def test_ctrl_c_during_a_drain_says_what_is_cordoned_and_resumes(kube: Kube) -> None:
    web_on_node_1(kube, replicas=1, min_available=1)  # its eviction is refused until the PDB is relaxed
    argv = [
        sys.executable,
        "-m",
        "pyztunnel",
        "upgrade",
        "--kubeconfig",
        str(kube.kubeconfig),
        "--version",
        "1.31.0",
        "--strategy",
        "drain",
        *QUICK,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    try:
        kube.api.wait(cordoned("node-1"), 60, "node-1 cordoned by the run")
        kube.api.wait(evicting, 60, "the run at its evict step")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "cordoned nodes: node-1" in out
    assert "rollout to 1.31.0 (drain): running, 0/3 nodes done, stopped at node-1 (evict)" in out
    assert "interrupted; re-run the same command to continue" in out

    # The budget is relaxed; the same command continues where it stopped and uncordons.
    def relax() -> None:
        pdb = kube.api.store.get("poddisruptionbudgets", "default", "web")
        pdb["spec"]["minAvailable"] = 0
        kube.api.store.replace("poddisruptionbudgets", "default", "web", pdb)

    kube.api.call(relax)
    again = kube.upgrade("--version", "1.31.0", "--strategy", "drain")
    assert again.code == 0, again.err
    assert "resuming the rollout to 1.31.0" in again.out
    assert not any(n["spec"].get("unschedulable") for n in kube.list("nodes"))

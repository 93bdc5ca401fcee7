"""Bad input and faults of `pyztunnel upgrade --kubeconfig`: one clear line, exit 2, the cluster left consistent."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from pyztunnel.kubeapi import seed
from pyztunnel.kubeapi.harness import StandIn
from pyztunnel.kubeapi.server import Access, Rule
from tests.integration.k8s.conftest import FAST, Kube


def one_line(err: str) -> str:
    line = err.strip()
    assert line.count("\n") == 0, err
    assert line.startswith("error: ") and "Traceback" not in line
    return line


def test_api_server_unreachable(kube: Kube, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    doc = yaml.safe_load(kube.kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    path = tmp_path / "unreachable"
    path.write_text(yaml.safe_dump(doc))
    result = kube.run("upgrade", "--version", "1.31.0", "--kubeconfig", str(path), kubeconfig=False)
    assert result.code == 2
    assert f"the API server at http://127.0.0.1:{port} is unreachable" in one_line(result.err)


def test_kubeconfig_without_the_context(kube: Kube) -> None:
    result = kube.run("upgrade", "--version", "1.31.0", "--context", "prod")
    assert result.code == 2
    assert "has no context 'prod' (contexts: stand-in)" in one_line(result.err)


def test_missing_kubeconfig(kube: Kube, tmp_path: Path) -> None:
    result = kube.run("upgrade", "--version", "1.31.0", "--kubeconfig", str(tmp_path / "nope"), kubeconfig=False)
    assert result.code == 2 and "no such file" in one_line(result.err)


def test_daemonset_not_found(kube: Kube) -> None:
    result = kube.run("upgrade", "--version", "1.31.0", "--daemonset", "istio-system/nope")
    assert result.code == 2
    assert "daemonset istio-system/nope not found at http://127.0.0.1:" in one_line(result.err)


def test_rbac_forbidden(tmp_path: Path, capsys: object) -> None:
    reader = [Rule(frozenset({"get", "list", "watch"}), frozenset({"*"}))]
    access = Access(
        tokens={"t0ken": "system:serviceaccount:ops:upgrader"}, rules={"system:serviceaccount:ops:upgrader": reader}
    )
    with StandIn(FAST, access=access) as api:
        api.seed(3, daemonset=seed.ztunnel_daemonset("1.30.3"))
        api.settled()
        kube = Kube(api, api.kubeconfig(tmp_path / "kc", token="t0ken"), capsys)  # type: ignore[arg-type]
        result = kube.upgrade("--version", "1.31.0")
        assert result.code == 2
        line = one_line(result.err)
        assert "forbidden (RBAC)" in line
        assert (
            'User "system:serviceaccount:ops:upgrader" cannot patch resource "daemonsets" in API group "apps"' in line
        )
        assert kube.image().endswith(":1.30.3")


def test_a_new_pod_that_never_becomes_ready_on_drain(kube: Kube) -> None:
    result = kube.upgrade("--version", "notready-1.31", "--strategy", "drain", "--ready-timeout", "1s")
    assert result.code == 2
    line = one_line(result.err)
    assert "node node-1: proxy ztunnel-" in line and "not ready within 1s" in line
    assert "restored 1.30.3 (the whole previous template)" in line
    assert "cordoned nodes: none" in result.out
    assert (
        "resume state (annotation pyztunnel.io/rollout of daemonset istio-system/ztunnel): rollout to notready-1.31 (drain): failed, 0/3 nodes done, stopped at node-1"
        in result.out
    )
    assert all(img.endswith(":1.30.3") for _, img in kube.proxies().values())
    assert kube.image().endswith(":1.30.3")

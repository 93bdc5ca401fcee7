"""A stand-in API server per test (pyztunnel.kubeapi) with three nodes and Istio's ztunnel DaemonSet, and a way to
run `pyztunnel …` against it as a user would (exit code, stdout, stderr)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyztunnel.cli import main
from pyztunnel.kubeapi import seed
from pyztunnel.kubeapi.harness import StandIn
from pyztunnel.kubeapi.kubelet import SimOptions

FAST = SimOptions(start_seconds=0.02, termination_seconds=0.2, crash_seconds=0.2)
NS = "istio-system"
QUICK = ["--eviction-retry", "0.2s", "--poll-interval", "0.1s"]


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str


class Kube:
    def __init__(self, api: StandIn, kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.api, self.kubeconfig, self.capsys = api, kubeconfig, capsys

    def run(self, *args: str, kubeconfig: bool = True) -> Result:
        argv = list(args) + (["--kubeconfig", str(self.kubeconfig)] if kubeconfig else [])
        self.capsys.readouterr()
        code = 0
        try:
            main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def upgrade(self, *args: str) -> Result:
        return self.run("upgrade", *args, *QUICK)

    def get(self, plural: str, name: str, ns: str | None = NS) -> dict[str, Any]:
        return self.api.call(lambda: self.api.store.get(plural, ns, name))

    def list(self, plural: str, ns: str | None = None) -> list[dict[str, Any]]:
        return self.api.call(lambda: self.api.store.list(plural, ns))

    def proxies(self) -> dict[str, tuple[str, str]]:
        """node → (pod name, image) of the live ztunnel pods."""
        return self.proxies_in(NS)

    def proxies_in(self, ns: str) -> dict[str, tuple[str, str]]:
        out = {}
        for p in self.list("pods", ns):
            if "deletionTimestamp" not in p["metadata"] and p["metadata"]["name"].startswith("ztunnel-"):
                out[p["spec"]["nodeName"]] = (p["metadata"]["name"], p["spec"]["containers"][0]["image"])
        return out

    def image(self) -> str:
        return str(self.get("daemonsets", "ztunnel")["spec"]["template"]["spec"]["containers"][0]["image"])


@pytest.fixture
def kube(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Kube]:
    with StandIn(FAST) as api:
        api.seed(3, daemonset=seed.ztunnel_daemonset("1.30.3"))
        api.settled()
        yield Kube(api, api.kubeconfig(tmp_path / "kubeconfig"), capsys)

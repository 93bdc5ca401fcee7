"""Shared pieces of the end-to-end tests on the real local cluster: bring a cluster up from a patched default spec
and always take it down, find pods and proxies, run commands in pods, wait on log lines, parse access-log lines,
read a proxy's metrics and config_dump.

Waits poll a condition against a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pyztunnel.cluster import manage, spec
from pyztunnel.cluster.client import Client
from pyztunnel.cluster.layout import Layout

POLL_S = 0.05
TRUST_DOMAIN = "cluster.local"

# GET a URL inside a netns and print the body (the proxy's metrics, config_dump, admin endpoints).
HTTP_GET = (
    "import sys, urllib.request\nsys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


def spiffe(namespace: str, service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def default_doc() -> dict[str, Any]:
    """The built-in default spec as a document to patch."""
    doc: dict[str, Any] = yaml.safe_load(spec.default_text())
    return doc


def deployment(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in doc["deployments"] if d["name"] == name)
    return found


def loaded(doc: dict[str, Any], name: str) -> spec.LoadedSpec:
    return spec.parse(yaml.safe_dump(doc, sort_keys=False), f"<test spec {name}>")


def wait_for(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_S)  # polling a condition with a deadline [noqa: sleep-ok]


_FIELD = re.compile(r'([a-z_.]+)=("(?:[^"\\]|\\.)*"|\S+)')


def log_fields(line: str) -> dict[str, str]:
    """The k=v fields of a plain-format log line (reference §6.3), string values unquoted."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _FIELD.findall(line.split("\t", 4)[-1])}


def log_message(line: str) -> str:
    parts = line.split("\t")
    return parts[3] if len(parts) > 3 else ""


class Cluster:
    """A running local cluster, seen through its controller API, pod logs and netns."""

    def __init__(self, name: str, state: dict[str, Any]) -> None:
        self.name = name
        self.layout = Layout.of(name)
        self.api = Client(self.layout, name)
        self.last = state

    def state(self) -> dict[str, Any]:
        self.last = self.api.state()
        return self.last

    # ----- pods --------------------------------------------------------------------------------------------------

    def pods(self, deployment_name: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.state()["pods"]
            if p["owner"]["name"] == deployment_name and p["ready"] and p["phase"] == "Running"
        ]

    def pod(self, deployment_name: str) -> dict[str, Any]:
        pods = self.pods(deployment_name)
        assert pods, f"no ready pod of {deployment_name} in {self.name}"
        return pods[0]

    def proxy(self, node: str) -> dict[str, Any]:
        """The node's ready, running proxy pod (the newest if two)."""
        proxies = [p for p in self.state()["proxies"] if p["node"] == node and p["ready"] and p["phase"] == "Running"]
        assert proxies, f"no ready proxy on {node}"
        return max(proxies, key=lambda p: p["createdAt"])

    def node(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(n for n in self.state()["nodes"] if n["name"] == name)
        return found

    def service_vip(self, name: str) -> str:
        return str(next(s for s in self.state()["services"] if s["name"] == name)["vip"])

    # ----- processes in pods ------------------------------------------------------------------------------------

    def argv_in(self, netns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", netns, *argv]

    def run_in(self, netns: str, *argv: str, timeout: float = 60, check: bool = True) -> str:
        done = subprocess.run(self.argv_in(netns, *argv), capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"{argv} in {netns}: exit {done.returncode}: {done.stderr[-2000:]}"
        return done.stdout

    def python_in(self, netns: str, code: str, *args: str, timeout: float = 60) -> str:
        return self.run_in(netns, sys.executable, "-c", code, *args, timeout=timeout)

    def fetch(self, netns: str, *urls: str) -> list[str]:
        """HTTP status of each GET from inside `netns` (or `error: …`)."""
        out = self.run_in(netns, sys.executable, "-m", "pyztunnel.cluster.fetch", *urls, timeout=30 + 10 * len(urls))
        return out.splitlines()

    # ----- a proxy's endpoints ---------------------------------------------------------------------------------

    def metrics(self, proxy: dict[str, Any], check: bool = True) -> str:
        """GET :15020/metrics of a proxy pod, from its node's netns ("" on failure when not `check`)."""
        node_ns = self.node(proxy["node"])["netns"]
        url = f"http://{proxy['ip']}:15020/metrics"
        return self.run_in(node_ns, sys.executable, "-c", HTTP_GET, url, check=check)

    def config_dump(self, proxy: dict[str, Any]) -> dict[str, Any]:
        """GET 127.0.0.1:15000/config_dump inside the proxy pod."""
        dump: dict[str, Any] = json.loads(
            self.python_in(proxy["netns"], HTTP_GET, "http://127.0.0.1:15000/config_dump")
        )
        return dump

    # ----- logs ---------------------------------------------------------------------------------------------------

    def log_path(self, pod_name: str) -> Path:
        return self.layout.log(pod_name)

    def log_lines(self, pod_name: str) -> list[str]:
        try:
            return self.log_path(pod_name).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_log(
        self, pod_name: str, predicate: Callable[[str], bool], timeout: float, what: str = "a log line"
    ) -> list[str]:
        """Every line of the pod's log that satisfies `predicate`, once there is at least one."""
        lines: list[str] = wait_for(
            f"{what} in {pod_name}'s log",
            lambda: [line for line in self.log_lines(pod_name) if predicate(line)],
            timeout,
        )
        return lines


def access_lines(lines: list[str], **want: str) -> list[dict[str, str]]:
    """`connection complete` access-log lines whose fields include `want` (keys with '_' for '.')."""
    out = []
    for line in lines:
        if "\taccess\t" not in line or log_message(line) != "connection complete":
            continue
        fields = log_fields(line)
        fields["level"] = line.split("\t")[1]
        if all(fields.get(k.replace("__", ".")) == v for k, v in want.items()):
            out.append(fields)
    return out


@contextmanager
def running(name: str, doc: dict[str, Any] | spec.LoadedSpec) -> Iterator[Cluster]:
    """A cluster built from `doc` (the spec document or a loaded spec), always removed afterwards. The name gets
    this process's id as a suffix, so two runs of the suite on one machine (a shared CI host) never collide."""
    name = f"{name}{os.getpid() % 100000}"
    loaded_spec = doc if isinstance(doc, spec.LoadedSpec) else loaded(copy.deepcopy(doc), name)
    started = time.monotonic()
    try:
        state = manage.up(loaded_spec, name)
        print(f"cluster {name} up in {time.monotonic() - started:.1f}s")
        yield Cluster(name, state)
    finally:
        keep_logs(name)
        asyncio.run(manage.down(name))


def keep_logs(name: str) -> None:
    """With PYZTUNNEL_TEST_LOGS set, copy the cluster's logs there before they go with it (CI artifacts)."""
    target = os.environ.get("PYZTUNNEL_TEST_LOGS")
    logs = Layout.of(name).root / "logs"
    if target and logs.is_dir():
        shutil.copytree(logs, Path(target) / f"{name}-{int(time.time())}", dirs_exist_ok=True)

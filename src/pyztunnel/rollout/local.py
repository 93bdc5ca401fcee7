"""`ClusterBackend` over the local cluster's controller API (HTTP/1.1 + JSON on `controller.sock`,
docs/cluster.md "Controller API"). The whole mapping between the API's JSON and the backend's types is here.

The local controller only replaces a proxy that is gone; rolling is the client's (surge.py: new proxy Ready, then
the old one SIGTERMed). Readiness of a proxy is the controller's: it probes `GET <pod ip>:15021/healthz/ready` from
the node netns and publishes `ready`; this backend polls that, so it needs no root of its own — except for the
canary's metrics, scraped from the node netns as the readiness probes are (root). A proxy's revision is its version
(the controller records no other template identity); the template's history is the rollout state's `previous`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from pyztunnel.errors import UserError
from pyztunnel.netns import socket_in_netns
from pyztunnel.rollout import cause
from pyztunnel.rollout.backend import (
    BackendError,
    Node,
    Pod,
    ProxyPod,
    RolloutView,
    StateStore,
    Template,
    TemplateChange,
)
from pyztunnel.rollout.store import FileState
from pyztunnel.rollout.surge import replace_on_node

_log = logging.getLogger("pyztunnel.rollout.local")

DEFAULT_BASE = Path("/run/pyztunnel")
POLL_S = 0.1  # how often the controller's state is re-read while waiting for a change
REPLACEMENT_READY_S = 120.0  # after an eviction, how long the deployment may take to be fully ready again
EXTRA_S = 60.0  # on top of a grace period, for the controller to tear a pod down
METRICS_PORT = 15020
SCRAPE_TIMEOUT_S = 5.0
MAX_METRICS_BYTES = 4 << 20


class ClusterUnavailable(UserError):
    pass


def state_dir(name: str, base: Path | None = None) -> Path:
    """The cluster's state dir: `$PYZTUNNEL_STATE_DIR/<name>`, default `/run/pyztunnel/<name>` (as `cluster up`)."""
    return (base or Path(os.environ.get("PYZTUNNEL_STATE_DIR") or DEFAULT_BASE)) / name


# The mapping from the controller's JSON -------------------------------------------------------------------------------


def _live(record: dict[str, Any]) -> bool:
    return record.get("phase") != "Terminating"


def node_of(record: dict[str, Any]) -> Node:
    return Node(record["name"], schedulable=not record.get("cordoned", False))


def pod_of(record: dict[str, Any]) -> Pod:
    owner = record.get("owner") or {}
    controller = f"{owner['kind']}/{owner['name']}" if owner.get("kind") and owner.get("name") else None
    return Pod(
        record["name"],
        record["node"],
        float(record.get("terminationGracePeriodSeconds", 30)),
        controller,
        namespace=record.get("namespace", "default"),
        uid=record.get("uid", ""),
        terminating=not _live(record),
    )


def proxy_of(record: dict[str, Any], template_version: str) -> ProxyPod:
    version = record.get("version") or ""
    return ProxyPod(
        record["name"],
        record["node"],
        version,
        bool(record.get("ready")),
        revision=version,
        updated=version == template_version,
        restarts=int(record.get("restarts", 0)),
        last_exit=f"exit code {record['lastExitCode']}" if record.get("lastExitCode") is not None else "",
        created=float(record.get("createdAt", 0.0)),
        terminating=not _live(record),
    )


def template_of(daemonset: dict[str, Any]) -> Template:
    strategy = (daemonset.get("updateStrategy") or {}).get("type", "RollingUpdate")
    return Template(
        str(daemonset.get("version", "")),
        strategy,
        int(daemonset.get("terminationGracePeriodSeconds", 30)),
        dict(daemonset),
        str(daemonset.get("version", "")),
    )


class LocalBackend:
    rolls_itself = False

    def __init__(self, name: str = "demo", base: Path | None = None) -> None:
        self.name = name
        self.root = state_dir(name, base)
        self.socket = self.root / "controller.sock"
        self.rollout_state = self.root / "rollout.json"
        self.state: StateStore = FileState(self.rollout_state)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: Any = None, within: float = 30.0) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))
        try:
            async with asyncio.timeout(within):
                async with self._session.request(method, f"http://controller{path}", json=body) as resp:
                    try:
                        answer = await resp.json(content_type=None)
                    except ValueError:
                        answer = {"error": (await resp.text()).strip()}
                    if resp.status >= 400:
                        error = answer.get("error") if isinstance(answer, dict) else None
                        raise BackendError(f"{method} {path}: {error or resp.reason} (HTTP {resp.status})")
                    return answer
        except aiohttp.ClientConnectorError:
            raise ClusterUnavailable(
                f"cluster {self.name!r} is not running (no controller at {self.socket}); "
                f"start it with 'pyztunnel cluster up --name {self.name}'"
            ) from None
        except TimeoutError:
            raise BackendError(f"{method} {path}: no answer from the controller within {within:g}s") from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"{method} {path}: {exc}") from None

    async def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.call("GET", "/v1/state")
        return state

    async def _poll(self, done: Any, within: float, what: str) -> Any:
        """Re-read the state until `done(state)` returns something truthy; BackendError after `within` s."""
        deadline = time.monotonic() + within
        while True:
            result = done(await self.snapshot())
            if result:
                return result
            if time.monotonic() > deadline:
                raise BackendError(f"{what}: not done within {within:g}s")
            await asyncio.sleep(POLL_S)  # polling the controller's state with a deadline

    @staticmethod
    def _version(state: dict[str, Any]) -> str:
        return str((state.get("daemonset") or {}).get("version", ""))

    # ClusterBackend -------------------------------------------------------------------------------------------------

    async def nodes(self) -> list[Node]:
        return [node_of(n) for n in (await self.snapshot())["nodes"]]

    async def cordon(self, node: str) -> None:
        await self.call("POST", f"/v1/nodes/{node}/cordon")

    async def uncordon(self, node: str) -> None:
        await self.call("POST", f"/v1/nodes/{node}/uncordon")

    async def pods_on(self, node: str) -> list[Pod]:
        return [pod_of(p) for p in (await self.snapshot())["pods"] if p["node"] == node]

    async def evict(self, pod: Pod, grace_seconds: int | None = None) -> None:
        """The controller's eviction returns once the pod is gone (it knows no PodDisruptionBudget); then wait until
        its deployment is ready again, as the seeds' procedure waits for the application to be back."""
        await self.call("POST", f"/v1/pods/{pod.name}/evict?wait=1", within=pod.grace_seconds + EXTRA_S)
        if pod.owner_kind != "Deployment":
            return
        deployment = (pod.owner or "").split("/", 1)[1]

        def settled(state: dict[str, Any]) -> str | None:
            for dep in state.get("deployments", []):
                if dep["name"] != deployment:
                    continue
                if dep.get("readyReplicas", 0) >= dep.get("replicas", 0):
                    return "ready"
                live = [p for p in state["pods"] if (p.get("owner") or {}).get("name") == deployment and _live(p)]
                # The controller places a replacement as soon as the old pod is deleted; if there is none, no node
                # can take it (a pod pinned to this cordoned node): it comes back when the node is uncordoned.
                return "unschedulable" if len(live) < dep.get("replicas", 0) else None
            return "gone"  # the deployment is gone: nothing to wait for

        outcome = await self._poll(settled, REPLACEMENT_READY_S, f"replacement of {pod.name} ({deployment}) ready")
        if outcome == "unschedulable":
            _log.info(
                "no node can take the evicted pod's replacement now; it returns when its node is uncordoned",
                extra={"fields": {"pod": pod.name, "deployment": deployment}},
            )

    async def wait_gone(self, pod: Pod, within: float) -> None:
        def gone(state: dict[str, Any]) -> bool:
            return not any(p["name"] == pod.name for p in state["pods"])

        await self._poll(gone, within, f"pod {pod.name} gone")

    async def proxies(self, node: str | None = None) -> list[ProxyPod]:
        state = await self.snapshot()
        version = self._version(state)
        return [proxy_of(p, version) for p in state["proxies"] if node is None or p["node"] == node]

    async def replace_proxy(self, node: str, *, surge: bool, within: float) -> ProxyPod:
        return await replace_on_node(self, node, surge=surge, within=within, describe=self.describe)

    async def describe(self, proxy: ProxyPod) -> str:
        try:
            log = self._log_tail(proxy.name)
        except OSError:
            log = ""
        return cause.describe(proxy.last_exit, proxy.restarts, "", log)

    def _log_tail(self, pod: str, limit: int = 64 << 10) -> str:
        path = self.root / "logs" / f"{pod}.log"
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode("utf-8", "replace")

    async def scrape(self, proxy: ProxyPod) -> str:
        state = await self.snapshot()
        record = next((p for p in state["proxies"] if p["name"] == proxy.name), None)
        node = next((n for n in state["nodes"] if n["name"] == proxy.node), None)
        if record is None or node is None or not record.get("ip"):
            raise BackendError(f"proxy {proxy.name} is gone")
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                return await _http_get_in_netns(node["netns"], record["ip"], METRICS_PORT, "/metrics")
        except PermissionError:
            raise UserError("the canary scrapes proxies from their node's netns: run as root") from None
        except (OSError, TimeoutError, ValueError) as exc:
            raise BackendError(f"GET {record['ip']}:{METRICS_PORT}/metrics: {exc or type(exc).__name__}") from None

    async def template(self) -> Template:
        return template_of((await self.snapshot()).get("daemonset") or {})

    async def set_template(self, change: TemplateChange) -> Template:
        if change.image is not None:
            raise BackendError("--image needs a Kubernetes cluster; the local cluster's proxies take --version")
        current = template_of((await self.snapshot()).get("daemonset") or {})
        update_strategy = dict(current.body.get("updateStrategy") or {})
        if change.strategy is not None:
            update_strategy["type"] = change.strategy
        body: dict[str, Any] = {"updateStrategy": update_strategy}
        if change.version is not None:
            body["version"] = change.version
        if change.grace_seconds is not None:
            body["terminationGracePeriodSeconds"] = change.grace_seconds
        answer = await self.call("PUT", "/v1/daemonset", body)
        return template_of(answer.get("daemonset") or {**current.body, **body})

    async def restore_template(self, template: Template) -> Template:
        body = dict(template.body)
        body["updateStrategy"] = {**(body.get("updateStrategy") or {}), "type": template.strategy}
        # The whole template, not a merge into the current one: env a failed rollout added must go too.
        answer = await self.call("PUT", "/v1/daemonset?replace=1", body)
        return template_of(answer.get("daemonset") or body)

    async def history(self) -> list[Template]:
        return []  # the controller keeps none: the rollout state's `previous` is the history

    def watch_rollout(self) -> AsyncIterator[RolloutView]:
        raise BackendError("the local cluster's DaemonSet does not roll by itself")

    # The client-side DaemonSet's primitives (surge.py) --------------------------------------------------------------

    async def create_proxy(self, node: str) -> ProxyPod:
        state = await self.snapshot()
        version = self._version(state)
        answer = await self.call("POST", "/v1/proxies", {"node": node, "version": version})
        return proxy_of(answer["pod"], version)

    async def delete_proxy(self, name: str) -> None:
        state = await self.snapshot()
        grace = float((state.get("daemonset") or {}).get("terminationGracePeriodSeconds", 30))
        for p in state["proxies"]:
            if p["name"] == name:
                grace = float(p.get("terminationGracePeriodSeconds", grace))
                break
        else:
            return  # already gone
        await self.call("DELETE", f"/v1/proxies/{name}?wait=1", within=grace + EXTRA_S)

    async def wait_proxy_ready(self, name: str, within: float) -> bool:
        def ready(state: dict[str, Any]) -> str | None:
            for p in state["proxies"]:
                if p["name"] == name:
                    if not _live(p):
                        return "gone"
                    return "ready" if p.get("ready") else None
            return "gone"

        try:
            return bool(await self._poll(ready, within, f"proxy {name} ready") == "ready")
        except BackendError:
            return False


async def _http_get_in_netns(netns: str, ip: str, port: int, path: str) -> str:
    """A plain HTTP/1.0 GET from inside a netns (the node's, as the readiness probes); the body as text."""
    loop = asyncio.get_running_loop()
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sock = await loop.run_in_executor(None, socket_in_netns, fd)
    finally:
        os.close(fd)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (ip, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n".encode())
        raw = b""
        while len(raw) <= MAX_METRICS_BYTES:
            chunk = await reader.read(65536)
            if not chunk:
                break
            raw += chunk
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ValueError(f"answered {head.splitlines()[0].decode('latin-1') if head else 'nothing'}")
    return body.decode("utf-8", "replace")

"""`ClusterBackend` over the local cluster's controller API (HTTP/1.1 + JSON on `controller.sock`,
docs/architecture.md "Controller API"). The whole mapping between the API's JSON and the backend's types is here.

Readiness of a proxy is the controller's: it probes `GET http://<proxy pod ip>:15021/healthz/ready` from inside the
node netns and publishes `ready` in `GET /v1/state`; this backend polls that, so it needs no root of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from pyztunnel.errors import UserError
from pyztunnel.rollout.backend import BackendError, Node, Pod, ProxyPod

_log = logging.getLogger("pyztunnel.rollout.local")

DEFAULT_BASE = Path("/run/pyztunnel")
POLL_S = 0.1  # how often the controller's state is re-read while waiting for a change
REPLACEMENT_READY_S = 120.0  # after an eviction, how long the deployment may take to be fully ready again
EXTRA_S = 60.0  # on top of a grace period, for the controller to tear a pod down


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
    deployment = owner.get("name") if owner.get("kind") == "Deployment" else None
    return Pod(record["name"], record["node"], float(record.get("terminationGracePeriodSeconds", 30)), deployment)


def proxy_of(record: dict[str, Any]) -> ProxyPod:
    return ProxyPod(record["name"], record["node"], record.get("version") or "", bool(record.get("ready")))


class LocalBackend:
    def __init__(self, name: str = "demo", base: Path | None = None) -> None:
        self.name = name
        self.socket = state_dir(name, base) / "controller.sock"
        self._session: aiohttp.ClientSession | None = None

    @property
    def rollout_state(self) -> Path:
        return self.socket.parent / "rollout.json"

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

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.call("GET", "/v1/state")
        return state

    async def _poll(self, done: Any, within: float, what: str) -> Any:
        """Re-read the state until `done(state)` returns something truthy; BackendError after `within` s."""
        deadline = time.monotonic() + within
        while True:
            result = done(await self.state())
            if result:
                return result
            if time.monotonic() > deadline:
                raise BackendError(f"{what}: not done within {within:g}s")
            await asyncio.sleep(POLL_S)  # polling the controller's state with a deadline

    # ClusterBackend -------------------------------------------------------------------------------------------------

    async def nodes(self) -> list[Node]:
        return [node_of(n) for n in (await self.state())["nodes"]]

    async def cordon(self, node: str) -> None:
        await self.call("POST", f"/v1/nodes/{node}/cordon")

    async def uncordon(self, node: str) -> None:
        await self.call("POST", f"/v1/nodes/{node}/uncordon")

    async def pods_on(self, node: str) -> list[Pod]:
        return [pod_of(p) for p in (await self.state())["pods"] if p["node"] == node and _live(p)]

    async def evict(self, pod: Pod) -> None:
        await self.call("POST", f"/v1/pods/{pod.name}/evict?wait=1", within=pod.grace_seconds + EXTRA_S)
        if pod.deployment is None:
            return

        def settled(state: dict[str, Any]) -> str | None:
            for dep in state.get("deployments", []):
                if dep["name"] != pod.deployment:
                    continue
                if dep.get("readyReplicas", 0) >= dep.get("replicas", 0):
                    return "ready"
                live = [p for p in state["pods"] if (p.get("owner") or {}).get("name") == pod.deployment and _live(p)]
                # The controller places a replacement as soon as the old pod is deleted; if there is none, no node
                # can take it (a pod pinned to this cordoned node): it comes back when the node is uncordoned.
                return "unschedulable" if len(live) < dep.get("replicas", 0) else None
            return "gone"  # the deployment is gone: nothing to wait for

        outcome = await self._poll(settled, REPLACEMENT_READY_S, f"replacement of {pod.name} ({pod.deployment}) ready")
        if outcome == "unschedulable":
            _log.info(
                "no node can take the evicted pod's replacement now; it returns when its node is uncordoned",
                extra={"fields": {"pod": pod.name, "deployment": pod.deployment}},
            )

    async def proxies(self, node: str) -> list[ProxyPod]:
        return [proxy_of(p) for p in (await self.state())["proxies"] if p["node"] == node and _live(p)]

    async def create_proxy(self, node: str, version: str) -> ProxyPod:
        answer = await self.call("POST", "/v1/proxies", {"node": node, "version": version})
        return proxy_of(answer["pod"])

    async def delete_proxy(self, name: str) -> None:
        state = await self.state()
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

    async def update_daemonset(self, *, version: str, strategy: str, grace_seconds: int | None) -> None:
        current = (await self.state()).get("daemonset") or {}
        update_strategy = dict(current.get("updateStrategy") or {})
        update_strategy["type"] = strategy
        body: dict[str, Any] = {"version": version, "updateStrategy": update_strategy}
        if grace_seconds is not None:
            body["terminationGracePeriodSeconds"] = grace_seconds
        await self.call("PUT", "/v1/daemonset", body)

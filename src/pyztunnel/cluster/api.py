"""The controller API: HTTP/1.1 + JSON on `controller.sock` (docs/architecture.md, Controller API; docs/cluster.md).

An HTTP adapter: it parses and checks requests and renders answers; what a call does is one `ClusterOps` operation,
which the controller implements (this module knows the operations, not the controller). Mutating calls return as soon
as the change is under way (a deleted pod is `Terminating`, its replacement `Pending`); add `?wait=1` to DELETE/evict
to return only once the pod is gone (504 naming the stuck step if its termination overruns its grace period plus the
controller's bounds).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, Protocol

import yaml
from aiohttp import web

from pyztunnel.cluster.objects import Node, Pod, TerminationStuck
from pyztunnel.localsock import listen_unix
from pyztunnel.workloads import local


class ClusterOps(Protocol):
    """What the API can ask of the cluster."""

    def snapshot(self) -> dict[str, Any]: ...

    def pod(self, name: str) -> Pod | None: ...

    def node(self, name: str) -> Node | None: ...

    def has_deployment(self, name: str) -> bool: ...

    def scale(self, deployment: str, replicas: int) -> None: ...

    def cordon(self, node: Node, cordoned: bool) -> None: ...

    def delete(self, pod: Pod, grace: float) -> asyncio.Task[None]:
        """Start the pod's termination (its owner replaces it); the task ends when it is gone."""
        ...

    def termination_limit(self, grace: float) -> float: ...

    def daemonset(self) -> dict[str, Any]:
        """The DaemonSet's whole template."""
        ...

    def create_proxy(self, node: Node, version: str | None) -> Pod: ...

    def update_daemonset(self, patch: dict[str, Any], replace: bool) -> dict[str, Any]:
        """Merge `patch` into the template (or with `replace` make it the whole template): the template after it;
        ValueError naming the field when the update is refused."""
        ...

    async def set_policies(self, policies: list[dict[str, Any]]) -> None:
        """Replace the cluster's L4 policies (validated already); returns once published."""
        ...

    def request_stop(self) -> None: ...


OPS_KEY = web.AppKey("ops", ClusterOps)


def _ops(request: web.Request) -> ClusterOps:
    return request.app[OPS_KEY]


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) in ("1", "true")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "body is not JSON"}', content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
    return body


def _pod(ops: ClusterOps, name: str) -> Pod:
    pod = ops.pod(name)
    if pod is None:
        raise web.HTTPNotFound(text=f'{{"error": "no pod {name}"}}', content_type="application/json")
    return pod


def _node(ops: ClusterOps, name: str) -> Node:
    node = ops.node(name)
    if node is None:
        raise web.HTTPNotFound(text=f'{{"error": "no node {name}"}}', content_type="application/json")
    return node


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(_ops(request).snapshot())


async def scale(request: web.Request) -> web.Response:
    ops = _ops(request)
    name = request.match_info["name"]
    if not ops.has_deployment(name):
        return _error(404, f"no deployment {name}")
    replicas = (await _body(request)).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 1000:
        return _error(400, "replicas must be an integer from 0 to 1000")
    ops.scale(name, replicas)
    return web.json_response({"ok": True, "deployment": name, "replicas": replicas})


async def _delete(request: web.Request, pod: Pod, grace: float) -> web.Response:
    ops = _ops(request)
    task = ops.delete(pod, grace)
    if _flag(request, "wait"):
        # Bounded: a termination step that hangs is answered with what it is stuck in, never with silence.
        limit = ops.termination_limit(grace)
        try:
            async with asyncio.timeout(limit):
                await asyncio.shield(task)
        except TimeoutError:
            return _error(504, f"pod {pod.name} is not gone after {limit:g}s: {pod.where()}")
        except TerminationStuck as exc:
            return _error(504, str(exc))
        except Exception as exc:
            return _error(500, f"deleting pod {pod.name} failed: {type(exc).__name__}: {exc}")
    return web.json_response({"ok": True, "pod": pod.name, "terminationGracePeriodSeconds": grace})


async def delete_pod(request: web.Request) -> web.Response:
    pod = _pod(_ops(request), request.match_info["name"])
    grace = request.query.get("grace")
    if grace is None:
        return await _delete(request, pod, pod.grace)
    try:
        seconds = float(grace)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86400:
        return _error(400, f"grace must be a number of seconds from 0 to 86400, not {grace!r}")
    return await _delete(request, pod, seconds)


async def evict(request: web.Request) -> web.Response:
    pod = _pod(_ops(request), request.match_info["name"])
    return await _delete(request, pod, pod.grace)


async def cordon(request: web.Request) -> web.Response:
    ops = _ops(request)
    node = _node(ops, request.match_info["name"])
    ops.cordon(node, request.match_info["action"] == "cordon")
    return web.json_response({"ok": True, "node": node.name, "cordoned": node.cordoned})


async def create_proxy(request: web.Request) -> web.Response:
    ops = _ops(request)
    body = await _body(request)
    node = _node(ops, str(body.get("node")))
    version = body.get("version")
    if version is not None and (not isinstance(version, str) or not version):
        return _error(400, "version must be a non-empty string")
    if not ops.daemonset()["enabled"]:
        return _error(409, "the proxy DaemonSet is disabled in this cluster's spec")
    pod = ops.create_proxy(node, version)
    return web.json_response({"ok": True, "pod": pod.record()})


async def delete_proxy(request: web.Request) -> web.Response:
    pod = _pod(_ops(request), request.match_info["name"])
    if not pod.is_proxy:
        return _error(400, f"pod {pod.name} is not a proxy pod")
    return await _delete(request, pod, pod.grace)


async def put_daemonset(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        template = _ops(request).update_daemonset(body, replace=_flag(request, "replace"))
    except ValueError as exc:
        return _error(400, str(exc))
    return web.json_response({"ok": True, "daemonset": template})


async def get_daemonset(request: web.Request) -> web.Response:
    return web.json_response({"daemonset": _ops(request).daemonset()})


async def put_policies(request: web.Request) -> web.Response:
    """Replace the cluster's L4 policies (`{"policies": [...]}`, ztunnel's LOCAL_XDS format, validated as in the
    spec); they reach every proxy over XDS (and workloads.yaml)."""
    body = await _body(request)
    policies = body.get("policies")
    if not isinstance(policies, list):
        return _error(400, 'body must be {"policies": [...]}')
    for i, policy in enumerate(policies):
        try:
            local.parse(yaml.safe_dump({"policies": [policy]}), f"policies[{i}]")
        except (local.ConfigError, yaml.YAMLError) as exc:
            return _error(400, str(exc))
    await _ops(request).set_policies(policies)
    return web.json_response({"ok": True, "policies": len(policies)})


async def shutdown(request: web.Request) -> web.Response:
    _ops(request).request_stop()
    return web.json_response({"ok": True})


def make_app(ops: ClusterOps) -> web.Application:
    app = web.Application()
    app[OPS_KEY] = ops
    app.add_routes(
        [
            web.get("/v1/state", get_state),
            web.post("/v1/deployments/{name}/scale", scale),
            web.delete("/v1/pods/{name}", delete_pod),
            web.post("/v1/pods/{name}/evict", evict),
            web.post("/v1/nodes/{name}/{action:cordon|uncordon}", cordon),
            web.post("/v1/proxies", create_proxy),
            web.delete("/v1/proxies/{name}", delete_proxy),
            web.get("/v1/daemonset", get_daemonset),
            web.put("/v1/daemonset", put_daemonset),
            web.put("/v1/policies", put_policies),
            web.post("/v1/shutdown", shutdown),
        ]
    )
    return app


async def serve(ops: ClusterOps, path: Path) -> web.AppRunner:
    runner = web.AppRunner(make_app(ops), access_log=None)
    await runner.setup()
    await web.SockSite(runner, listen_unix(path, socket.SOCK_STREAM, backlog=128)).start()
    return runner

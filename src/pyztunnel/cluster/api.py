"""The controller API: HTTP/1.1 + JSON on `controller.sock` (docs/architecture.md, Controller API; docs/cluster.md).

Mutating calls return as soon as the change is under way (a deleted pod is `Terminating`, its replacement `Pending`);
add `?wait=1` to DELETE/evict to return only once the pod is gone (504 naming the stuck step if its termination
overruns its grace period plus the controller's bounds).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from pyztunnel.cluster.controller import TerminationStuck
from pyztunnel.cluster.spec import ProxySpec
from pyztunnel.localsock import listen_unix

if TYPE_CHECKING:
    from pyztunnel.cluster.controller import Controller, Node, Pod

CONTROLLER_KEY = web.AppKey("controller", object)


def _ctl(request: web.Request) -> Controller:
    return request.app[CONTROLLER_KEY]  # type: ignore[return-value]


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


def _pod(ctl: Controller, name: str) -> Pod:
    pod = ctl.pods.get(name)
    if pod is None:
        raise web.HTTPNotFound(text=f'{{"error": "no pod {name}"}}', content_type="application/json")
    return pod


def _node(ctl: Controller, name: str) -> Node:
    node = ctl.nodes.get(name)
    if node is None:
        raise web.HTTPNotFound(text=f'{{"error": "no node {name}"}}', content_type="application/json")
    return node


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(_ctl(request).snapshot())


async def scale(request: web.Request) -> web.Response:
    ctl = _ctl(request)
    name = request.match_info["name"]
    if name not in ctl.replicas:
        return _error(404, f"no deployment {name}")
    replicas = (await _body(request)).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 1000:
        return _error(400, "replicas must be an integer from 0 to 1000")
    ctl.replicas[name] = replicas
    ctl.reconcile()
    ctl.changed()
    return web.json_response({"ok": True, "deployment": name, "replicas": replicas})


async def _delete(request: web.Request, pod: Pod, grace: float) -> web.Response:
    ctl = _ctl(request)
    task = ctl.start_delete(pod, grace)
    if request.query.get("wait") in ("1", "true"):
        # Bounded: a termination step that hangs is answered with what it is stuck in, never with silence.
        limit = ctl.termination_limit(grace)
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
    pod = _pod(_ctl(request), request.match_info["name"])
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
    pod = _pod(_ctl(request), request.match_info["name"])
    return await _delete(request, pod, pod.grace)


async def cordon(request: web.Request) -> web.Response:
    ctl = _ctl(request)
    node = _node(ctl, request.match_info["name"])
    node.cordoned = request.match_info["action"] == "cordon"
    ctl.changed()
    ctl.reconcile()  # uncordoning may let unscheduled pods in
    return web.json_response({"ok": True, "node": node.name, "cordoned": node.cordoned})


async def create_proxy(request: web.Request) -> web.Response:
    ctl = _ctl(request)
    body = await _body(request)
    node = _node(ctl, str(body.get("node")))
    version = body.get("version", ctl.daemonset.version)
    if not isinstance(version, str) or not version:
        return _error(400, "version must be a non-empty string")
    if not ctl.daemonset.enabled:
        return _error(409, "the proxy DaemonSet is disabled in this cluster's spec")
    pod = ctl.create_proxy(node, version)
    return web.json_response({"ok": True, "pod": pod.record()})


async def delete_proxy(request: web.Request) -> web.Response:
    ctl = _ctl(request)
    pod = _pod(ctl, request.match_info["name"])
    if pod.owner_kind != "DaemonSet":
        return _error(400, f"pod {pod.name} is not a proxy pod")
    return await _delete(request, pod, pod.grace)


async def put_daemonset(request: web.Request) -> web.Response:
    ctl = _ctl(request)
    body = await _body(request)
    merged = {**ctl.daemonset.model_dump(), **body}
    try:
        ctl.daemonset = ProxySpec.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _error(400, f"{where}: {first['msg']}")
    ctl.changed()
    return web.json_response({"ok": True, "daemonset": ctl.daemonset.model_dump()})


async def shutdown(request: web.Request) -> web.Response:
    _ctl(request).stop_requested.set()
    return web.json_response({"ok": True})


def make_app(ctl: Controller) -> web.Application:
    app = web.Application()
    app[CONTROLLER_KEY] = ctl
    app.add_routes(
        [
            web.get("/v1/state", get_state),
            web.post("/v1/deployments/{name}/scale", scale),
            web.delete("/v1/pods/{name}", delete_pod),
            web.post("/v1/pods/{name}/evict", evict),
            web.post("/v1/nodes/{name}/{action:cordon|uncordon}", cordon),
            web.post("/v1/proxies", create_proxy),
            web.delete("/v1/proxies/{name}", delete_proxy),
            web.put("/v1/daemonset", put_daemonset),
            web.post("/v1/shutdown", shutdown),
        ]
    )
    return app


async def serve(ctl: Controller, path: Path) -> web.AppRunner:
    runner = web.AppRunner(make_app(ctl), access_log=None)
    await runner.setup()
    await web.SockSite(runner, listen_unix(path, socket.SOCK_STREAM, backlog=128)).start()
    return runner

"""The controller API (docs/architecture.md), served from a FakeCluster on a unix socket in a thread of its own, in
the JSON shapes the cluster's controller publishes. LocalBackend and `pyztunnel upgrade` are tested against it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from pyztunnel.rollout.local import template_of
from pyztunnel.rollout.testing import FakeCluster


def snapshot(fake: FakeCluster) -> dict[str, Any]:
    def proxy(p: Any) -> dict[str, Any]:
        return {
            "name": p.name,
            "node": p.node,
            "owner": {"kind": "DaemonSet", "name": "ztunnel"},
            "phase": "Running",
            "ready": p.ready,
            "version": p.version,
            "terminationGracePeriodSeconds": fake.current.grace_seconds,
        }

    deployments: dict[str, int] = {}
    for pod in fake.pods.values():
        name = (pod.owner or "").split("/")[-1]
        deployments[name] = deployments.get(name, 0) + 1
    return {
        "name": "t",
        "nodes": [{"name": n, "cordoned": not ok} for n, ok in fake.schedulable.items()],
        "pods": [
            {
                "name": p.name,
                "node": p.node,
                "owner": {"kind": "Deployment", "name": (p.owner or "").split("/")[-1]},
                "phase": "Running",
                "ready": True,
                "terminationGracePeriodSeconds": p.grace_seconds,
            }
            for p in fake.pods.values()
        ],
        "deployments": [{"name": d, "replicas": n, "readyReplicas": n} for d, n in deployments.items()],
        "proxies": [proxy(p) for p in fake.proxy_pods.values()],
        "daemonset": daemonset(fake),
    }


def daemonset(fake: FakeCluster) -> dict[str, Any]:
    t = fake.current
    return {
        **t.body,
        "version": t.version,
        "terminationGracePeriodSeconds": t.grace_seconds,
        "updateStrategy": {**t.body.get("updateStrategy", {}), "type": t.strategy},
    }


def app_for(fake: FakeCluster) -> web.Application:
    def mark_ready() -> None:
        # The controller probes 15021 itself; here a proxy is ready at once unless its version is broken.
        for p in fake.proxy_pods.values():
            p.ready = p.version not in fake.broken_versions

    async def state(request: web.Request) -> web.Response:
        return web.json_response(snapshot(fake))

    async def node_action(request: web.Request) -> web.Response:
        node = request.match_info["name"]
        if node not in fake.schedulable:
            return web.json_response({"error": f"no node {node}"}, status=404)
        await (fake.cordon(node) if request.match_info["action"] == "cordon" else fake.uncordon(node))
        return web.json_response({"ok": True})

    async def evict(request: web.Request) -> web.Response:
        pod = fake.pods.get(request.match_info["name"])
        if pod is None:
            return web.json_response({"error": "no pod"}, status=404)
        await fake.evict(pod)
        return web.json_response({"ok": True})

    async def create_proxy(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["version"] == fake.current.version
        created = await fake.create_proxy(body["node"])
        mark_ready()
        p = fake.proxy_pods[created.name]
        return web.json_response(
            {"ok": True, "pod": {"name": p.name, "node": p.node, "version": p.version, "ready": p.ready}}
        )

    async def delete_proxy(request: web.Request) -> web.Response:
        await fake.delete_proxy(request.match_info["name"])
        mark_ready()
        return web.json_response({"ok": True})

    async def put_daemonset(request: web.Request) -> web.Response:
        body = await request.json()
        merged = {**daemonset(fake), **body}  # as the controller: top-level fields replaced
        fake.current = template_of(merged)
        return web.json_response({"ok": True, "daemonset": daemonset(fake)})

    app = web.Application()
    app.add_routes(
        [
            web.get("/v1/state", state),
            web.post("/v1/nodes/{name}/{action:cordon|uncordon}", node_action),
            web.post("/v1/pods/{name}/evict", evict),
            web.post("/v1/proxies", create_proxy),
            web.delete("/v1/proxies/{name}", delete_proxy),
            web.put("/v1/daemonset", put_daemonset),
        ]
    )
    return app


@contextmanager
def fake_controller(fake: FakeCluster, socket_path: Path) -> Iterator[FakeCluster]:
    """Serve the API for `fake` at `socket_path` from a thread with its own event loop."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner = web.AppRunner(app_for(fake), access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.UnixSite(runner, str(socket_path)).start()
        started.set()

    def run() -> None:
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="fake-controller", daemon=True)
    thread.start()
    try:
        assert started.wait(10), "fake controller did not start"
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

"""The agent API on a unix socket (docs/architecture.md "Agent API"); the cluster controller plays the CNI plugin.

POST /v1/pods answers 200 only when the pod is plumbed and, for a mesh pod, the newest proxy ACKed its Add; 503 when
no proxy is connected or the proxy refused (the caller retries, as the CNI plugin is retried); 400 for bad input.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from pyztunnel.agent.plumbing import PlumbingError
from pyztunnel.agent.pods import PodSpec
from pyztunnel.agent.rules import RulesError
from pyztunnel.agent.service import Agent, BadPod, NoConnection, ProxyRefused
from pyztunnel.localsock import listen_unix

log = logging.getLogger("pyztunnel.agent.api")


def _json(status: int, doc: dict[str, Any]) -> web.Response:
    return web.json_response(doc, status=status)


def make_app(agent: Agent) -> web.Application:
    async def post_pod(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json(400, {"error": "the body must be JSON"})
        try:
            spec = PodSpec.from_json(body)
        except BadPod as exc:
            return _json(400, {"error": str(exc)})
        try:
            await agent.add_pod(spec)
        except BadPod as exc:
            return _json(400, {"error": str(exc)})
        except NoConnection as exc:
            return _json(503, {"error": str(exc)})
        except ProxyRefused as exc:
            return _json(503, {"error": str(exc)})
        except (PlumbingError, RulesError, OSError) as exc:
            log.error("pod plumbing failed", extra={"fields": {"uid": spec.uid, "error": str(exc)}})
            return _json(500, {"error": f"plumbing failed: {exc}"})
        except Exception as exc:  # a netlink error or a bug: still one JSON line for the caller, the trace in our log
            log.exception("pod add failed", extra={"fields": {"uid": spec.uid}})
            return _json(500, {"error": f"pod add failed: {exc}"})
        return _json(200, {"ok": True})

    async def delete_pod(request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        try:
            known = await agent.delete_pod(uid)
        except Exception as exc:
            log.exception("pod delete failed", extra={"fields": {"uid": uid}})
            return _json(500, {"error": f"pod delete failed: {exc}"})
        return _json(200, {"ok": True, "known": known})

    async def list_pods(request: web.Request) -> web.Response:
        return _json(200, {"pods": [p.spec.to_json() for p in agent.pods.values()]})

    async def status(request: web.Request) -> web.Response:
        return _json(
            200,
            {"node": agent.settings.node_name, "pods": len(agent.pods), "connections": agent.zds.connections},
        )

    app = web.Application()
    app.router.add_post("/v1/pods", post_pod)
    app.router.add_delete("/v1/pods/{uid}", delete_pod)
    app.router.add_get("/v1/pods", list_pods)
    app.router.add_get("/v1/status", status)
    return app


class ApiServer:
    def __init__(self, agent: Agent, path: Path) -> None:
        self.path = path
        self._runner = web.AppRunner(make_app(agent), access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, listen_unix(self.path, socket.SOCK_STREAM, backlog=128)).start()

    async def close(self) -> None:
        await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

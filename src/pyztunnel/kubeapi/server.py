"""The stand-in's HTTP API: the Kubernetes REST paths, JSON, for the verbs kubectl and `pyztunnel upgrade` use.

Served: legacy discovery; get, list (label and field selectors), watch (chunked JSON lines; `resourceVersion`,
`allowWatchBookmarks`, `sendInitialEvents=true` with its closing BOOKMARK, `timeoutSeconds`), create, replace (with
optimistic concurrency), patch (merge, strategic merge for the map and keyed-list cases, JSON patch), delete (with
grace and UID precondition), `pods/eviction` (PDB → 429), `pods/log`, `pods/NAME:PORT/proxy/PATH` (the simulated
container's metrics), `*/status`; `meta.k8s.io/v1` Tables for `kubectl get`; bearer tokens with allow rules (403 as
the API server words it). Not served: aggregated discovery (clients fall back), OpenAPI, exec, server-side apply.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
from typing import Any

from aiohttp import web

from pyztunnel.kubeapi import patch as patching
from pyztunnel.kubeapi import tables
from pyztunnel.kubeapi.daemonset import terminating
from pyztunnel.kubeapi.errors import ApiError, not_found
from pyztunnel.kubeapi.selectors import field_matcher, label_matcher, selector_matcher
from pyztunnel.kubeapi.simulation import Simulation
from pyztunnel.kubeapi.store import BY_PLURAL, Kind, Store, now_rfc3339

MAX_BODY = 4 << 20
BOOKMARK_ANNOTATION = "k8s.io/initial-events-end"


@dataclasses.dataclass(frozen=True)
class Rule:
    verbs: frozenset[str]
    resources: frozenset[str]  # "daemonsets", "pods/eviction", "*"

    def allows(self, verb: str, resource: str) -> bool:
        return ("*" in self.verbs or verb in self.verbs) and ("*" in self.resources or resource in self.resources)


@dataclasses.dataclass
class Access:
    """Bearer token → user → rules. No tokens: everyone may do everything (as an admin kubeconfig)."""

    tokens: dict[str, str] = dataclasses.field(default_factory=dict)
    rules: dict[str, list[Rule]] = dataclasses.field(default_factory=dict)

    def user(self, request: web.Request) -> str:
        if not self.tokens:
            return "admin"
        header = request.headers.get("Authorization", "")
        user = self.tokens.get(header.removeprefix("Bearer ").strip()) if header.startswith("Bearer ") else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def check(self, user: str, verb: str, kind: Kind, sub: str, name: str, ns: str | None) -> None:
        if not self.tokens:
            return
        resource = f"{kind.plural}/{sub}" if sub else kind.plural
        if any(rule.allows(verb, resource) for rule in self.rules.get(user, [])):
            return
        what = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
        subject = f'{what} "{name}"' if name else what
        where = f' in the namespace "{ns}"' if ns else ""
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group '
            f'"{kind.group}"{where}',
        )


class ApiServer:
    def __init__(self, store: Store, sim: Simulation, access: Access | None = None) -> None:
        self.store, self.sim = store, sim
        self.access = access or Access()
        self.url = ""
        self.evictions = {"allowed": 0, "refused": 0}  # for tests: what the PDBs did

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/version", self.version),
                web.get("/healthz", self.ok),
                web.get("/readyz", self.ok),
                web.get("/api", self.api),
                web.get("/apis", self.apis),
                web.route("*", "/api/v1", self.discovery),
                web.route("*", "/apis/{group}/{gv}", self.discovery),
                web.route("*", "/api/v1/{rest:.+}", self.resource),
                web.route("*", "/apis/{group}/{gv}/{rest:.+}", self.resource),
            ]
        )
        return app

    # Discovery ------------------------------------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        return _json_response(
            {"major": "1", "minor": "32", "gitVersion": "v1.32.0-pyztunnel-stand-in", "platform": "linux/amd64"}
        )

    async def ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def api(self, request: web.Request) -> web.Response:
        return _json_response(tables.api_versions(request.host))

    async def apis(self, request: web.Request) -> web.Response:
        return _json_response(tables.group_list())

    async def discovery(self, request: web.Request) -> web.Response:
        group = request.match_info.get("group", "")
        doc = tables.resource_list(group, request.match_info.get("gv", "v1"))
        if doc is None:
            return _status(ApiError(404, "NotFound", "the server could not find the requested resource"))
        return _json_response(doc)

    # Resources ------------------------------------------------------------------------------------------------

    async def resource(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._resource(request)
        except ApiError as exc:
            return _status(exc)

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        group = request.match_info.get("group", "")
        version = request.match_info.get("gv", "v1")
        segs = request.match_info["rest"].split("/")
        ns: str | None = None
        if segs[0] == "namespaces" and len(segs) >= 3:
            ns, segs = segs[1], segs[2:]
        plural, name = segs[0], segs[1] if len(segs) > 1 else ""
        sub, rest = (segs[2], "/".join(segs[3:])) if len(segs) > 2 else ("", "")
        kind = BY_PLURAL.get(plural)
        if kind is None or kind.group != group or kind.version != version:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if ns is not None and not kind.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        port = ""
        if sub == "proxy" and ":" in name:
            name, port = name.split(":", 1)
        method = request.method
        watch = request.query.get("watch") in ("true", "1")
        verb = {
            "GET": "watch" if watch else ("get" if name else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method, "")
        if sub in ("log", "proxy"):
            verb = "get"
        user = self.access.user(request)
        self.access.check(user, verb, kind, sub, name, ns)
        if sub == "eviction" and method == "POST":
            return await self.evict(request, ns or "default", name)
        if sub == "log" and method == "GET":
            return self.log(request, ns or "default", name)
        if sub == "proxy" and method == "GET":
            return self.proxy(ns or "default", name, port, rest)
        if sub not in ("", "status"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and watch:
            return await self.watch(request, kind, ns)
        if method == "GET" and not name:
            return self.list(request, kind, ns)
        if method == "GET":
            return self._json(request, kind, [self.store.get(plural, ns, name)], single=True)
        if method == "POST" and not name:
            body = await _body(request)
            return _json_response(self.store.create(plural, ns, body), status=201)
        if method == "PUT" and name:
            body = await _body(request)
            return _json_response(self.store.replace(plural, ns, name, body, status=sub == "status"))
        if method == "PATCH" and name:
            body = await _body(request)  # before reading the object: nothing may change it in between
            current = self.store.get(plural, ns, name)
            patched = patching.apply(request.headers.get("Content-Type", ""), current, body)
            patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            return _json_response(self.store.replace(plural, ns, name, patched, status=sub == "status"))
        if method == "DELETE" and name:
            options = await _body(request, optional=True)
            grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
            uid = (options.get("preconditions") or {}).get("uid")
            return _json_response(self.store.delete(plural, ns, name, None if grace is None else int(grace), uid))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _json(
        self, request: web.Request, kind: Kind, objects: list[dict[str, Any]], single: bool = False
    ) -> web.Response:
        if "as=Table" in request.headers.get("Accept", ""):
            return _json_response(tables.table(kind, objects, str(self.store.rv)))
        if single:
            return _json_response(objects[0])
        return _json_response(
            {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": objects,
            }
        )

    def _matching(self, request: web.Request, kind: Kind) -> Any:
        labels = label_matcher(request.query.get("labelSelector"))
        fields = field_matcher(request.query.get("fieldSelector"), kind.plural)
        return lambda obj: labels(obj) and fields(obj)

    def list(self, request: web.Request, kind: Kind, ns: str | None) -> web.Response:
        match = self._matching(request, kind)
        return self._json(request, kind, [o for o in self.store.list(kind.plural, ns) if match(o)])

    async def watch(self, request: web.Request, kind: Kind, ns: str | None) -> web.StreamResponse:
        match = self._matching(request, kind)
        q = request.query
        initial_events = q.get("sendInitialEvents") == "true"
        if initial_events and q.get("resourceVersionMatch") != "NotOlderThan":
            raise ApiError(422, "Invalid", "sendInitialEvents requires resourceVersionMatch=NotOlderThan")
        since = (
            int(q["resourceVersion"])
            if q.get("resourceVersion") not in (None, "", "0") and not initial_events
            else None
        )
        initial = [o for o in self.store.list(kind.plural, ns) if match(o)] if initial_events else []
        subscription = self.store.subscribe(kind.plural, since)  # registered before anything is awaited
        try:
            return await self._stream(request, kind, ns, match, initial, initial_events, subscription)
        finally:
            subscription.close()

    async def _stream(
        self,
        request: web.Request,
        kind: Kind,
        ns: str | None,
        match: Any,
        initial: builtins.list[dict[str, Any]],
        initial_events: bool,
        subscription: Any,
    ) -> web.StreamResponse:
        q = request.query
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for obj in initial:
                await response.write(_line("ADDED", obj))
            if initial_events:
                mark = {
                    "kind": kind.kind,
                    "apiVersion": kind.api_version,
                    "metadata": {"resourceVersion": str(self.store.rv), "annotations": {BOOKMARK_ANNOTATION: "true"}},
                }
                await response.write(_line("BOOKMARK", mark))
            try:
                async with asyncio.timeout(float(q.get("timeoutSeconds", 1800))):
                    async for event in subscription.events():
                        obj_ns = event.obj["metadata"].get("namespace")
                        if (ns is None or obj_ns == ns) and match(event.obj):
                            await response.write(_line(event.type, event.obj))
            except TimeoutError:
                pass
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away: the watch ends
        return response

    # Subresources ---------------------------------------------------------------------------------------------

    async def evict(self, request: web.Request, ns: str, name: str) -> web.Response:
        body = await _body(request, optional=True)
        pod = self.store.get("pods", ns, name)
        options = body.get("deleteOptions") or {}
        grace = options.get("gracePeriodSeconds")
        if not terminating(pod):
            pdbs = [
                p
                for p in self.store.list("poddisruptionbudgets", ns)
                if selector_matcher(p["spec"].get("selector"))(pod)
            ]
            if len(pdbs) > 1:
                raise ApiError(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                )
            if pdbs:
                pdb = pdbs[0]
                status = pdb.get("status") or {}
                if int(status.get("disruptionsAllowed", 0)) <= 0:
                    self.evictions["refused"] += 1
                    raise ApiError(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        {
                            "causes": [
                                {
                                    "reason": "DisruptionBudget",
                                    "message": f"The disruption budget {pdb['metadata']['name']} needs {status.get('desiredHealthy', 0)} "
                                    f"healthy pods and has {status.get('currentHealthy', 0)} currently",
                                }
                            ]
                        },
                    )
                status["disruptionsAllowed"] = int(status["disruptionsAllowed"]) - 1
                status.setdefault("disruptedPods", {})[name] = now_rfc3339()
                pdb["status"] = status
                self.store.replace("poddisruptionbudgets", ns, pdb["metadata"]["name"], pdb, status=True)
        self.store.delete("pods", ns, name, None if grace is None else int(grace))
        self.evictions["allowed"] += 1
        return _json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}, status=201)

    def _pod_or_404(self, ns: str, name: str) -> dict[str, Any]:
        pod = self.store.find("pods", ns, name)
        if pod is None:
            raise not_found("pods", name)
        return pod

    def log(self, request: web.Request, ns: str, name: str) -> web.Response:
        pod = self._pod_or_404(ns, name)
        if (pod.get("status") or {}).get("phase") != "Running":
            container = ((pod.get("spec") or {}).get("containers") or [{"name": "?"}])[0]["name"]
            raise ApiError(
                400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
            )
        lines = self.sim.nodes.logs.get(pod["metadata"]["uid"], [])
        tail = request.query.get("tailLines")
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) > 0 else []
        return web.Response(text="".join(line + "\n" for line in lines), content_type="text/plain")

    def proxy(self, ns: str, name: str, port: str, path: str) -> web.Response:
        pod = self._pod_or_404(ns, name)
        ip = (pod.get("status") or {}).get("podIP")
        if port == "15020" and path == "metrics" and ip and not terminating(pod):
            return web.Response(text=self.sim.nodes.metrics(pod), content_type="text/plain")
        raise ApiError(
            503,
            "ServiceUnavailable",
            f"error trying to reach service: dial tcp {ip or '<none>'}:{port or 80}: connect: connection refused",
        )


def _json_response(doc: Any, status: int = 200) -> web.Response:
    # Exactly "application/json", as the API server sends it (clients, lightkube among them, compare it as is).
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()


def _status(exc: ApiError) -> web.Response:
    return _json_response(exc.status(), status=exc.code)


async def _body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw and optional:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "BadRequest", "the request body is not JSON") from None
    if not isinstance(body, dict | list):
        raise ApiError(400, "BadRequest", "the request body must be an object")
    return body  # type: ignore[return-value]

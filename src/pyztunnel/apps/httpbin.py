"""`pyztunnel httpbin`: an httpbin-style HTTP server, the backend of the demo and the experiment.

The endpoints that load tests and checks use, answering as httpbin.org does: `/status/{codes}`, `/delay/{s}`,
`/bytes/{n}`, `/stream/{n}`, `/drip`, `/get`, `/headers`, `/ip`, `/post`, `/anything`, plus `/healthz`. Sizes and delays are
bounded so one request cannot exhaust the pod. Served by observe.servers.HttpServer, so it drains like the proxy's
own servers: on SIGTERM it stops accepting, lets in-flight requests finish (up to --grace), then exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from aiohttp import web

from pyztunnel import settings
from pyztunnel.aio import cancel_and_wait, install_uvloop, spawn
from pyztunnel.apps._lifecycle import Shutdown, announce, bind
from pyztunnel.observe.servers import HttpServer
from pyztunnel.settings import Duration, setting

MAX_DELAY = 10.0  # seconds, as httpbin
MAX_BYTES = 16 * 1024 * 1024
MAX_STREAM = 100  # lines, as httpbin
MAX_BODY = 64 * 1024 * 1024
BACKLOG = 4096  # load tests open connections in bursts
REDIRECT_CODES = frozenset({301, 302, 303, 305, 307})

_log = logging.getLogger("pyztunnel.apps.httpbin")

TEAPOT = """
    I'm a teapot (RFC 2324): short and stout.
    Here is my handle, here is my spout.
"""


@settings.group("httpbin")
@dataclass(frozen=True)
class HttpbinSettings:
    host: str = setting("0.0.0.0", "Address to listen on.")
    port: int = setting(8080, "TCP port to listen on (0: any free port).", ge=0, le=65535)
    grace: Duration = setting(
        Duration(30.0), "After SIGTERM, how long in-flight requests may run before they are cut.", ge=0
    )
    access_log: bool = setting(False, "Log every request to stderr (off by default: it costs throughput).")


# Request descriptions, as httpbin shapes them.


def _headers(request: web.Request) -> dict[str, str]:
    # httpbin shows header names in Title-Case; repeated headers are joined with commas.
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = "-".join(part.capitalize() for part in name.split("-"))
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _args(request: web.Request) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {}
    for key in request.query:
        values = request.query.getall(key)
        out[key] = values[0] if len(values) == 1 else list(values)
    return out


def _origin(request: web.Request) -> str:
    return request.remote or ""


def _describe(request: web.Request, *keys: str) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "args": _args(request),
        "headers": _headers(request),
        "origin": _origin(request),
        "url": str(request.url),
    }
    return {k: parts[k] for k in keys}


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc, indent=2) + "\n", content_type="application/json")


async def _with_body(request: web.Request) -> dict[str, Any]:
    """httpbin's description of a request with a body: args, data, files, form, headers, json, origin, url."""
    doc = _describe(request, "args", "headers", "origin", "url")
    body = await request.read()
    form: dict[str, str | list[str]] = {}
    data = ""
    parsed: Any = None
    if request.content_type == "application/x-www-form-urlencoded":
        posted = await request.post()
        for key in posted:
            values = [str(v) for v in posted.getall(key)]
            form[key] = values[0] if len(values) == 1 else values
    else:
        data = body.decode("utf-8", errors="replace")
        if request.content_type == "application/json" or data[:1] in ("{", "["):
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
    doc.update({"data": data, "files": {}, "form": form, "json": parsed})
    return dict(sorted(doc.items()))


# Handlers.


async def index(_request: web.Request) -> web.StreamResponse:
    names = "/status/{codes} /delay/{s} /bytes/{n} /stream/{n} /drip /get /headers /ip /post /anything /healthz"
    return web.Response(text="pyztunnel httpbin: " + names + "\n")


async def healthz(_request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def get(request: web.Request) -> web.StreamResponse:
    return _json(_describe(request, "args", "headers", "origin", "url"))


async def headers(request: web.Request) -> web.StreamResponse:
    return _json(_describe(request, "headers"))


async def ip(request: web.Request) -> web.StreamResponse:
    return _json(_describe(request, "origin"))


async def post(request: web.Request) -> web.StreamResponse:
    return _json(await _with_body(request))


async def anything(request: web.Request) -> web.StreamResponse:
    doc = await _with_body(request)
    doc["method"] = request.method
    return _json(dict(sorted(doc.items())))


def choose_status(spec: str, rng: random.Random) -> int | None:
    """`200`, `200,500` (uniform) or `200:0.9,500:0.1` (weighted), as httpbin; None when malformed."""
    codes: list[int] = []
    weights: list[float] = []
    try:
        for part in spec.split(","):
            code, _, weight = part.partition(":")
            codes.append(int(code))
            weights.append(float(weight) if weight else 1.0)
    except ValueError:
        return None
    if not codes or any(not 100 <= c <= 599 for c in codes) or sum(weights) <= 0:
        return None
    return codes[0] if len(codes) == 1 else rng.choices(codes, weights)[0]


async def status(request: web.Request) -> web.StreamResponse:
    code = choose_status(request.match_info["codes"], random.Random())
    if code is None:
        return web.Response(status=400, text="Invalid status code\n")
    if code == 418:
        return web.Response(status=418, text=TEAPOT, headers={"x-more-info": "http://tools.ietf.org/html/rfc2324"})
    if code in REDIRECT_CODES:
        return web.Response(status=code, headers={"Location": "/redirect/1"})
    return web.Response(status=code)


async def delay(request: web.Request) -> web.StreamResponse:
    try:
        seconds = min(max(float(request.match_info["seconds"]), 0.0), MAX_DELAY)
    except ValueError:
        return web.Response(status=400, text="Invalid delay\n")
    await asyncio.sleep(seconds)
    return _json(_describe(request, "args", "headers", "origin", "url"))


async def random_bytes(request: web.Request) -> web.StreamResponse:
    try:
        n = min(max(int(request.match_info["n"]), 0), MAX_BYTES)
        seed = request.query.get("seed")
        rng = random.Random(int(seed)) if seed is not None else random.Random()
    except ValueError:
        return web.Response(status=400, text="Invalid size or seed\n")
    return web.Response(body=rng.randbytes(n), content_type="application/octet-stream")


async def stream(request: web.Request) -> web.StreamResponse:
    try:
        n = min(max(int(request.match_info["n"]), 0), MAX_STREAM)
    except ValueError:
        return web.Response(status=400, text="Invalid count\n")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    doc = _describe(request, "args", "headers", "origin", "url")
    for i in range(n):
        await response.write((json.dumps({**doc, "id": i}) + "\n").encode())
    await response.write_eof()
    return response


async def drip(request: web.Request) -> web.StreamResponse:
    """`numbytes` bytes spread over `duration` seconds after an initial `delay`, as httpbin's /drip."""
    try:
        duration = min(max(float(request.query.get("duration", "2")), 0.0), MAX_DELAY)
        numbytes = min(max(int(request.query.get("numbytes", "10")), 1), MAX_STREAM * 1024)
        initial = min(max(float(request.query.get("delay", "0")), 0.0), MAX_DELAY)
        code = int(request.query.get("code", "200"))
    except ValueError:
        return web.Response(status=400, text="Invalid parameters\n")
    await asyncio.sleep(initial)
    response = web.StreamResponse(status=code, headers={"Content-Type": "application/octet-stream"})
    response.content_length = numbytes
    await response.prepare(request)
    pause = duration / numbytes
    for _ in range(numbytes):
        await response.write(b"*")
        await asyncio.sleep(pause)
    await response.write_eof()
    return response


def make_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    r = app.router
    r.add_get("/", index)
    r.add_get("/healthz", healthz)
    r.add_get("/get", get)
    r.add_get("/headers", headers)
    r.add_get("/ip", ip)
    r.add_post("/post", post)
    r.add_route("*", "/anything", anything)
    r.add_route("*", "/anything/{tail:.*}", anything)
    r.add_route("*", "/status/{codes}", status)
    r.add_route("*", "/delay/{seconds}", delay)
    r.add_get("/bytes/{n}", random_bytes)
    r.add_get("/stream/{n}", stream)
    r.add_get("/drip", drip)
    return app


async def serve(
    cfg: HttpbinSettings, shutdown: Shutdown, on_ready: Callable[[socket.socket], object] = lambda s: None
) -> None:
    """Serve until `shutdown.stop`, then drain: stop accepting, let in-flight requests finish within the grace."""
    sock = bind("httpbin", cfg.host, cfg.port, BACKLOG)
    access_log = logging.getLogger("aiohttp.access") if cfg.access_log else None
    server = HttpServer(
        "httpbin", make_app(), [sock], shutdown_timeout=float(cfg.grace), access_log=access_log, backlog=BACKLOG
    )
    await server.start()
    on_ready(sock)
    await shutdown.stop.wait()
    _log.info("draining", extra={"fields": {"grace": str(cfg.grace)}})
    closing = spawn(server.close(), "httpbin-drain")
    forced = spawn(shutdown.force.wait(), "httpbin-force")
    try:
        await asyncio.wait({closing, forced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(closing, forced)


@click.command("httpbin")
@settings.cli_options(HttpbinSettings)
def httpbin(**cli: Any) -> None:
    """Test backend: an httpbin-style HTTP server (graceful on SIGTERM)."""
    from pyztunnel.observe import logging as zlog

    cfg = settings.load(HttpbinSettings, cli=cli)
    zlog.setup()
    install_uvloop()
    asyncio.run(_main(cfg))


async def _main(cfg: HttpbinSettings) -> None:
    shutdown = Shutdown()
    shutdown.install()
    await serve(cfg, shutdown, lambda sock: announce("httpbin", sock))

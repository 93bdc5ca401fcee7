"""The proxy's three HTTP servers, as ztunnel serves them (reference/ztunnel.md §1.5, §6.1, §6.2).

- readiness (`:15021`): `GET /healthz/ready` → `200 ready` or `500 not ready, pending: a, b`;
- metrics (`:15020`): `/metrics` and `/stats/prometheus`, Prometheus text or OpenMetrics, gzip on request;
- admin (`127.0.0.1:15000`): `/`, `/config_dump`, `POST /logging`, `POST /quitquitquit`.

Each server takes sockets that are already bound (and may be listening), so the proxy can create them inside its own
network namespace. On drain, `stop_accepting()` closes the listeners and idle keep-alive connections at once (so
readiness answers "connection refused", as ztunnel's does); in-flight requests finish; `close()` then waits for them
(bounded) and releases everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import html
import inspect
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web

from pyztunnel.aio import spawn
from pyztunnel.observe.loglevels import FilterError, LogLevels
from pyztunnel.observe.metrics import OPENMETRICS_CONTENT_TYPE, PLAIN_CONTENT_TYPE, Metrics, wants_openmetrics

_log = logging.getLogger("pyztunnel.observe.servers")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Readiness:
    """A set of named tasks that block readiness (ztunnel's `Ready`/`BlockReady`); ready when the set is empty."""

    def __init__(self, *blocking: str) -> None:
        self._pending: set[str] = set(blocking)
        self._ready_event = asyncio.Event()
        self._unblocked = asyncio.Event()  # replaced after each unblock: wakes wait_unblocked
        if not self._pending:
            self._ready_event.set()

    def block(self, name: str) -> None:
        self._pending.add(name)
        self._ready_event.clear()

    def unblock(self, name: str) -> None:
        self._pending.discard(name)
        if not self._pending:
            self._ready_event.set()
        self._unblocked.set()
        self._unblocked = asyncio.Event()

    @contextlib.contextmanager
    def blocking(self, name: str) -> Iterator[None]:
        """Block readiness while the body runs (ztunnel's BlockReady guard, released when dropped)."""
        self.block(name)
        try:
            yield
        finally:
            self.unblock(name)

    @property
    def pending(self) -> list[str]:
        return sorted(self._pending)

    @property
    def ready(self) -> bool:
        return not self._pending

    async def wait_ready(self) -> None:
        await self._ready_event.wait()

    async def wait_unblocked(self, name: str) -> None:
        """Until `name` no longer blocks (other tasks may still)."""
        while name in self._pending:
            await self._unblocked.wait()


def _empty(status: int) -> web.Response:
    return web.Response(status=status)


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain", charset="utf-8")


async def _not_found(_request: web.Request) -> web.StreamResponse:
    return _empty(404)


def route_app(routes: Mapping[str, Handler]) -> web.Application:
    """An application answering `routes` (any method; handlers check it) and an empty 404 elsewhere, as ztunnel."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


class HttpServer:
    """An aiohttp application served on already-bound sockets, with ztunnel's drain behaviour. The test backends
    (apps/httpbin.py) use it too, so every HTTP server of the project drains the same way."""

    def __init__(
        self,
        name: str,
        app: web.Application,
        sockets: Sequence[socket.socket],
        shutdown_timeout: float = 5.0,
        access_log: logging.Logger | None = None,
        backlog: int = 1024,
    ) -> None:
        self.name = name
        self._sockets = list(sockets)
        self.addresses: list[Any] = [s.getsockname() for s in self._sockets]
        self._backlog = backlog  # asyncio calls listen() again with this value
        self.app = app
        self._runner = web.AppRunner(app, access_log=access_log, shutdown_timeout=shutdown_timeout)
        self._sites: list[web.SockSite] = []
        self._cleanup: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._runner.setup()
        for sock in self._sockets:
            sock.setblocking(False)
            site = web.SockSite(self._runner, sock, backlog=self._backlog)
            await site.start()
            self._sites.append(site)
        _log.info("%s server listening", self.name, extra={"fields": {"addresses": _addrs(self.addresses)}})

    async def stop_accepting(self) -> None:
        """Close the listeners now; idle keep-alive connections close too, in-flight requests carry on."""
        sites, self._sites = self._sites, []
        for site in sites:
            await site.stop()
        for sock in self._sockets:
            sock.close()  # the loop may hold a duplicate of the fd; this one must not keep the port listening
        if self._cleanup is None:
            self._cleanup = spawn(self._runner.cleanup(), f"{self.name}-server-shutdown")

    async def close(self) -> None:
        """Stop accepting (if not yet), wait for in-flight requests (up to shutdown_timeout), release everything."""
        await self.stop_accepting()
        assert self._cleanup is not None
        await asyncio.shield(self._cleanup)

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


class ServerGroup:
    """Several servers started, drained and closed together (the proxy's readiness, metrics and admin)."""

    def __init__(self, *servers: HttpServer) -> None:
        self.servers = servers

    async def start(self) -> None:
        started: list[HttpServer] = []
        try:
            for server in self.servers:
                await server.start()
                started.append(server)
        except BaseException:
            await asyncio.gather(*(s.close() for s in started), return_exceptions=True)
            raise

    async def stop_accepting(self) -> None:
        await asyncio.gather(*(s.stop_accepting() for s in self.servers))

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers))

    async def __aenter__(self) -> ServerGroup:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def _addrs(addresses: Iterable[Any]) -> str:
    return ",".join(f"{a[0]}:{a[1]}" if isinstance(a, tuple) else str(a) for a in addresses)


# Readiness


CONFIG_VERSION_HEADER = "X-Pyztunnel-Config"


def readiness_server(
    readiness: Readiness, sockets: Sequence[socket.socket], config_version: Callable[[], str | None] = lambda: None
) -> HttpServer:
    """`config_version()` names the workloads config in force; sent as the X-Pyztunnel-Config header (an extension:
    ztunnel's answer has no such header, and its body and status are unchanged)."""

    async def ready(request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return _empty(405)
        pending = readiness.pending
        response = _text(200, "ready\n") if not pending else _text(500, f"not ready, pending: {', '.join(pending)}\n")
        version = config_version()
        if version is not None:
            response.headers[CONFIG_VERSION_HEADER] = version
        return response

    return HttpServer("readiness", route_app({"/healthz/ready": ready}), sockets)


# Metrics


def metrics_server(metrics: Metrics, sockets: Sequence[socket.socket]) -> HttpServer:
    async def serve(request: web.Request) -> web.StreamResponse:
        openmetrics = wants_openmetrics(request.headers.getall("Accept", []))
        body = metrics.exposition(openmetrics)
        response = web.Response(body=body)
        response.headers["Content-Type"] = OPENMETRICS_CONTENT_TYPE if openmetrics else PLAIN_CONTENT_TYPE
        if accepts_gzip(request.headers.getall("Accept-Encoding", [])):
            response.body = gzip.compress(body, compresslevel=5)
            response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept-Encoding"
        return response

    return HttpServer("stats", route_app({"/metrics": serve, "/stats/prometheus": serve}), sockets)


def accepts_gzip(headers: Iterable[str]) -> bool:
    """True when an Accept-Encoding entry names gzip (or `*`) with a non-zero q."""
    for header in headers:
        for entry in header.split(","):
            coding, *params = (p.strip() for p in entry.split(";"))
            if coding.lower() not in ("gzip", "x-gzip", "*"):
                continue
            q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
            try:
                if float(q) > 0:
                    return True
            except ValueError:
                continue
    return False


# Admin

ConfigDumpProvider = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
QuitCallback = Callable[[], Awaitable[None] | None]

LOGGING_HELP = """
usage: POST /logging\t\t\t\t\t\t(To list current level)
usage: POST /logging?level=<level>\t\t\t\t(To change global levels)
usage: POST /logging?level={mod1}={level1},{mod2}={level2}\t(To change specific mods' logging level)
usage: POST /logging?reset\t\t\t\t\t(To reset to the levels the process started with)

hint: loglevel:\terror|warn|info|debug|trace|off
hint: mod_name:\tthe module name, i.e. proxy::inbound or access
"""

ADMIN_PAGES: tuple[tuple[str, str], ...] = (
    ("quitquitquit", "shut down the server"),
    ("config_dump", "dump the current Ztunnel configuration"),
    ("logging", "query/changing logging levels"),
)


def admin_index() -> str:
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(path)}">{html.escape(path)}</a></td><td>{html.escape(text)}</td></tr>'
        for path, text in ADMIN_PAGES
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>pyztunnel admin</title></head>\n'
        f"<body><h1>pyztunnel admin</h1>\n<table>\n<tr><th>Command</th><th>Description</th></tr>\n{rows}\n"
        "</table></body></html>\n"
    )


def admin_server(
    sockets: Sequence[socket.socket],
    *,
    config_dump: ConfigDumpProvider,
    on_quit: QuitCallback,
    log_levels: LogLevels | None = None,
) -> HttpServer:
    """`on_quit` is called by `POST /quitquitquit`; it should start the drain and return (not wait for it to finish:
    the drain closes this very server, which waits for the request that called it)."""
    levels = log_levels or LogLevels()

    async def index(_request: web.Request) -> web.StreamResponse:
        return web.Response(text=admin_index(), content_type="text/html", charset="utf-8")

    async def dump(_request: web.Request) -> web.StreamResponse:
        result = config_dump()
        doc = await result if inspect.isawaitable(result) else result
        return web.Response(text=json.dumps(doc, indent=2, default=str), content_type="application/json")

    async def logging_(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _text(405, f"Invalid HTTP method\n {LOGGING_HELP}")
        query = request.rel_url.query
        level, reset = query.get("level"), "reset" in query
        if level is not None or reset:
            try:
                new = levels.set(level or "", reset=reset)
            except FilterError:
                return _text(400, f"Invalid level provided: {level}\n{LOGGING_HELP}")
            _log.info("new log filter is %s", new.render())
        return _text(200, f"current log level is {levels.current.render()}\n")

    async def quitquitquit(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _empty(405)
        result = on_quit()
        if inspect.isawaitable(result):
            await result
        return _text(200, "shutdown now\n")

    routes: dict[str, Handler] = {
        "/": index,
        "/config_dump": dump,
        "/logging": logging_,
        "/quitquitquit": quitquitquit,
    }
    return HttpServer("admin", route_app(routes), sockets)


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A bound, listening TCP socket (the proxy makes its own inside its netns; tests and tools use this)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock

"""Run a stand-in API server (store, controllers, HTTP on 127.0.0.1) on a thread of its own with its own event loop,
so synchronous code (a test, `kubectl` in a subprocess, a CLI run) and asynchronous clients can use it alike; write a
kubeconfig for it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from pyztunnel.kubeapi import seed
from pyztunnel.kubeapi.kubelet import SimOptions
from pyztunnel.kubeapi.server import Access, ApiServer
from pyztunnel.kubeapi.simulation import Simulation
from pyztunnel.kubeapi.store import Store

T = TypeVar("T")


class StandIn:
    def __init__(self, options: SimOptions | None = None, *, sail: bool = False, access: Access | None = None) -> None:
        self.options, self.sail, self.access = options or SimOptions(), sail, access
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.store: Store
        self.sim: Simulation
        self.server: ApiServer

    def __enter__(self) -> StandIn:
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self.store = Store()
            self.sim = Simulation(self.store, self.options, sail=self.sail)
            server = self.server = ApiServer(self.store, self.sim, self.access)
            # A watch whose client went away is cancelled at once (handler_cancellation) rather than left waiting
            # for its next event; shutdown does not wait for long-lived watches.
            runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = server.url = f"http://127.0.0.1:{port}"
            self.sim.start()
            self._stop = asyncio.Event()
            started.set()
            try:
                await self._stop.wait()
            finally:
                await self.sim.stop()
                await runner.cleanup()

        def run() -> None:
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
            finally:
                self.loop.close()

        self._thread = threading.Thread(target=run, name="kubeapi-stand-in", daemon=True)
        self._thread.start()
        if not started.wait(30) or failure:
            raise RuntimeError(f"the stand-in API server did not start: {failure[0] if failure else 'timeout'}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def call(self, func: Callable[[], T]) -> T:
        """Run `func` on the server's loop (the store is not thread-safe) and return its result."""
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(func())
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(30)

    def wait(self, done: Callable[[Store], bool], within: float = 30.0, what: str = "the condition") -> None:
        """Block until `done(store)` holds (checked on the server's loop after every change), at most `within` s."""
        reached = threading.Event()

        def check(_event: object = None) -> None:
            if not reached.is_set() and done(self.store):
                reached.set()

        def install() -> None:
            self.store.listen(check)
            check()

        self.call(install)
        try:
            if not reached.wait(within):
                raise TimeoutError(f"stand-in: {what} not reached within {within:g}s")
        finally:
            self.call(lambda: self.store.unlisten(check))

    def settled(self, namespace: str = "istio-system", name: str = "ztunnel", within: float = 30.0) -> None:
        """Until the DaemonSet is fully rolled out by kubectl's rule."""

        def done(store: Store) -> bool:
            ds = store.find("daemonsets", namespace, name)
            s = (ds or {}).get("status") or {}
            return bool(
                ds
                and s.get("observedGeneration") == ds["metadata"]["generation"]
                and s.get("desiredNumberScheduled", 0) > 0
                and s.get("updatedNumberScheduled") == s.get("desiredNumberScheduled") == s.get("numberAvailable")
            )

        self.wait(done, within, f"daemonset {namespace}/{name} rolled out")

    def create(self, plural: str, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self.call(lambda: self.store.create(plural, namespace, obj))

    def seed(self, nodes: int = 3, *, daemonset: dict[str, Any] | None = None, namespace: str = "istio-system") -> None:
        for i in range(1, nodes + 1):
            self.create("nodes", seed.node(f"node-{i}", i))
        self.create("namespaces", {"metadata": {"name": namespace}})
        if daemonset is not None:
            self.create("daemonsets", daemonset, namespace)

    def kubeconfig(self, path: Path, *, token: str | None = None, context: str = "stand-in") -> Path:
        user: dict[str, Any] = {"token": token} if token else {}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "stand-in", "user": user}],
            "contexts": [{"name": context, "context": {"cluster": "stand-in", "user": "stand-in"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(doc))
        return path

"""Run a load: in this process, or split over worker processes whose results are merged exactly.

Each worker process owns every W-th connection. The parent waits until every worker has connected and warmed up, then
gives all of them the same start time (CLOCK_MONOTONIC is shared by the processes of a machine), so their per-second
timelines line up. SIGINT (or -t 0 ending with ^C) stops every worker; they still report what they measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import resource
import signal
import time
from typing import Any

from pyztunnel.aio import install_uvloop
from pyztunnel.errors import UserError
from pyztunnel.load.exchange import ExchangeError
from pyztunnel.load.options import LoadOptions
from pyztunnel.load.runner import Worker, connection_ids, split_calls
from pyztunnel.load.stats import RunStats

# ^C, and SIGTERM too: `-t 0` runs until one of them, and the results are still printed. Installed explicitly, so a
# run started in the background (where the shell leaves SIGINT ignored) can be stopped the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunAborted(Exception):
    """Warmup failed (fortio: "Aborting because of …"), or the target cannot be resolved."""


def raise_fd_limit(connections: int) -> None:
    """Each connection is a file descriptor: lift the soft limit (often 1024) towards the hard one when needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 64
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise UserError(
            f"{connections} connections per process need about {wanted} file descriptors, but the limit is {hard}: "
            "raise it (ulimit -n) or use fewer connections per process (-workers)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run_load(options: LoadOptions) -> RunStats:
    workers = options.worker_count()
    raise_fd_limit(-(-options.connections // workers))  # inherited by the worker processes
    if workers == 1:
        install_uvloop()
        return asyncio.run(_run_here(options))
    return _run_processes(options, workers)


async def _run_here(options: LoadOptions) -> RunStats:
    worker = Worker(options, connection_ids(options, 0, 1), split_calls(options.exactly, options.connections))
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, worker.stop)
    try:
        try:
            why = await worker.warmup()
        except ExchangeError as exc:
            raise RunAborted(str(exc)) from None
        if why is not None:
            for caller in worker.callers:
                caller.close()
            raise RunAborted(why)
        return await worker.run(time.monotonic())
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _child(conn: multiprocessing.connection.Connection, options: LoadOptions, index: int, workers: int) -> None:
    """A worker process: warm up, say so, wait for the start time, run, send the results back."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # the parent decides when to stop, and tells us
    install_uvloop()
    asyncio.run(_child_main(conn, options, index, workers))


async def _child_main(
    conn: multiprocessing.connection.Connection, options: LoadOptions, index: int, workers: int
) -> None:
    worker = Worker(options, connection_ids(options, index, workers), split_calls(options.exactly, options.connections))
    loop = asyncio.get_running_loop()
    go: asyncio.Future[float] = loop.create_future()

    def on_message() -> None:
        try:
            kind, value = conn.recv()
        except EOFError:
            kind, value = "stop", None
        if kind == "go" and not go.done():
            go.set_result(value)
        elif kind == "stop":
            worker.stop()
            if not go.done():
                go.set_result(time.monotonic())

    loop.add_reader(conn.fileno(), on_message)
    try:
        try:
            why = await worker.warmup()
        except ExchangeError as exc:
            why = str(exc)
        if why is not None:
            for caller in worker.callers:
                caller.close()
            conn.send(("abort", why))
            return
        conn.send(("ready", None))
        start = await go
        stats = await worker.run(start)
        conn.send(("result", stats.to_state()))
    finally:
        loop.remove_reader(conn.fileno())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_processes(options: LoadOptions, workers: int) -> RunStats:
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        return _run_processes_inner(options, workers)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_processes_inner(options: LoadOptions, workers: int) -> RunStats:
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Any] = []
    procs: list[Any] = []
    try:
        for index in range(workers):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(child_end, options, index, workers), name=f"load-worker-{index}")
            proc.start()
            child_end.close()
            pipes.append(parent_end)
            procs.append(proc)
        interrupted = False
        ready = _collect(pipes, "ready")
        aborts = [value for kind, value in ready if kind == "abort"]
        if aborts:
            raise RunAborted(str(aborts[0]))
        start = time.monotonic()
        for pipe in pipes:
            pipe.send(("go", start))
        try:
            results = _collect(pipes, "result")
        except KeyboardInterrupt:
            interrupted = True
            for pipe in pipes:
                with contextlib.suppress(OSError):
                    pipe.send(("stop", None))
            results = _collect(pipes, "result")
        states = [value for kind, value in results if kind == "result"]
        if len(states) != workers:
            raise RunAborted("a worker process died before reporting its results")
        merged = RunStats.from_state(states[0])
        for state in states[1:]:
            merged.merge_state(state)
        merged.order_connections()
        merged.interrupted = merged.interrupted or interrupted
        merged.start = start
        return merged
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
            pipe.close()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _collect(pipes: list[Any], want: str) -> list[tuple[str, Any]]:
    """One message from every worker (a dead worker counts as an abort)."""
    pending = dict(enumerate(pipes))
    out: dict[int, tuple[str, Any]] = {}
    while pending:
        for ready in multiprocessing.connection.wait(list(pending.values())):
            index = next(i for i, p in pending.items() if p is ready)
            try:
                message: tuple[str, Any] = pending[index].recv()
            except EOFError:
                message = ("abort", "worker process exited")
            out[index] = message
            del pending[index]
    return [out[i] for i in sorted(out)]

"""Small asyncio helpers shared by every component.

Every background task has an owner. `spawn` is the only way the project starts a task: it names the task and logs
its failure; the caller owns what it returns (keeps it, cancels it, awaits it). A task with no natural holder goes
into a `TaskGroup`, the owner of a set of tasks (the proxy app, each pod proxy, each HTTP/2 connection own one):
the group keeps them referenced while they run, and shutting it down is stop accepting → a deadline → cancel the
rest. There is no process-wide task set: a task nobody owns is a bug, and the tests' leak check names it. `Owners`
closes what an object owns (its task groups, servers, pods) in the reverse order it took them. `in_thread` runs a
long CPU-bound step (parsing a big config file) beside the loop, so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_log = logging.getLogger("pyztunnel.aio")


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """A named task whose failure is logged. The caller owns it: keep the reference until it is done."""
    task = asyncio.create_task(coro, name=name)  # noqa: TID251 - this is the one sanctioned place
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("task %s failed", task.get_name(), exc_info=task.exception())


class TaskGroup:
    """The owner of a set of tasks: asyncio.TaskGroup's ownership (every task belongs to the group, closing the group
    ends them all) without its failure rule: a task that fails is logged and its siblings go on (one stream's bug must
    not end the other streams of its connection). Usable without an `async with` block, because its owners (a pod
    proxy, an HTTP/2 connection) are objects that live across callbacks, not one coroutine's scope."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """A task owned by this group (kept referenced until it ends). A closed group starts nothing: the coroutine
        is closed and the returned task is already cancelled."""
        if self.closed:
            coro.close()
            task: asyncio.Task[T] = asyncio.create_task(_never(), name=name)  # type: ignore[arg-type]  # noqa: TID251
            task.cancel()
            return task
        task = spawn(coro, name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def cancel(self) -> None:
        """Stop accepting and cancel every task now (sync: for a connection that is already gone)."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()

    async def close(self, within: float = 0.0) -> None:
        """Stop accepting, let the running tasks finish for up to `within` seconds, then cancel the rest and wait
        until they have really finished (their finally blocks ran)."""
        self.closed = True
        if within > 0 and self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within)
        await cancel_and_wait(*self._tasks)


class Owners:
    """What an object owns and must close, closed in the reverse order it took them (as an AsyncExitStack): the newest
    first, so nothing is closed while something that uses it still runs. A close that fails is logged and the rest
    still close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._closes: list[tuple[str, Callable[[], Awaitable[None] | None]]] = []

    def add(self, what: str, close: Callable[[], Awaitable[None] | None]) -> None:
        self._closes.append((what, close))

    async def close(self) -> None:
        closes, self._closes = self._closes, []
        for what, close in reversed(closes):
            try:
                result = close()
                if result is not None:
                    await result
            except Exception:
                _log.exception("closing %s of %s failed", what, self.name)


async def _never() -> None:
    await asyncio.get_running_loop().create_future()


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait until they have really finished (their finally blocks ran)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def poll_until(ready: Callable[[], bool], within: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """True once `ready()` holds; False if `alive()` stops holding or `within` seconds pass first. For states that
    have no event to wait on (a transport's write buffer, HTTP/2 flow-control queues): usually ready at once, so the
    2 ms poll rarely runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while alive():
        if ready():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.002)  # a bounded poll of a condition, not a synchronisation
    return False


async def in_thread(work: Callable[[], T], name: str) -> T:
    """`work()` in a thread of its own; the loop goes on meanwhile. Not `asyncio.to_thread`: the end of `asyncio.run`
    and the process's exit join the default executor's threads, so a proxy told to stop while it parses a big file
    would stay until the parse ends; this thread is a daemon, and a cancelled caller's result is dropped."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # the caller's to handle, as if it had called `work()` itself
            _settle_from_thread(loop, done, done.set_exception, exc)
        else:
            _settle_from_thread(loop, done, done.set_result, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


def _settle_from_thread(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], setter: Callable[[Any], None], value: Any
) -> None:
    def settle() -> None:
        if not future.done():  # the caller was cancelled meanwhile: nobody wants the result
            setter(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle)


def install_uvloop() -> None:
    """Use uvloop for every event loop this process creates (the relay's hot path depends on it)."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

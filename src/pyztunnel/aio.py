"""Small asyncio helpers shared by every component.

`spawn` is the only way the project starts a background task: it names the task and keeps a strong reference until
the task ends, so no task is garbage-collected mid-flight and leaks show up by name in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_log = logging.getLogger("pyztunnel.aio")
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    task = asyncio.create_task(coro, name=name)  # noqa: TID251 - this is the one sanctioned place
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _log.error("task %s failed", task.get_name(), exc_info=task.exception())


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


def install_uvloop() -> None:
    """Use uvloop for every event loop this process creates (the relay's hot path depends on it)."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

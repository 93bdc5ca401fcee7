"""Fail a test that leaves asyncio tasks running (kopf's `_no_asyncio_pending_tasks`): every task has an owner
(aio.TaskGroup, or whoever spawned it), and stopping the owner must end its tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# Tasks cancelled while the test tore its objects down get this many loop iterations to run their last step.
_SETTLE_STEPS = 5


@contextlib.asynccontextmanager
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    for _ in range(_SETTLE_STEPS):
        await asyncio.sleep(0)  # one loop iteration: lets a cancelled task finish [noqa: sleep-ok]
    leaked = sorted(t.get_name() for t in asyncio.all_tasks() - before if t is not current and not t.done())
    assert not leaked, f"tasks left running by the test: {leaked}"

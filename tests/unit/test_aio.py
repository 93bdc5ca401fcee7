"""Task ownership: a TaskGroup keeps its tasks, logs a failure without touching the siblings, and closes as stop
accepting → deadline → cancel; Owners close newest first and a failing close does not stop the rest."""

from __future__ import annotations

import asyncio

import pytest

from pyztunnel.aio import Owners, TaskGroup
from tests.leaks import no_leaked_tasks


async def test_a_failing_task_is_logged_and_its_siblings_go_on(caplog: pytest.LogCaptureFixture) -> None:
    group = TaskGroup("g")
    gate = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def waits() -> str:
        await gate.wait()
        return "done"

    failing, waiting = group.spawn(fails(), "fails"), group.spawn(waits(), "waits")
    await asyncio.wait({failing})
    assert "task fails failed" in caplog.text and not waiting.done() and len(group) == 1
    gate.set()
    assert await waiting == "done" and len(group) == 0


async def test_close_waits_up_to_its_deadline_then_cancels_the_rest() -> None:
    group = TaskGroup("g")
    quick_done = asyncio.Event()

    async def quick() -> None:
        quick_done.set()

    async def forever() -> None:
        await asyncio.Event().wait()

    quick_task, stuck = group.spawn(quick(), "quick"), group.spawn(forever(), "forever")
    await group.close(within=0.05)
    assert quick_done.is_set() and not quick_task.cancelled() and stuck.cancelled() and len(group) == 0
    late = group.spawn(forever(), "after close")  # a closed group starts nothing
    with pytest.raises(asyncio.CancelledError):
        await late


async def test_cancel_ends_every_task_of_a_group_that_is_gone() -> None:
    group = TaskGroup("conn")
    tasks = [group.spawn(asyncio.Event().wait(), f"stream-{i}") for i in range(3)]
    group.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks) and group.closed


async def test_owners_close_newest_first_and_one_failure_does_not_stop_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []
    owners = Owners("app")
    owners.add("store", lambda: closed.append("store"))

    async def server() -> None:
        closed.append("server")
        raise OSError("already gone")

    owners.add("server", server)
    owners.add("pods", lambda: closed.append("pods"))
    await owners.close()
    assert closed == ["pods", "server", "store"] and "closing server of app failed" in caplog.text
    await owners.close()  # once
    assert closed == ["pods", "server", "store"]


async def test_the_leak_check_names_a_task_left_running() -> None:
    leaked = TaskGroup("leaky")
    with pytest.raises(AssertionError, match="left running by the test: \\['forgotten'\\]"):
        async with no_leaked_tasks():
            leaked.spawn(asyncio.Event().wait(), "forgotten")
    leaked.cancel()

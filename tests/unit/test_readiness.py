from __future__ import annotations

import asyncio

import pytest

from pyztunnel.observe.servers import Readiness, accepts_gzip


async def test_ready_when_no_task_blocks() -> None:
    r = Readiness("state manager")
    assert r.pending == ["state manager"]
    with r.blocking("workload proxy manager"):
        r.unblock("state manager")
        assert r.pending == ["workload proxy manager"]
        waiter = asyncio.ensure_future(r.wait_ready())
        await asyncio.sleep(0)  # one loop iteration, to check something has NOT happened [noqa: sleep-ok]
        assert not waiter.done()
    await asyncio.wait_for(waiter, 1)
    assert r.ready and r.pending == []
    with pytest.raises(RuntimeError), r.blocking("x"):
        raise RuntimeError
    assert r.ready


def test_accepts_gzip() -> None:
    assert accepts_gzip(["gzip, deflate"])
    assert accepts_gzip(["br;q=1.0, gzip;q=0.5"])
    assert accepts_gzip(["*"])
    assert not accepts_gzip(["gzip;q=0"])
    assert not accepts_gzip(["identity"])
    assert not accepts_gzip([])

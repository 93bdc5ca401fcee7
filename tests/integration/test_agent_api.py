"""The agent API over its unix socket with a real ZDS server and probe client; plumbing is replaced by a recorder
(the real plumbing needs root and is covered by tests/system/test_agent.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyztunnel.agent.api import ApiServer
from pyztunnel.agent.config import AgentSettings
from pyztunnel.agent.pods import PodSpec
from pyztunnel.agent.service import Agent
from pyztunnel.agent.zds_probe import ZdsProbe
from pyztunnel.netns import netns_inode
from pyztunnel.protocols import zds

TIMEOUT = 5.0


class Recorder:
    def __init__(self) -> None:
        self.plumbed: list[str] = []
        self.unplumbed: list[str] = []

    def plumb(self, spec: PodSpec, fd: int) -> None:
        os.fstat(fd)  # the agent opened the pod's netns and hands over a live fd
        self.plumbed.append(spec.uid)

    def unplumb(self, uid: str) -> bool:
        self.unplumbed.append(uid)
        present = uid in self.plumbed
        self.plumbed = [u for u in self.plumbed if u != uid]
        return present


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Agent, aiohttp.ClientSession, Recorder, Path]]:
    settings = AgentSettings(run_dir=tmp_path / "run", zds_timeout=1.0)  # type: ignore[arg-type]
    rec = Recorder()
    agent = Agent(settings, plumb=rec.plumb, unplumb=rec.unplumb)
    api = ApiServer(agent, settings.api_socket)
    await agent.start()
    await api.start()
    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(settings.api_socket)))
    try:
        yield agent, session, rec, tmp_path
    finally:
        await session.close()
        await api.close()
        await agent.close()


def pod(tmp_path: Path, uid: str, mesh: bool = True) -> dict[str, Any]:
    netns = tmp_path / f"netns-{uid}"  # any file stands in for a netns here
    netns.touch()
    return {
        "uid": uid,
        "name": f"pod-{uid}",
        "namespace": "default",
        "serviceAccount": "sa",
        "netns": str(netns),
        "ip": "10.244.9.5",
        "prefixLen": 24,
        "gateway": "10.244.9.1",
        "mesh": mesh,
    }


async def call(session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with session.request(method, f"http://agent{path}", **kw) as resp:
        return resp.status, await resp.json()


async def test_mesh_pod_waits_for_a_proxy(env: tuple[Agent, aiohttp.ClientSession, Recorder, Path]) -> None:
    agent, session, rec, tmp = env
    doc = pod(tmp, "a")
    assert await call(session, "POST", "/v1/pods", json=doc) == (503, {"error": "no ztunnel connection"})
    assert rec.plumbed == ["a"]  # plumbed anyway; the retry is idempotent
    probe = ZdsProbe()
    await probe.connect(agent.settings.zds_socket)
    try:
        # The pod registered before the 503 is in the snapshot, with its netns fd.
        got = await asyncio.wait_for(probe.sync(), TIMEOUT)
        assert [r.event for r in got] == [
            zds.StartWorkload("a", zds.WorkloadInfo("pod-a", "default", "sa")),
            zds.Reconcile(()),
        ]
        assert got[0].netns == netns_inode(doc["netns"])
        serving = asyncio.ensure_future(probe.serve())
        assert await call(session, "POST", "/v1/pods", json=doc) == (200, {"ok": True})  # the retry
        assert await call(session, "POST", "/v1/pods", json=pod(tmp, "n", mesh=False)) == (200, {"ok": True})
        status, listed = await call(session, "GET", "/v1/pods")
        assert status == 200 and [p["uid"] for p in listed["pods"]] == ["a", "n"]
        assert await call(session, "DELETE", "/v1/pods/a") == (200, {"ok": True, "known": True})
        assert await call(session, "DELETE", "/v1/pods/a") == (200, {"ok": True, "known": False})
        assert rec.unplumbed == ["a", "a"] and rec.plumbed == ["n"]
        events = [r.event for r in probe.received[2:]]
        assert events == [zds.Unchanged("a"), zds.DrainWorkload("a"), zds.DrainWorkload("a")]  # no Add for "n"
        status, st = await call(session, "GET", "/v1/status")
        assert st["pods"] == 1 and st["connections"][0]["phase"] == "ready"
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    finally:
        probe.close()


async def test_nack_is_a_503_with_the_proxy_error(env: tuple[Agent, aiohttp.ClientSession, Recorder, Path]) -> None:
    agent, session, _rec, tmp = env
    probe = ZdsProbe(nack={"b": "failure to start proxy : boom"})
    await probe.connect(agent.settings.zds_socket)
    await asyncio.wait_for(probe.sync(), TIMEOUT)
    serving = asyncio.ensure_future(probe.serve())
    try:
        status, body = await call(session, "POST", "/v1/pods", json=pod(tmp, "b"))
        assert (status, body) == (503, {"error": "failure to start proxy : boom"})
    finally:
        probe.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"not json", "JSON"), (b'{"uid": "x"}', "missing field"), (b"[]", "JSON object")],
)
async def test_bad_input_is_400(
    env: tuple[Agent, aiohttp.ClientSession, Recorder, Path], body: bytes, fragment: str
) -> None:
    _agent, session, rec, _tmp = env
    status, doc = await call(session, "POST", "/v1/pods", data=body)
    assert status == 400 and fragment in doc["error"]
    assert rec.plumbed == []


async def test_missing_netns_is_400(env: tuple[Agent, aiohttp.ClientSession, Recorder, Path]) -> None:
    _agent, session, _rec, tmp = env
    doc = {**pod(tmp, "c"), "netns": str(tmp / "nope")}
    status, body = await call(session, "POST", "/v1/pods", json=doc)
    assert status == 400 and "cannot open netns" in body["error"]


async def test_restarted_agent_keeps_its_pods(tmp_path: Path) -> None:
    """The pod set survives a restart; a pod whose netns is gone is sent as Keep."""
    settings = AgentSettings(run_dir=tmp_path / "run")
    rec = Recorder()
    first = Agent(settings, plumb=rec.plumb, unplumb=rec.unplumb)
    await first.start()
    docs = [pod(tmp_path, "x"), pod(tmp_path, "y")]
    for doc in docs:
        with pytest.raises(Exception, match="no ztunnel connection"):
            await first.add_pod(PodSpec.from_json(doc))
    await first.close()
    os.unlink(docs[1]["netns"])
    second = Agent(settings, plumb=rec.plumb, unplumb=rec.unplumb)
    await second.start()
    probe = ZdsProbe()
    try:
        await probe.connect(settings.zds_socket)
        got = await asyncio.wait_for(probe.sync(), TIMEOUT)
        info = zds.WorkloadInfo("pod-x", "default", "sa")
        assert [r.event for r in got] == [zds.StartWorkload("x", info), zds.Unchanged("y"), zds.Reconcile(())]
    finally:
        probe.close()
        await second.close()


async def test_both_sockets_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    settings = AgentSettings(run_dir=tmp_path / "run")
    agent = Agent(settings, plumb=Recorder().plumb, unplumb=Recorder().unplumb)
    api = ApiServer(agent, settings.api_socket)
    previous = os.umask(0)
    try:
        await agent.start()
        await api.start()
    finally:
        os.umask(previous)
    try:
        for path in (settings.api_socket, settings.zds_socket):
            assert path.stat().st_mode & 0o777 == 0o600, path
    finally:
        await api.close()
        await agent.close()

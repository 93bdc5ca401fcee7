"""The controller API over a real unix socket, against a controller that has not started anything (no root needed):
routes, validation and error answers, and the state document's shape that `cluster …`, `upgrade` and the
LocalBackend read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyztunnel.cluster import api, spec
from pyztunnel.cluster.controller import Controller
from pyztunnel.cluster.layout import Layout


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[tuple[aiohttp.ClientSession, Controller]]:
    layout = Layout(tmp_path / "c1")
    layout.root.mkdir()
    ctl = Controller("c1", layout, spec.load(None).spec)
    ctl.phase = "failed"  # nothing is reconciled: the API alone is under test
    runner = await api.serve(ctl, layout.socket)
    connector = aiohttp.UnixConnector(path=str(layout.socket))
    async with aiohttp.ClientSession(connector=connector, base_url="http://controller") as client:
        try:
            yield client, ctl
        finally:
            await runner.cleanup()


async def call(client: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with client.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


async def test_state_document(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, _ = session
    status, state = await call(client, "GET", "/v1/state")
    assert status == 200
    assert state["name"] == "c1" and state["ready"] is False
    assert [n["name"] for n in state["nodes"]] == ["node-1", "node-2", "node-3"]
    assert state["nodes"][1]["ip"] == "10.240.0.2" and state["nodes"][1]["podCidr"] == "10.244.2.0/24"
    assert [(s["name"], s["vip"]) for s in state["services"]] == [("gateway", "10.96.0.10"), ("httpbin", "10.96.0.11")]
    assert state["daemonset"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert {d["name"]: d["replicas"] for d in state["deployments"]} == {"client": 1, "gateway": 1, "httpbin": 2}
    assert state["pods"] == [] and state["proxies"] == []


async def test_scale(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, ctl = session
    assert await call(client, "POST", "/v1/deployments/httpbin/scale", {"replicas": 5}) == (
        200,
        {"ok": True, "deployment": "httpbin", "replicas": 5},
    )
    assert ctl.replicas["httpbin"] == 5
    status, answer = await call(client, "POST", "/v1/deployments/httpbin/scale", {"replicas": -1})
    assert status == 400 and "replicas" in answer["error"]
    status, answer = await call(client, "POST", "/v1/deployments/nope/scale", {"replicas": 1})
    assert (status, answer) == (404, {"error": "no deployment nope"})


async def test_cordon_and_unknown_names(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, ctl = session
    assert await call(client, "POST", "/v1/nodes/node-2/cordon") == (
        200,
        {"ok": True, "node": "node-2", "cordoned": True},
    )
    assert ctl.nodes["node-2"].cordoned
    assert (await call(client, "POST", "/v1/nodes/node-2/uncordon"))[1]["cordoned"] is False
    assert (await call(client, "POST", "/v1/nodes/node-9/cordon"))[0] == 404
    assert await call(client, "DELETE", "/v1/pods/nope") == (404, {"error": "no pod nope"})
    assert (await call(client, "POST", "/v1/pods/nope/evict"))[0] == 404
    assert (await call(client, "DELETE", "/v1/proxies/nope"))[0] == 404
    assert (await call(client, "POST", "/v1/proxies", {"node": "node-9", "version": "2"}))[0] == 404


async def test_daemonset_update_is_validated(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, ctl = session
    status, answer = await call(
        client, "PUT", "/v1/daemonset", {"version": "2.0", "updateStrategy": {"type": "OnDelete"}}
    )
    assert status == 200
    assert answer["daemonset"]["version"] == "2.0" and ctl.daemonset.updateStrategy.type == "OnDelete"
    assert ctl.daemonset.terminationGracePeriodSeconds == 30  # untouched fields kept
    status, answer = await call(client, "PUT", "/v1/daemonset", {"terminationGracePeriodSeconds": -5})
    assert status == 400 and answer["error"].startswith("terminationGracePeriodSeconds:")
    status, answer = await call(client, "PUT", "/v1/daemonset", {"bogus": 1})
    assert status == 400 and "bogus" in answer["error"]
    assert ctl.daemonset.version == "2.0"


async def test_bad_bodies(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, _ = session
    async with client.post("/v1/deployments/httpbin/scale", data=b"{not json") as resp:
        assert resp.status == 400
    async with client.post("/v1/deployments/httpbin/scale", json=[1]) as resp:
        assert resp.status == 400


async def test_shutdown_sets_the_stop_event(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, ctl = session
    assert await call(client, "POST", "/v1/shutdown") == (200, {"ok": True})
    assert ctl.stop_requested.is_set()

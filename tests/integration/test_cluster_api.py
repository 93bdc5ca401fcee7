"""The controller API over a real unix socket, against a controller that has not started anything (no root needed):
routes, validation and error answers, and the state document's shape that `cluster …`, `upgrade` and the
LocalBackend read."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.cluster import api, kubelet, podnet, spec, topology
from pyztunnel.cluster.controller import Controller
from pyztunnel.cluster.layout import Layout
from pyztunnel.cluster.objects import Pod, PublishStuck
from pyztunnel.workloads.watch import config_version


@pytest.fixture
def network() -> podnet.PodNetwork:
    """The controller's pod network: by default an agent whose DELETE never answers."""
    return HangingPodNetwork()


@pytest.fixture
async def session(
    tmp_path: Path, network: podnet.PodNetwork
) -> AsyncIterator[tuple[aiohttp.ClientSession, Controller]]:
    layout = Layout(tmp_path / "c1")
    layout.root.mkdir()
    ctl = Controller("c1", layout, spec.load(None).spec, network=network)
    ctl.store.phase = "failed"  # nothing is reconciled: the API alone is under test
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
    assert ctl.store.replicas["httpbin"] == 5
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
    assert ctl.store.nodes["node-2"].cordoned
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
    assert answer["daemonset"]["version"] == "2.0" and ctl.store.daemonset.updateStrategy.type == "OnDelete"
    assert ctl.store.daemonset.terminationGracePeriodSeconds == 30  # untouched fields kept
    status, answer = await call(client, "PUT", "/v1/daemonset", {"terminationGracePeriodSeconds": -5})
    assert status == 400 and answer["error"].startswith("terminationGracePeriodSeconds:")
    status, answer = await call(client, "PUT", "/v1/daemonset", {"bogus": 1})
    assert status == 400 and "bogus" in answer["error"]
    assert ctl.store.daemonset.version == "2.0"


async def test_daemonset_env_merges_and_the_whole_template_can_be_read_and_restored(
    session: tuple[aiohttp.ClientSession, Controller],
) -> None:
    """`PUT /v1/daemonset` merges `env` (docs/cluster.md; it used to replace it), a null removes a variable; `GET`
    gives the whole template and `?replace=1` puts a saved one back whole: what a rollback needs (issue 11, item 7)."""
    client, ctl = session
    status, saved = await call(client, "GET", "/v1/daemonset")
    assert status == 200 and saved["daemonset"] == (await call(client, "GET", "/v1/state"))[1]["daemonset"]
    assert set(saved["daemonset"]) == {
        "enabled",
        "version",
        "command",
        "env",
        "terminationGracePeriodSeconds",
        "updateStrategy",
    }
    await call(client, "PUT", "/v1/daemonset", {"env": {"RUST_LOG": "debug", "A": "1"}})
    status, answer = await call(client, "PUT", "/v1/daemonset", {"version": "2", "env": {"B": "2"}})
    base = saved["daemonset"]["env"]  # the spec's own (the default spec sets PYZTUNNEL_CONFIG_POLL)
    assert status == 200 and answer["daemonset"]["env"] == {**base, "RUST_LOG": "debug", "A": "1", "B": "2"}
    status, answer = await call(
        client, "PUT", "/v1/daemonset", {"env": {"A": None}, "command": ["pyztunnel", "proxy", "-x"]}
    )
    assert answer["daemonset"]["env"] == {**base, "RUST_LOG": "debug", "B": "2"}
    assert ctl.store.daemonset.env == answer["daemonset"]["env"] and ctl.store.daemonset.version == "2"
    status, answer = await call(client, "PUT", "/v1/daemonset", {"env": {"C": 3}})
    assert status == 400 and answer["error"].startswith("env.C:"), answer
    status, answer = await call(client, "PUT", "/v1/daemonset?replace=1", saved["daemonset"])
    assert (status, answer["daemonset"]) == (200, saved["daemonset"])
    assert (await call(client, "GET", "/v1/daemonset"))[1] == saved


async def test_bad_bodies(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, _ = session
    async with client.post("/v1/deployments/httpbin/scale", data=b"{not json") as resp:
        assert resp.status == 400
    async with client.post("/v1/deployments/httpbin/scale", json=[1]) as resp:
        assert resp.status == 400


async def test_shutdown_sets_the_stop_event(session: tuple[aiohttp.ClientSession, Controller]) -> None:
    client, ctl = session
    assert await call(client, "POST", "/v1/shutdown") == (200, {"ok": True})
    assert ctl.store.stop_requested.is_set()


# ----- `?wait=1` is bounded -------------------------------------------------------------------------------------------


class HangingPodNetwork:
    """An agent whose DELETE never answers (as one waiting for a proxy that stopped reading ZDS)."""

    def __init__(self) -> None:
        self.removing = asyncio.Event()

    async def add(self, pod: podnet.PodNet) -> None:
        return None

    async def remove(self, pod: podnet.PodNet) -> None:
        self.removing.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


def app_pod(ctl: Controller, name: str) -> Pod:
    node = ctl.store.nodes["node-1"]
    pod = Pod(
        name=name,
        uid=f"uid-{name}",
        namespace="default",
        owner_kind="Deployment",
        owner="x",
        node=node,
        ip=node.ipam.allocate(),
        netns=f"pzt-tctlapi-{name}",
        mesh=False,
        service_account="default",
        labels={},
        grace=0,
        probe=None,
        command=[],
        env={},
        files={},
    )
    ctl.store.pods[name] = pod
    return pod


@pytest.fixture
async def publishing(
    session: tuple[aiohttp.ClientSession, Controller], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[aiohttp.ClientSession, Controller]]:
    """The session's controller with its publisher running and no namespace to delete."""
    _, ctl = session

    async def no_namespaces(names: Any) -> None:
        return None

    monkeypatch.setattr(topology, "delete_namespaces", no_namespaces)
    ctl.publisher.start()
    try:
        yield session
    finally:
        await ctl.publisher.stop()


async def test_wait_answers_504_naming_the_stuck_step(
    publishing: tuple[aiohttp.ClientSession, Controller], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, ctl = publishing
    monkeypatch.setattr(kubelet, "UNPLUMB_TIMEOUT", 0.2)
    pod = app_pod(ctl, "a")
    status, answer = await asyncio.wait_for(call(client, "POST", "/v1/pods/a/evict?wait=1"), 10)
    assert status == 504
    assert answer["error"] == (
        "pod a was removed, but unplumbing it through the node agent did not finish within 0.2s"
    ), answer
    assert "a" not in ctl.store.pods and pod.deleted.is_set()


async def test_wait_is_bounded_even_when_a_step_is_not(
    publishing: tuple[aiohttp.ClientSession, Controller], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, ctl = publishing
    monkeypatch.setattr(kubelet, "TERMINATION_MARGIN", 0.3)  # the answer's bound, below the step's own
    hanging = ctl.network
    assert isinstance(hanging, HangingPodNetwork)
    app_pod(ctl, "b")
    status, answer = await asyncio.wait_for(call(client, "DELETE", "/v1/pods/b?wait=1&grace=0"), 10)
    assert hanging.removing.is_set()
    assert status == 504
    assert answer["error"].startswith("pod b is not gone after 0.3s: stuck in unplumbing it through the node agent")
    task = ctl.store.pods["b"].terminating
    assert task is not None
    await cancel_and_wait(task)


@pytest.mark.parametrize("network", [podnet.DirectPodNetwork()])
async def test_wait_survives_a_supervising_task_that_loses_its_first_cancellation(
    publishing: tuple[aiohttp.ClientSession, Controller],
) -> None:
    """What a probe loop did when `wait_for` swallowed the cancel: go on. The deletion cancels it again."""
    client, ctl = publishing
    pod = app_pod(ctl, "c")
    swallowed = asyncio.Event()

    async def probe_loop() -> None:
        while True:
            try:
                await asyncio.get_running_loop().create_future()  # blocks until cancelled
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    pod.task = spawn(probe_loop(), "pod-c")
    status, answer = await asyncio.wait_for(call(client, "POST", "/v1/pods/c/evict?wait=1"), 10)
    assert (status, answer["ok"]) == (200, True) and swallowed.is_set()
    assert "c" not in ctl.store.pods


async def test_published_is_bounded_and_names_a_dead_publisher(
    session: tuple[aiohttp.ClientSession, Controller], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ctl = session
    publisher = ctl.publisher
    with pytest.raises(PublishStuck, match=r"not rewritten within 0\.1s"):
        await publisher.published(publisher.changed(), 0.1)
    ended = asyncio.Event()

    async def broken() -> None:
        ended.set()
        raise RuntimeError("boom")

    monkeypatch.setattr(publisher, "run", broken)
    publisher.start()
    await ended.wait()
    await publisher.stop()
    with pytest.raises(PublishStuck, match="publisher ended"):
        await publisher.published(publisher.changed(), 5)


async def test_ready_waits_until_every_proxy_has_loaded_the_last_workloads(
    publishing: tuple[aiohttp.ClientSession, Controller],
) -> None:
    client, ctl = publishing
    store, publisher = ctl.store, ctl.publisher
    store.phase = "running"
    store.spec.deployments.clear()
    for node in store.nodes.values():
        node.agent_ready = True
    await publisher.published(publisher.changed(), 5)
    proxies = []
    for node in store.nodes.values():
        pod = app_pod(ctl, f"ztunnel-{node.name}")
        pod.owner_kind, pod.node, pod.ready = "DaemonSet", node, True
        proxies.append(pod)
    current = (await call(client, "GET", "/v1/state"))[1]["workloadsVersion"]
    assert current == config_version(store.layout.workloads.read_bytes())
    proxies[0].config_version = proxies[1].config_version = current
    proxies[2].config_version = "0000000000000000"  # still the previous file
    _, state = await call(client, "GET", "/v1/state")
    assert state["ready"] is False
    assert [p["configVersion"] for p in state["proxies"]] == [current, current, "0000000000000000"]
    proxies[2].config_version = current
    assert (await call(client, "GET", "/v1/state"))[1]["ready"] is True
    proxies[2].config_version = None  # a proxy without the header (ztunnel): the poll interval plus a margin
    written = publisher.workloads_written_at
    publisher.clock = lambda: written + publisher.settle / 2
    assert (await call(client, "GET", "/v1/state"))[1]["ready"] is False
    publisher.clock = lambda: written + publisher.settle + 0.001
    assert (await call(client, "GET", "/v1/state"))[1]["ready"] is True


async def test_the_socket_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "c2")
    layout.root.mkdir()
    ctl = Controller("c2", layout, spec.load(None).spec)
    previous = os.umask(0)
    try:
        runner = await api.serve(ctl, layout.socket)
    finally:
        os.umask(previous)
    try:
        assert layout.socket.stat().st_mode & 0o777 == 0o600
    finally:
        await runner.cleanup()


async def test_not_ready_while_the_workloads_file_lags_behind_the_pods(
    publishing: tuple[aiohttp.ClientSession, Controller],
) -> None:
    """The start-up race (issue 11, item 14): `ready` flipped as soon as the last pod was ready in the store, while
    workloads.yaml (behind an nft apply) still said Unhealthy and every proxy rightly reported that file: `cluster up`
    returned and the gateway found no healthy httpbin. Ready now also needs the file to reflect the pods as they are."""
    client, ctl = publishing
    store, publisher = ctl.store, ctl.publisher
    store.phase = "running"
    store.spec.deployments[:] = [store.spec.deployment("httpbin")]
    store.replicas = {"httpbin": 1}
    for node in store.nodes.values():
        node.agent_ready = True
    backend = app_pod(ctl, "httpbin-a")
    backend.owner, backend.labels = "httpbin", {"app": "httpbin"}
    proxies = []
    for node in store.nodes.values():
        proxy = app_pod(ctl, f"ztunnel-{node.name}")
        proxy.owner_kind, proxy.node, proxy.ready = "DaemonSet", node, True
        proxies.append(proxy)
    await publisher.published(publisher.changed(), 5)
    unhealthy = publisher.workloads_version
    for proxy in proxies:
        proxy.config_version = unhealthy  # every proxy has loaded the file in which httpbin is Unhealthy
    assert "status: Unhealthy" in store.layout.workloads.read_text()
    backend.ready = True  # its probe succeeded; the publisher has not rewritten the file yet
    publisher.changed()
    assert publisher.is_ready() is False, "ready before workloads.yaml says httpbin is Healthy"
    await publisher.published(publisher.changed(), 5)
    assert "status: Healthy" in store.layout.workloads.read_text() and publisher.workloads_version != unhealthy
    assert publisher.is_ready() is False  # the proxies still route with the old file
    for proxy in proxies:
        proxy.config_version = publisher.workloads_version
    assert publisher.is_ready() is True
    state = (await call(client, "GET", "/v1/state"))[1]
    assert state["ready"] is True and state["services"][1]["endpoints"] == [backend.ip]

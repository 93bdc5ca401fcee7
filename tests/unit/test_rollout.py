"""Rollout strategies against the fake backend: ordering, surge/unavailable semantics, failures, resume anywhere."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyztunnel.rollout.backend import RolloutView
from pyztunnel.rollout.plan import Plan, Progress, RolloutFailed, RolloutRefused
from pyztunnel.rollout.store import FileState, RolloutStore
from pyztunnel.rollout.strategies import Rollout
from pyztunnel.rollout.testing import FakeCluster, Interrupted

NODES = ["n1", "n2", "n3"]
PODS = {"httpbin": 2, "gateway": 1, "client": 1}


def cluster(auto_replace: bool = False) -> FakeCluster:
    fake = FakeCluster(NODES, PODS, version="v1")
    fake.auto_replace = auto_replace
    return fake


def assert_upgraded(fake: FakeCluster, version: str = "v2") -> None:
    assert fake.versions() == {n: [version] for n in NODES}
    assert all(fake.ready_proxies(n) for n in NODES)
    assert all(fake.schedulable.values())
    by_deployment: dict[str, int] = {}
    for pod in fake.pods.values():
        deployment = (pod.owner or "").split("/")[-1]
        by_deployment[deployment] = by_deployment.get(deployment, 0) + 1
    assert by_deployment == PODS


def node_calls(fake: FakeCluster, node: str) -> list[str]:
    return [op for op, arg in fake.calls if arg.startswith(f"ztunnel-{node}-") or arg.split(":")[0] == node]


async def test_rolling_default_surges_one_node_at_a_time_never_unready() -> None:
    fake = cluster()
    events: list[Progress] = []
    record = await Rollout(fake, Plan("v2"), on_progress=events.append).run()
    assert_upgraded(fake)
    assert record.status == "done" and all(r.status == "done" for r in record.progress.values())
    # Per node: new beside old, wait ready, then delete the old.
    for node in NODES:
        assert node_calls(fake, node) == ["create_proxy", "wait_proxy_ready", "delete_proxy"]
    assert [arg.split(":")[0] for op, arg in fake.calls if op == "create_proxy"] == NODES
    assert fake.max_surging == 1 and fake.max_unavailable == 0
    assert min(fake.min_ready.values()) == 1  # maxUnavailable 0: never a node without a ready proxy
    assert (fake.current.version, fake.current.strategy, fake.current.grace_seconds) == ("v2", "RollingUpdate", 30)
    assert [(e.node, e.phase) for e in events if e.node == "n1"] == [("n1", "surge"), ("n1", "done")]


async def test_max_surge_two_runs_two_nodes_at_once() -> None:
    fake = cluster()
    await Rollout(fake, Plan("v2", max_surge=2)).run()
    assert_upgraded(fake)
    assert fake.max_surging == 2 and min(fake.min_ready.values()) == 1


async def test_max_unavailable_deletes_first() -> None:
    fake = cluster()
    await Rollout(fake, Plan("v2", max_surge=0, max_unavailable=1)).run()
    assert_upgraded(fake)
    for node in NODES:
        assert node_calls(fake, node) == ["delete_proxy", "create_proxy", "wait_proxy_ready"]
    assert fake.max_surging == 0 and fake.max_unavailable == 1


async def test_surge_and_unavailable_slots_together() -> None:
    fake = cluster()
    await Rollout(fake, Plan("v2", max_surge=1, max_unavailable=1)).run()
    assert_upgraded(fake)
    assert fake.max_surging == 1 and fake.max_unavailable == 1


def test_both_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot both be 0"):
        Rollout(cluster(), Plan("v2", max_surge=0, max_unavailable=0))


async def test_only_the_named_nodes(tmp_path: Path) -> None:
    fake = cluster()
    await Rollout(fake, Plan("v2", nodes=("n2",))).run()
    assert fake.versions() == {"n1": ["v1"], "n2": ["v2"], "n3": ["v1"]}
    with pytest.raises(RolloutRefused, match="no node named 'n9'"):
        await Rollout(fake, Plan("v3", nodes=("n9",))).run()


async def test_new_proxy_never_ready_is_deleted_and_old_kept(tmp_path: Path) -> None:
    fake = cluster()
    fake.broken_versions.add("v2")
    store = RolloutStore(FileState(tmp_path / "rollout.json"))
    with pytest.raises(
        RolloutFailed, match=r"node n1: .* not ready within 5s: .*; deleted it, the old proxy keeps serving"
    ):
        await Rollout(fake, Plan("v2", ready_timeout=5), store).run()
    assert fake.versions() == {n: ["v1"] for n in NODES}  # n2, n3 untouched; n1 back to its old proxy only
    assert min(fake.min_ready.values()) == 1
    record = await store.load()
    assert record is not None and record.status == "failed" and record.progress["n1"].status == "failed"
    assert "not ready" in (record.error or "")


@pytest.mark.parametrize("auto_replace", [False, True])
@pytest.mark.parametrize("strategy", ["rolling", "drain"])
async def test_delete_first_failure_restores_previous_version(auto_replace: bool, strategy: str) -> None:
    fake = cluster(auto_replace)
    fake.broken_versions.add("v2")
    plan = Plan("v2", max_surge=0, max_unavailable=1) if strategy == "rolling" else Plan("v2", strategy="drain")
    with pytest.raises(RolloutFailed, match="restored v1"):
        await Rollout(fake, plan).run()
    assert fake.versions()["n1"] == ["v1"] and fake.ready_proxies("n1")
    assert fake.current.version == "v1"  # nothing will bring the broken version back


async def test_drain_cordons_evicts_replaces_uncordons_one_node_at_a_time() -> None:
    fake = cluster()
    n1_pods = {p.name for p in fake.pods.values() if p.node == "n1"}
    await Rollout(fake, Plan("v2", strategy="drain", grace_seconds=120)).run()
    assert_upgraded(fake)
    # OnDelete during the drain; the strategy before it (RollingUpdate) is put back at the end.
    assert fake.current.strategy == "RollingUpdate" and fake.current.grace_seconds == 120
    ops = [op for op, _ in fake.calls]
    per_node = ["cordon", *["evict"] * len(n1_pods), "delete_proxy", "create_proxy", "wait_proxy_ready", "uncordon"]
    assert ops[: len(per_node)] == per_node
    # Nodes strictly one after another.
    cordons = [arg for op, arg in fake.calls if op == "cordon"]
    uncordons = [arg for op, arg in fake.calls if op == "uncordon"]
    assert cordons == uncordons == NODES
    assert fake.calls.index(("uncordon", "n1")) < fake.calls.index(("cordon", "n2"))
    # The pods that were on n1 were moved off (their names are gone; replacements were scheduled elsewhere).
    assert not n1_pods & set(fake.pods)


async def test_drain_with_a_pinned_pod_brings_it_back_after_uncordon() -> None:
    fake = cluster()
    fake.pinned.add("client")
    before = {p.node for p in fake.pods.values() if p.owner == "Deployment/client"}
    await Rollout(fake, Plan("v2", strategy="drain")).run()
    assert_upgraded(fake)
    assert {p.node for p in fake.pods.values() if p.owner == "Deployment/client"} == before and not fake.unscheduled


async def test_drain_eviction_failure_uncordons_and_stops() -> None:
    fake = cluster()
    victim = next(p.name for p in fake.pods.values() if p.node == "n1")
    fake.failing_evictions.add(victim)
    with pytest.raises(RolloutFailed, match=f"evicting default/{victim} failed.*uncordoned"):
        await Rollout(fake, Plan("v2", strategy="drain")).run()
    assert all(fake.schedulable.values()) and fake.versions()["n1"] == ["v1"]


PLANS = {
    "rolling": Plan("v2"),
    "unavailable": Plan("v2", max_surge=0, max_unavailable=1),
    "drain": Plan("v2", strategy="drain"),
}


@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("after_effect", [False, True])
@pytest.mark.parametrize("auto_replace", [False, True])
async def test_resume_after_interruption_at_every_step(
    name: str, after_effect: bool, auto_replace: bool, tmp_path: Path
) -> None:
    plan = PLANS[name]
    fake = cluster(auto_replace)
    await Rollout(fake, plan).run()
    assert_upgraded(fake)
    total = len(fake.calls)
    for k in range(total):
        store = RolloutStore(FileState(tmp_path / f"rollout-{k}.json"))
        fake = cluster(auto_replace)
        fake.interrupt_at, fake.interrupt_after_effect = k, after_effect
        with pytest.raises(Interrupted):
            await Rollout(fake, plan, store).run()
        fake.interrupt_at = None
        again = Rollout(fake, plan, store)
        record = await again.run()
        assert again.resumed, k
        assert record.status == "done"
        assert_upgraded(fake)
        if plan.strategy == "rolling" and plan.max_unavailable == 0:
            assert min(fake.min_ready.values()) == 1, f"a node lost its ready proxy (interrupted at call {k})"


async def test_a_different_version_starts_afresh_and_done_is_not_resumed(tmp_path: Path) -> None:
    store = RolloutStore(FileState(tmp_path / "rollout.json"))
    fake = cluster()
    await Rollout(fake, Plan("v2"), store).run()
    again = Rollout(fake, Plan("v2"), store)
    await again.run()
    assert not again.resumed  # a finished rollout is not resumed: it runs again (and finds nothing to do)
    assert fake.versions() == {n: ["v2"] for n in NODES}
    third = Rollout(fake, Plan("v3"), store)
    await third.run()
    assert not third.resumed and fake.versions() == {n: ["v3"] for n in NODES}


class StalledController(FakeCluster):
    """A DaemonSet that rolls by itself, whose controller replaced n1's proxy and then never creates one on n2."""

    rolls_itself = True

    def watch_rollout(self) -> AsyncIterator[RolloutView]:
        async def views() -> AsyncIterator[RolloutView]:
            proxies = tuple(dataclasses.replace(p, updated=p.node == "n1") for p in await self.proxies())
            yield RolloutView("ztunnel", 2, 2, 2, 1, 2, "RollingUpdate", proxies)
            await asyncio.Event().wait()  # nothing changes any more

        return views()


async def test_a_controller_that_stops_rolling_ends_the_rollout_with_a_clear_error() -> None:
    fake = StalledController(["n1", "n2"], version="v1")
    fake.current = dataclasses.replace(fake.current, grace_seconds=0)  # the bound: ready timeout + the old pods' grace
    with pytest.raises(RolloutFailed) as failed:
        await Rollout(fake, Plan("v2", ready_timeout=0.2)).run()
    assert str(failed.value).startswith("the DaemonSet made no progress for 0.2s (Waiting for daemon set")
    assert "nodes not done: n2" in str(failed.value)

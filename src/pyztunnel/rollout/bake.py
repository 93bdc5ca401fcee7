"""The canary phase of a rollout: the first N nodes are upgraded one by one (drained first with --strategy drain),
then their new proxies are watched for the bake time through their own metrics, restarts and readiness (canary.py
decides); a bad verdict halts the rollout with the whole previous template restored, and with auto_rollback the
canary nodes are put back on it too."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from pyztunnel.rollout.backend import BackendError, ClusterBackend
from pyztunnel.rollout.canary import CanaryJudge, Sample, Verdict
from pyztunnel.rollout.plan import CanaryPlan, Progress, RolloutRun
from pyztunnel.rollout.store import NodeRecord, RolloutRecord


class CanaryHalted(Exception):
    pass


async def bake_proxies(
    backend: ClusterBackend, nodes: list[str], canary: CanaryPlan, on_verdict: Callable[[Verdict], None]
) -> Verdict:
    judge = CanaryJudge(canary.thresholds)
    deadline = time.monotonic() + canary.bake_seconds
    while True:
        proxies = [p for p in await backend.proxies() if p.node in nodes and p.updated and not p.terminating]
        for node in nodes:
            mine = [p for p in proxies if p.node == node]
            if not mine:  # the canary proxy is gone: as bad as unreachable
                judge.feed(Sample(f"node/{node}", False, 0, None))
            for p in mine:
                try:
                    text: str | None = await backend.scrape(p)
                except BackendError:
                    text = None
                judge.feed(Sample(p.name, p.ready, p.restarts, text))
        verdict = judge.verdict()
        on_verdict(verdict)
        left = deadline - time.monotonic()
        if verdict.halt or left <= 0:
            return verdict
        await asyncio.sleep(min(canary.interval, left))  # the sampling interval of the bake


async def run_canary(rollout: RolloutRun, record: RolloutRecord, canary: CanaryPlan) -> None:
    backend = rollout.backend
    nodes = list(record.canary.get("nodes") or record.nodes[: canary.count])
    record.canary = {"nodes": nodes, "status": "running"}
    drain = rollout.plan.strategy == "drain"
    # Kubernetes cannot surge a single node from the client: its canary nodes are replaced under OnDelete.
    surge = not drain and not backend.rolls_itself
    await rollout.set_strategy("OnDelete" if drain or backend.rolls_itself else "RollingUpdate")
    for node in nodes:
        await rollout.run_node(node, drain=drain, surge=surge)
    started = time.monotonic()

    def show(verdict: Verdict) -> None:
        status = "failed" if verdict.halt else "running"
        for node in nodes:
            rollout.emit(Progress(node, "bake", status, round(time.monotonic() - started, 3), verdict.describe()))

    verdict = await bake_proxies(backend, nodes, canary, show)
    record.canary["verdict"] = verdict.describe()
    if not verdict.halt:
        record.canary["status"] = "baked"
        for node in nodes:
            rollout.emit(Progress(node, "done", "done", record.node(node).elapsed, verdict.describe()))
        await rollout.store.save(record)
        return
    record.canary["status"] = "halted"
    previous = rollout.previous
    took = f"{time.monotonic() - started:.0f}s"
    head = f"canary halted after {took} of bake on {', '.join(nodes)}: {verdict.describe()}"
    await backend.restore_template(dataclasses.replace(previous, strategy=rollout.in_effect))
    if not canary.auto_rollback:
        raise CanaryHalted(
            f"{head}; the template is back to {previous.version} (all of it), the canary nodes keep "
            f"{rollout.plan.version} for inspection: 'pyztunnel upgrade --rollback' puts {previous.version} back there"
        )
    for node in nodes:
        rec: NodeRecord = record.node(node)
        back = await backend.replace_proxy(node, surge=surge, within=rollout.plan.ready_timeout)
        rec.phase, rec.status = "rolled-back", "pending"
        rollout.emit(Progress(node, "rolled-back", "failed", rec.elapsed, f"{back.name} ({back.version})"))
    raise CanaryHalted(f"{head}; rolled back: {', '.join(nodes)} run {previous.version} again (the whole template)")

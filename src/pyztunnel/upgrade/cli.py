"""`pyztunnel upgrade`: roll the node proxies to a new version, on the local cluster or (with --kubeconfig) on a
Kubernetes cluster, with a live progress view; resumable; --rollback, --dry-run, --canary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live

from pyztunnel import settings
from pyztunnel.errors import UserError
from pyztunnel.rollout.backend import BackendError, ClusterBackend, Template
from pyztunnel.rollout.canary import Thresholds
from pyztunnel.rollout.drain import DEFAULT_DRAIN_TIMEOUT, DEFAULT_EVICTION_RETRY, DrainOptions
from pyztunnel.rollout.drainfilter import DrainFlags
from pyztunnel.rollout.dryrun import plan_lines
from pyztunnel.rollout.plan import (
    DEFAULT_INTERVAL,
    DEFAULT_READY_TIMEOUT,
    CanaryPlan,
    Plan,
    RolloutFailed,
    RolloutRefused,
)
from pyztunnel.rollout.store import RolloutRecord, RolloutStore
from pyztunnel.rollout.strategies import Rollout
from pyztunnel.rollout.view import ProgressView
from pyztunnel.settings import Duration, setting


@settings.group("upgrade")
@dataclasses.dataclass(frozen=True)
class UpgradeSettings:
    version: str = setting("", "The proxy version to roll out (the image tag on Kubernetes)")
    image: str = setting("", "Kubernetes: a whole image reference to roll out instead of --version")
    strategy: str = setting(
        "rolling",
        "rolling: RollingUpdate (new proxy beside the old per node); drain: OnDelete + cordon, evict, replace",
        choices=("rolling", "drain"),
    )
    rollback: bool = setting(False, "Restore the template before the last rollout (all of it, not only the version)")
    dry_run: bool = setting(False, "Print what the rollout would do and change nothing")
    restart: bool = setting(False, "Discard the saved state of an unfinished rollout and start afresh")
    grace: int | None = setting(None, "terminationGracePeriodSeconds for the DaemonSet (and its env)", ge=0, le=86400)
    nodes: list[str] = setting([], "Only these nodes, comma-separated (none: every node)")
    name: str = setting("demo", "The local cluster's name (without --kubeconfig)")
    kubeconfig: str = setting("", "A kubeconfig: upgrade this Kubernetes cluster instead of the local one")
    context: str = setting("", "The kubeconfig context (default: its current-context)")
    daemonset: str = setting("", "NAMESPACE/NAME of the proxy DaemonSet (default: the one labelled app=ztunnel)")
    max_surge: int = setting(1, "RollingUpdate: nodes that may run two proxies at once", ge=0)
    max_unavailable: int = setting(0, "RollingUpdate: nodes that may be without a ready proxy at once", ge=0)
    ready_timeout: Duration = setting(
        Duration(DEFAULT_READY_TIMEOUT), "How long a node's new proxy may take to be Ready", gt=0
    )
    ignore_daemonsets: bool = setting(True, "drain: leave other DaemonSets' pods (kubectl drain --ignore-daemonsets)")
    delete_emptydir_data: bool = setting(False, "drain: evict pods with emptyDir volumes (their data is lost)")
    force: bool = setting(False, "drain: evict pods that declare no controller (they are not recreated)")
    eviction_retry: Duration = setting(
        Duration(DEFAULT_EVICTION_RETRY), "drain: retry a 429 (PDB) eviction after", gt=0
    )
    drain_timeout: Duration = setting(
        Duration(DEFAULT_DRAIN_TIMEOUT), "drain: give up on a node's evictions after", gt=0
    )
    poll_interval: Duration = setting(
        Duration(1.0), "drain: how often an evicted pod is checked for being gone (kubectl's 1s)", gt=0
    )
    canary: int = setting(0, "Upgrade this many nodes first and bake them before the rest (0: no canary)", ge=0)
    bake: Duration = setting(Duration(60.0), "Canary: how long to watch the canary proxies", ge=0)
    auto_rollback: bool = setting(False, "Canary: on a bad verdict also put the canary nodes back on the old version")
    canary_interval: Duration = setting(Duration(DEFAULT_INTERVAL), "Canary: how often the proxies are sampled", gt=0)
    canary_max_failed: int = setting(0, "Canary: halt above this many failed connections", ge=0)
    canary_max_error_closes: int = setting(
        0, "Canary: halt above this many connections closed with an error flag", ge=0
    )
    canary_max_restarts: int = setting(0, "Canary: halt above this many proxy restarts", ge=0)
    canary_max_flaps: int = setting(0, "Canary: halt above this many readiness flaps (Ready → not Ready)", ge=0)


class RolloutStopped(UserError):
    pass


def plan_of(cfg: UpgradeSettings, target: Template | None = None) -> Plan:
    canary = None
    if cfg.canary:
        thresholds = Thresholds(
            cfg.canary_max_failed, cfg.canary_max_error_closes, cfg.canary_max_restarts, cfg.canary_max_flaps
        )
        canary = CanaryPlan(cfg.canary, float(cfg.bake), cfg.auto_rollback, float(cfg.canary_interval), thresholds)
    flags = DrainFlags(cfg.ignore_daemonsets, cfg.delete_emptydir_data, cfg.force)
    version = target.version if target is not None else (cfg.image or cfg.version)
    return Plan(
        version=version,
        strategy="drain" if cfg.strategy == "drain" else "rolling",
        nodes=tuple(cfg.nodes) or None,
        max_surge=cfg.max_surge,
        max_unavailable=cfg.max_unavailable,
        grace_seconds=cfg.grace,
        ready_timeout=float(cfg.ready_timeout),
        image=cfg.image or None,
        drain=DrainOptions(flags, float(cfg.eviction_retry), float(cfg.drain_timeout)),
        canary=canary,
        target=target,
    )


@contextlib.asynccontextmanager
async def open_backend(cfg: UpgradeSettings) -> AsyncIterator[tuple[ClusterBackend, str]]:
    if cfg.kubeconfig:
        from pyztunnel.k8s.backend import connect

        try:
            kube_cm = connect(Path(cfg.kubeconfig), cfg.context or None, cfg.daemonset or None)
            kube = await kube_cm.__aenter__()
        except BackendError as exc:
            raise UserError(str(exc)) from None
        kube.gone_poll = float(cfg.poll_interval)
        try:
            yield kube, kube.where
        finally:
            await kube_cm.__aexit__(None, None, None)
        return
    from pyztunnel.rollout.local import LocalBackend

    async with LocalBackend(cfg.name) as local:
        yield local, f"the local cluster {cfg.name!r}"


async def rollback_target(backend: ClusterBackend, store: RolloutStore) -> Template:
    """The template before the last rollout: our saved state's, else the cluster's history (ControllerRevisions)."""
    record = await store.load()
    if record is not None and record.previous is not None:
        return Template.from_dict(record.previous)
    history = await backend.history()
    if history:
        return history[0]
    raise UserError("nothing to roll back to: no saved rollout state and no earlier revision in the cluster")


async def aftermath(backend: ClusterBackend, store: RolloutStore, console: Console) -> None:
    """After a stop or an interruption: what is cordoned and what the resume state says."""
    try:
        cordoned = [n.name for n in await backend.nodes() if not n.schedulable]
        record = await store.load()
    except (BackendError, UserError, ValueError) as exc:
        console.print(f"could not read the cluster after the stop: {exc}", soft_wrap=True)
        return
    console.print(f"cordoned nodes: {', '.join(cordoned) if cordoned else 'none'}", highlight=False, soft_wrap=True)
    summary = record.summary() if record else "none"
    console.print(f"resume state ({store.where}): {summary}", highlight=False, soft_wrap=True)


async def _upgrade(cfg: UpgradeSettings, console: Console) -> RolloutRecord | None:
    async with open_backend(cfg) as (backend, where):
        store = RolloutStore(backend.state)
        if cfg.restart:
            await backend.state.save(None)
        target = await rollback_target(backend, store) if cfg.rollback else None
        plan = plan_of(cfg, target)
        if cfg.dry_run:
            for line in await plan_lines(backend, plan, where):
                console.print(line, highlight=False)
            return None
        nodes = sorted(plan.nodes) if plan.nodes else sorted(n.name for n in await backend.nodes())
        saved = await _load(store)
        if saved is not None and saved.resumes(plan.version, plan.strategy) and saved.mismatch(plan.params()) is None:
            done = [n for n in saved.nodes if saved.node(n).status == "done"]
            console.print(f"resuming the rollout to {plan.version} ({len(done)}/{len(saved.nodes)} nodes done)")
            nodes = saved.nodes
        view = ProgressView(nodes)
        if saved is not None and saved.resumes(plan.version, plan.strategy):
            view.seed(saved)
        verb = "roll back to" if target else "upgrade to"
        title = f"{verb} {plan.version} ({plan.strategy}) on {where}"
        rollout = Rollout(backend, plan, store, view.update, lambda w: console.print(w, highlight=False))
        try:
            # The live view redraws itself (running rows' elapsed keeps ticking); the final table stays on screen,
            # also when a step failed or the run was interrupted.
            with Live(get_renderable=lambda: view.table(title), console=console, refresh_per_second=8, transient=True):
                return await rollout.run()
        except (RolloutFailed, BackendError, asyncio.CancelledError):
            console.print(view.table(title))
            await aftermath(backend, store, console)
            raise
        finally:
            if rollout.record is not None and rollout.record.status == "done":
                console.print(view.table(title))


async def _load(store: RolloutStore) -> RolloutRecord | None:
    try:
        return await store.load()
    except ValueError:
        return None  # Rollout refuses it with the reason


@click.command("upgrade")
@settings.cli_options(UpgradeSettings)
def upgrade(**kw: Any) -> None:
    """Upgrade the node proxies: rolling (default) or node drain, on the local cluster or a Kubernetes cluster
    (--kubeconfig). Resumable: re-run the same command after an interruption and it continues where it stopped."""
    cfg = settings.load(UpgradeSettings, cli=kw)
    if not (cfg.version or cfg.image or cfg.rollback):
        raise UserError("--version (or --image, or --rollback) is required: what to roll out")
    if cfg.version and cfg.image:
        raise UserError("give --version or --image, not both")
    try:
        plan_of(cfg, None if not cfg.rollback else Template("-", "RollingUpdate", 0, {})).check()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    console = Console()
    try:
        record = asyncio.run(_upgrade(cfg, console))
    except RolloutRefused as exc:
        raise UserError(str(exc)) from None
    except (RolloutFailed, BackendError) as exc:
        raise RolloutStopped(f"{exc} (fix the cause and re-run to continue)") from None
    except KeyboardInterrupt:
        console.print("interrupted; re-run the same command to continue where it stopped")
        raise
    if record is None:
        return
    took = sum(r.elapsed for r in record.progress.values())
    verb = "rollback to" if record.rollback else "upgrade to"
    console.print(f"{verb} {record.version} done on {len(record.nodes)} node(s) ({took:.1f}s of node work)")

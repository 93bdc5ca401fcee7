"""`pyztunnel upgrade`: roll the node proxies of the local cluster to a new version, with a live progress view."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pyztunnel import settings
from pyztunnel.errors import UserError
from pyztunnel.rollout.local import LocalBackend
from pyztunnel.rollout.store import RolloutRecord, RolloutStore
from pyztunnel.rollout.strategies import DEFAULT_READY_TIMEOUT, Plan, Progress, Rollout, RolloutFailed
from pyztunnel.settings import Duration, setting


@settings.group("upgrade")
@dataclasses.dataclass(frozen=True)
class UpgradeSettings:
    version: str = setting("", "The proxy version to roll out (the DaemonSet's version tag)")
    strategy: str = setting(
        "rolling",
        "rolling: new proxy beside the old one per node (RollingUpdate); drain: cordon, evict, replace (OnDelete)",
        choices=("rolling", "drain"),
    )
    grace: int | None = setting(
        None,
        "terminationGracePeriodSeconds for the DaemonSet and the proxies this rollout creates (an old proxy drains "
        "for the grace it was created with, as in Kubernetes)",
    )
    nodes: list[str] = setting([], "Only these nodes, comma-separated (none: every node)")
    name: str = setting("demo", "The local cluster's name")
    max_surge: int = setting(1, "RollingUpdate: nodes that may run two proxies at once")
    max_unavailable: int = setting(0, "RollingUpdate: nodes that may be without a ready proxy at once")
    ready_timeout: Duration = setting(Duration(DEFAULT_READY_TIMEOUT), "How long a new proxy may take to be ready")


class RolloutStopped(UserError):
    exit_code = 1


STATUS_STYLE = {"done": "green", "running": "yellow", "failed": "bold red", "pending": "dim"}


class ProgressView:
    """Node, phase, status, elapsed: one row per node, redrawn on every progress event."""

    def __init__(self, nodes: list[str]) -> None:
        self.rows: dict[str, Progress] = {n: Progress(n, "pending", "pending", 0.0) for n in nodes}
        self.seen: dict[str, float] = {}  # when each row's event arrived, so running rows keep ticking

    def update(self, event: Progress) -> None:
        self.rows[event.node] = event
        self.seen[event.node] = time.monotonic()

    def elapsed(self, row: Progress) -> float:
        if row.status != "running" or row.node not in self.seen:
            return row.elapsed
        return row.elapsed + time.monotonic() - self.seen[row.node]

    def table(self, title: str) -> Table:
        table = Table(title=title, title_justify="left")
        for col in ("node", "phase", "status", "elapsed", "detail"):
            table.add_column(col)
        for row in self.rows.values():
            style = STATUS_STYLE.get(row.status, "")
            detail = row.detail if row.status == "failed" else ""
            table.add_row(row.node, row.phase, f"[{style}]{row.status}[/]", f"{self.elapsed(row):.1f}s", detail)
        return table

    def seed(self, record: RolloutRecord) -> None:
        for node, rec in record.progress.items():
            if node in self.rows or node in record.nodes:
                self.rows[node] = Progress(node, rec.phase, rec.status, rec.elapsed, rec.error or "")


async def _upgrade(cfg: UpgradeSettings, console: Console) -> RolloutRecord:
    plan = Plan(
        version=cfg.version,
        strategy="drain" if cfg.strategy == "drain" else "rolling",
        nodes=tuple(cfg.nodes) or None,
        max_surge=cfg.max_surge,
        max_unavailable=cfg.max_unavailable,
        grace_seconds=cfg.grace,
        ready_timeout=float(cfg.ready_timeout),
    )
    async with LocalBackend(cfg.name) as backend:
        store = RolloutStore(backend.rollout_state)
        try:
            previous = store.load()
        except ValueError as exc:
            raise UserError(str(exc)) from None
        nodes = [n.name for n in await backend.nodes()]
        if previous is not None and previous.resumes(plan.version, plan.strategy):
            done = [n for n in previous.nodes if previous.node(n).status == "done"]
            console.print(f"resuming the rollout to {plan.version} ({len(done)}/{len(previous.nodes)} nodes done)")
            nodes = previous.nodes
        elif plan.nodes:
            nodes = list(plan.nodes)
        view = ProgressView(nodes)
        if previous is not None and previous.resumes(plan.version, plan.strategy):
            view.seed(previous)
        title = f"upgrade to {plan.version} ({plan.strategy})"
        try:
            # The live view redraws itself (running rows' elapsed keeps ticking); the final table stays on screen,
            # also when a step failed or the run was interrupted.
            with Live(get_renderable=lambda: view.table(title), console=console, refresh_per_second=8, transient=True):
                return await Rollout(backend, plan, store, view.update).run()
        finally:
            console.print(view.table(title))


@click.command("upgrade")
@settings.cli_options(UpgradeSettings)
def upgrade(**kw: Any) -> None:
    """Upgrade the node proxies of the local cluster: rolling surge (default) or node drain. Resumable: re-run the
    same command after an interruption and it continues where it stopped."""
    cfg = settings.load(UpgradeSettings, cli=kw)
    if not cfg.version:
        raise UserError("--version is required (the proxy version to roll out)")
    try:
        Plan(cfg.version, max_surge=cfg.max_surge, max_unavailable=cfg.max_unavailable).check()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    console = Console()
    try:
        record = asyncio.run(_upgrade(cfg, console))
    except RolloutFailed as exc:
        raise RolloutStopped(f"{exc} (state in rollout.json; fix the cause and re-run to continue)") from None
    except KeyboardInterrupt:
        console.print("interrupted; re-run the same command to continue where it stopped")
        raise
    took = sum(r.elapsed for r in record.progress.values())
    console.print(f"upgrade to {record.version} done on {len(record.nodes)} node(s) ({took:.1f}s of node work)")

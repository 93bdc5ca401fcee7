"""The live progress table of `pyztunnel upgrade`: one row per node, redrawn on every progress event."""

from __future__ import annotations

import time

from rich.table import Table

from pyztunnel.rollout.plan import Progress
from pyztunnel.rollout.store import RolloutRecord

STATUS_STYLE = {"done": "green", "running": "yellow", "failed": "bold red", "pending": "dim"}


def age(created: float, now: float | None = None) -> str:
    """kubectl's AGE column: 45s, 3m12s, 2h5m."""
    if created <= 0:
        return ""
    seconds = max(0, int((now or time.time()) - created))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60}m"


class ProgressView:
    def __init__(self, nodes: list[str]) -> None:
        self.rows: dict[str, Progress] = {n: Progress(n, "pending", "pending", 0.0) for n in nodes}
        self.seen: dict[str, float] = {}  # when each row's event arrived, so running rows keep ticking
        self.proxy: dict[str, Progress] = {}  # the last event that named the node's new proxy

    def update(self, event: Progress) -> None:
        self.rows[event.node] = event
        self.seen[event.node] = time.monotonic()
        if event.revision:
            self.proxy[event.node] = event

    def elapsed(self, row: Progress) -> float:
        if row.status != "running" or row.node not in self.seen:
            return row.elapsed
        return row.elapsed + time.monotonic() - self.seen[row.node]

    def table(self, title: str) -> Table:
        table = Table(title=title, title_justify="left")
        show_proxy = bool(self.proxy)
        columns = [
            "node",
            "phase",
            "status",
            "elapsed",
            *(["revision", "ready", "age"] if show_proxy else []),
            "detail",
        ]
        for col in columns:
            table.add_column(col)
        for row in self.rows.values():
            style = STATUS_STYLE.get(row.status, "")
            cells = [row.node, row.phase, f"[{style}]{row.status}[/]", f"{self.elapsed(row):.1f}s"]
            if show_proxy:
                p = self.proxy.get(row.node)
                ready = "" if p is None or p.ready is None else ("True" if p.ready else "False")
                cells += [p.revision if p else "", ready, age(p.created) if p else ""]
            cells.append(row.detail if row.status == "failed" or row.phase == "bake" else "")
            table.add_row(*cells)
        return table

    def seed(self, record: RolloutRecord) -> None:
        for node, rec in record.progress.items():
            if node in self.rows or node in record.nodes:
                self.rows[node] = Progress(node, rec.phase, rec.status, rec.elapsed, rec.error or "")

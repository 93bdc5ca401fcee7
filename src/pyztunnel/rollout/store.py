"""The resumable state of a rollout (`rollout.json` in the cluster's state dir), atomically replaced at every step.

Re-running the same rollout (same version and strategy) continues it: finished nodes are skipped and the node that was
in progress is reconciled from what the cluster shows (every step of a strategy is idempotent), so the phase recorded
here is for people and the progress view, not a promise about the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class NodeRecord:
    phase: str = "pending"
    status: str = "pending"  # pending | running | done | failed
    elapsed: float = 0.0
    previous_version: str | None = None
    new_proxy: str | None = None
    error: str | None = None


@dataclasses.dataclass
class RolloutRecord:
    version: str
    strategy: str
    nodes: list[str]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "running"  # running | done | failed
    error: str | None = None
    started: float = dataclasses.field(default_factory=time.time)
    progress: dict[str, NodeRecord] = dataclasses.field(default_factory=dict)

    def node(self, name: str) -> NodeRecord:
        return self.progress.setdefault(name, NodeRecord())

    def resumes(self, version: str, strategy: str) -> bool:
        return self.status != "done" and self.version == version and self.strategy == strategy


class RolloutStore:
    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: keep it in memory only

    def load(self) -> RolloutRecord | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            progress = {name: NodeRecord(**rec) for name, rec in doc.pop("progress", {}).items()}
            return RolloutRecord(**doc, progress=progress)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{self.path}: unreadable rollout state ({exc}); delete it to start afresh") from None

    def save(self, record: RolloutRecord) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
        os.replace(tmp, self.path)

"""The resumable state of a rollout, replaced at every step: `rollout.json` in the local cluster's state dir, or an
annotation on the Kubernetes DaemonSet (so a run interrupted on one machine continues from any other).

Re-running the same request continues an unfinished rollout: finished nodes are skipped and the node that was in
progress is reconciled from what the cluster shows (every step of a strategy is idempotent), so the phase recorded
here is for people and the progress view, not a promise about the cluster. A different request for the same target
is refused in one line (`RolloutRecord.mismatch`): resuming it would silently ignore the new flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from pyztunnel.rollout.backend import StateStore


@dataclasses.dataclass
class NodeRecord:
    phase: str = "pending"
    status: str = "pending"  # pending | running | done | failed
    elapsed: float = 0.0
    previous_version: str | None = None
    new_proxy: str | None = None
    error: str | None = None


# The request fields compared on resume, with the flag a person would have typed for each.
REQUEST_FLAGS = {
    "nodes": "--nodes",
    "max_surge": "--max-surge",
    "max_unavailable": "--max-unavailable",
    "grace_seconds": "--grace",
    "canary": "--canary",
    "bake_seconds": "--bake",
    "auto_rollback": "--auto-rollback",
    "image": "--image",
}


@dataclasses.dataclass
class RolloutRecord:
    version: str
    strategy: str
    nodes: list[str]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # the request (REQUEST_FLAGS' keys)
    status: str = "running"  # running | done | failed | halted
    error: str | None = None
    started: float = dataclasses.field(default_factory=time.time)
    progress: dict[str, NodeRecord] = dataclasses.field(default_factory=dict)
    previous: dict[str, Any] | None = None  # the whole template before this rollout (Template.as_dict())
    rollback: bool = False  # this rollout restores an earlier template
    canary: dict[str, Any] = dataclasses.field(default_factory=dict)  # nodes, status (pending|baked|halted), verdict

    def node(self, name: str) -> NodeRecord:
        return self.progress.setdefault(name, NodeRecord())

    def unfinished(self) -> bool:
        return self.status != "done"

    def same_target(self, version: str, strategy: str) -> bool:
        return self.version == version and self.strategy == strategy

    def resumes(self, version: str, strategy: str) -> bool:
        return self.unfinished() and self.same_target(version, strategy)

    def mismatch(self, params: dict[str, Any]) -> str | None:
        """The first request field that differs from the saved one, as 'FLAG (saved: X, now: Y)'; None if equal."""
        for key, flag in REQUEST_FLAGS.items():
            saved, now = self.params.get(key), params.get(key)
            if saved != now:
                return f"{flag} (saved: {_show(saved)}, now: {_show(now)})"
        return None

    def summary(self) -> str:
        done = [n for n in self.nodes if self.node(n).status == "done"]
        running = [f"{n} ({self.node(n).phase})" for n in self.nodes if self.node(n).status in ("running", "failed")]
        text = f"rollout to {self.version} ({self.strategy}): {self.status}, {len(done)}/{len(self.nodes)} nodes done"
        return text + (f", stopped at {', '.join(running)}" if running else "")


def _show(value: Any) -> str:
    if value is None or value == []:
        return "all nodes" if value == [] else "unset"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def encode(record: RolloutRecord) -> str:
    return json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n"


def decode(text: str, where: str) -> RolloutRecord:
    try:
        doc = json.loads(text)
        progress = {name: NodeRecord(**rec) for name, rec in doc.pop("progress", {}).items()}
        return RolloutRecord(**doc, progress=progress)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{where}: unreadable rollout state ({exc}); remove it to start afresh") from None


class FileState:
    """The state as a file, atomically replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    async def load(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot read the rollout state ({exc.strerror})") from None

    async def save(self, text: str | None) -> None:
        if text is None:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, self.path)


class MemoryState:
    def __init__(self) -> None:
        self.text: str | None = None
        self.where = "memory"

    async def load(self) -> str | None:
        return self.text

    async def save(self, text: str | None) -> None:
        self.text = text


class RolloutStore:
    def __init__(self, state: StateStore | None = None) -> None:
        self.state: StateStore = state if state is not None else MemoryState()

    @property
    def where(self) -> str:
        return self.state.where

    async def load(self) -> RolloutRecord | None:
        text = await self.state.load()
        return None if text is None else decode(text, self.where)

    async def save(self, record: RolloutRecord) -> None:
        await self.state.save(encode(record))

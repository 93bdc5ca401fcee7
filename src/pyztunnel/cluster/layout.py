"""Where a cluster keeps its files (docs/architecture.md, state directory)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pyztunnel.errors import UserError

DEFAULT_BASE = Path("/run/pyztunnel")
DEFAULT_NAME = "demo"
NAME_RULE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def base_dir() -> Path:
    return Path(os.environ.get("PYZTUNNEL_STATE_DIR") or DEFAULT_BASE)


def check_name(name: str) -> str:
    if not NAME_RULE.match(name):
        raise UserError(f"cluster name {name!r} is not valid: use a lowercase letter then up to 11 letters or digits")
    return name


@dataclass(frozen=True)
class Layout:
    root: Path  # /run/pyztunnel/<cluster>

    @classmethod
    def of(cls, name: str, base: Path | None = None) -> Layout:
        return cls((base or base_dir()) / check_name(name))

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def socket(self) -> Path:
        return self.root / "controller.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "controller.pid"

    @property
    def workloads(self) -> Path:
        return self.root / "workloads.yaml"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def pod_dir(self, pod: str) -> Path:
        return self.root / "pods" / pod

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

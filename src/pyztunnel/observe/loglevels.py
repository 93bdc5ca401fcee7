"""Log filters in ztunnel's `RUST_LOG` syntax, applied to Python loggers (the admin `/logging` endpoint, §6.2).

A filter is a list of directives, `level` (the default) or `target=level`, later ones winning, as tracing's filter:
`hickory_server::server=off,info`, `access=debug`. Targets are ztunnel's names for our loggers (observe/logging.py
prints `pyztunnel.proxy.inbound` as `proxy::inbound`); `ztunnel::x` and `pyztunnel::x` mean the same module.
Parsing and rendering are pure; `LogLevels.apply` is the one place that changes `logging` levels.
"""

from __future__ import annotations

import logging
import os
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field

LEVELS: dict[str, int] = {
    "trace": logging.DEBUG,  # Python has no level below DEBUG that our loggers use
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class LogFilter:
    default: str = "info"
    targets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str, base: LogFilter | None = None) -> LogFilter:
        """`spec` added on top of `base` (ztunnel appends the new directives to the current filter)."""
        default = base.default if base else "info"
        targets = dict(base.targets) if base else {}
        for raw in spec.split(","):
            part = raw.strip()
            if not part:
                continue
            target, sep, level = part.rpartition("=")
            level = level.strip().lower()
            if level not in LEVELS:
                raise FilterError(f"invalid level {level!r} (use error, warn, info, debug, trace or off)")
            if sep:
                name = target.strip()
                if not name:
                    raise FilterError(f"invalid directive {part!r}")
                targets.pop(name, None)  # re-insert so the rendering shows the newest directive last
                targets[name] = level
            else:
                default = level
        return cls(default, targets)

    def render(self) -> str:
        return ",".join([*(f"{t}={lvl}" for t, lvl in self.targets.items()), self.default])


# pyztunnel's top-level packages (DESIGN.md §6), so `proxy::inbound` needs no crate prefix; plus whatever exists.
_KNOWN = ("proxy", "agent", "cluster", "identity", "workloads", "lifecycle", "observe", "protocols", "rollout", "load")


def _subpackages() -> frozenset[str]:
    import pyztunnel

    return frozenset(_KNOWN) | {m.name for m in pkgutil.iter_modules(pyztunnel.__path__)}


def logger_name(target: str) -> str:
    """The Python logger a ztunnel-style target names: `proxy::inbound` → `pyztunnel.proxy.inbound`."""
    parts = [p for p in target.split("::") if p]
    if parts and parts[0] in ("ztunnel", "pyztunnel"):
        parts = ["pyztunnel", *parts[1:]]
    elif parts and parts[0] in _subpackages():
        parts = ["pyztunnel", *parts]
    return ".".join(parts)


def initial_filter(environ: Mapping[str, str] | None = None) -> LogFilter:
    """The filter a process starts with, read as observe/logging.setup reads it: RUST_LOG's directives (default
    `info`), with LOG_LEVEL, when set, as the default level."""
    env = os.environ if environ is None else environ
    try:
        base = LogFilter.parse(env.get("RUST_LOG") or "info")
    except FilterError:
        base = LogFilter()
    level = (env.get("LOG_LEVEL") or "").strip().lower()
    if level in LEVELS:
        base = LogFilter(level, base.targets)
    return base


class LogLevels:
    """The live filter of this process. `reset` returns to the filter it started with."""

    def __init__(self, initial: LogFilter | None = None) -> None:
        self.initial = initial or initial_filter()
        self.current = self.initial
        self._touched: set[str] = set()

    def set(self, spec: str, reset: bool = False) -> LogFilter:
        base = self.initial if reset else self.current
        new = LogFilter.parse(spec, base)  # raises FilterError before anything changes
        self.apply(new)
        return new

    def apply(self, new: LogFilter) -> None:
        for name in self._touched - {logger_name(t) for t in new.targets}:
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger().setLevel(LEVELS[new.default])
        self._touched = set()
        for target, level in new.targets.items():
            name = logger_name(target)
            logging.getLogger(name).setLevel(LEVELS[level])
            self._touched.add(name)
        self.current = new

"""Reload the LOCAL_XDS_PATH file when it changes; a bad file keeps the last good config and logs why.

The file is replaced atomically by its writer (rename), so a change shows as a new (inode, mtime, size); polling that
stat is cheap and needs no inotify dependency.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex

_log = logging.getLogger("pyztunnel.workloads.watch")

Signature = tuple[int, int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size


class ConfigWatch:
    """Holds the current index; `check()` reloads if the file changed. `run()` polls until cancelled."""

    def __init__(self, path: Path, on_change: Callable[[WorkloadIndex], None] | None = None) -> None:
        self.path = path
        self.on_change = on_change
        self.index = WorkloadIndex()
        self.loaded = False
        self.last_error: str | None = None
        self.reloads = 0
        self._signature: Signature = None
        self.changed = asyncio.Event()

    def check(self) -> bool:
        """Reload if the file changed; True if a new config is in force."""
        signature = _signature(self.path)
        if signature == self._signature and self.loaded:
            return False
        self._signature = signature
        try:
            config = local.load(self.path)
        except local.ConfigError as exc:
            if str(exc) != self.last_error:
                _log.error("config not loaded, keeping the last good one", extra={"fields": {"error": str(exc)}})
            self.last_error = str(exc)
            return False
        self.last_error = None
        self.index = WorkloadIndex(config)
        self.loaded = True
        self.reloads += 1
        _log.info(
            "config loaded",
            extra={
                "fields": {
                    "path": str(self.path),
                    "workloads": len(config.workloads),
                    "services": len(config.services),
                    "policies": len(config.policies),
                }
            },
        )
        if self.on_change is not None:
            self.on_change(self.index)
        self.changed.set()
        self.changed = asyncio.Event()
        return True

    async def run(self, interval: float) -> None:
        while True:
            self.check()
            await asyncio.sleep(interval)

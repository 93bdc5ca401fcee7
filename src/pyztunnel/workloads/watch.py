"""Reload the LOCAL_XDS_PATH file when it changes; a bad file keeps the last good config and logs why.

The file is replaced atomically by its writer (rename), so a change shows as a new (inode, mtime, size); polling that
stat is cheap and needs no inotify dependency.

`version` names the config in force: the first 16 hex digits of the SHA-256 of the file's bytes as loaded. The proxy
shows it on its readiness endpoint, so whoever wrote the file (the cluster controller) can tell that it is in force.
"""

from __future__ import annotations

import asyncio
import hashlib
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
        self.version: str | None = None  # of the config in force
        self._signature: Signature = None
        self.changed = asyncio.Event()

    def check(self) -> bool:
        """Reload if the file changed; True if a new config is in force."""
        signature = _signature(self.path)
        if signature == self._signature and self.loaded:
            return False
        self._signature = signature
        try:
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise local.ConfigError(f"{self.path}:0: cannot read: {exc.strerror}") from None
            config = local.parse(data.decode(errors="replace"), str(self.path))
        except local.ConfigError as exc:
            if str(exc) != self.last_error:
                _log.error("config not loaded, keeping the last good one", extra={"fields": {"error": str(exc)}})
            self.last_error = str(exc)
            return False
        self.last_error = None
        self.index = WorkloadIndex(config)
        self.loaded = True
        self.version = config_version(data)
        self.reloads += 1
        _log.info(
            "config loaded",
            extra={
                "fields": {
                    "path": str(self.path),
                    "workloads": len(config.workloads),
                    "services": len(config.services),
                    "policies": len(config.policies),
                    "version": self.version,
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


def config_version(data: bytes) -> str:
    """The version a LOCAL_XDS_PATH file's bytes are known by (the proxy's readiness header; the controller's)."""
    return hashlib.sha256(data).hexdigest()[:16]

"""Reload the LOCAL_XDS_PATH file when it changes; a bad file keeps the last good config and logs why in one line,
and the watch goes on (whatever goes wrong in one check never ends it), so a later good file is loaded.

The file is replaced atomically by its writer (rename), so a change shows as a new (inode, mtime, size); polling that
stat is cheap and needs no inotify dependency.

Reading, parsing and validating happen in a thread (`aio.in_thread`): a 10 000-workload file is seconds of CPU, and
the loop must keep serving traffic and readiness meanwhile. The result is applied on the loop, in one step (the
index changes between two awaits, as an XDS response does), so a connection never sees half a file.

`version` names the config in force: the first 16 hex digits of the SHA-256 of the file's bytes as loaded. The proxy
shows it on its readiness endpoint, so whoever wrote the file (the cluster controller) can tell that it is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from pyztunnel import yamlfile
from pyztunnel.aio import in_thread
from pyztunnel.workloads import local
from pyztunnel.workloads.index import LOCAL, WorkloadIndex
from pyztunnel.workloads.model import LocalConfig

_log = logging.getLogger("pyztunnel.workloads.watch")

Signature = tuple[int, int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size


class ConfigWatch:
    """Feeds the file into an index (its LOCAL source; the proxy's shared one, or its own); `check()` reloads if the
    file changed. `run()` polls until cancelled."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[WorkloadIndex], None] | None = None,
        index: WorkloadIndex | None = None,
        max_bytes: int = yamlfile.MAX_BYTES,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.on_change = on_change
        self.index = index if index is not None else WorkloadIndex()
        self.loaded = False
        self.last_error: str | None = None
        self.reloads = 0
        self.version: str | None = None  # of the config in force
        self._signature: Signature = None
        self.changed = asyncio.Event()

    async def check(self) -> bool:
        """Reload if the file changed; True if a new config is in force. A bad file is logged (once) and changes
        nothing."""
        if _signature(self.path) == self._signature and self.loaded:
            return False
        try:
            await self.load()
        except local.ConfigError as exc:
            self._failed(str(exc))
            return False
        return True

    async def load(self) -> None:
        """Load the file now (the proxy's start: a file it cannot use is the one line it exits with). ConfigError
        if it cannot be used; the config in force is then unchanged."""
        self._signature = _signature(self.path)  # before reading: a change while we read is seen next time
        config, version = await in_thread(lambda: read_config(self.path, self.max_bytes), "config-parse")
        self.last_error = None
        self.index.replace(LOCAL, config)
        self.loaded = True
        self.version = version
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

    def _failed(self, error: str) -> None:
        if error != self.last_error:
            _log.error("config not loaded, keeping the last good one", extra={"fields": {"error": error}})
        self.last_error = error

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # a bug in one check must not end the watch: later files are still loaded
                self._failed(f"{self.path}: cannot check the config: {type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)  # the poll interval


def config_version(data: bytes) -> str:
    """The version a LOCAL_XDS_PATH file's bytes are known by (the proxy's readiness header; the controller's)."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_config(path: Path, max_bytes: int = yamlfile.MAX_BYTES) -> tuple[LocalConfig, str]:
    """The file's config and version (blocking: seconds of CPU for a big file). Raises ConfigError."""
    data = local.read_bytes(path, max_bytes)
    with _collector_paused():
        return local.parse(local.decode(data, path), str(path)), config_version(data)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Without the cyclic collector while a file is parsed: the parse's millions of allocations set it off again and
    again, each run a walk of the growing node graph holding the GIL, which stalls the event loop (10 000 workloads:
    the loop's longest pause ~1.8 s with it, ~0.2 s without, and the parse twice as fast). The parse leaves no cycles
    behind worth collecting sooner; the collector resumes after it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

"""What every pod's proxy shares: settings, the current workload index, certificates, telemetry, the registry of
live connections (drain resets what is left in it), and the one source of listening sockets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from pyztunnel.identity.config import default_key_dir
from pyztunnel.identity.tls import ContextCache
from pyztunnel.lifecycle.drainer import ConnectionSet
from pyztunnel.proxy.certs import CertSource
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.proxy.netsock import ListenerSource
from pyztunnel.proxy.parking import ResumeRegistry
from pyztunnel.proxy.telemetry import Telemetry
from pyztunnel.workloads.index import WorkloadIndex


class IndexHolder:
    """The current index, updated in place by the config sources (or swapped whole, in tests). `wait_change()` wakes
    waiters on the next change."""

    def __init__(self, index: WorkloadIndex | None = None) -> None:
        self.index = index or WorkloadIndex()
        self.version = 0
        self._changed = asyncio.Event()
        self._subscribers: list[Callable[[WorkloadIndex], object]] = []

    def subscribe(self, callback: Callable[[WorkloadIndex], object]) -> None:
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[WorkloadIndex], object]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    def set(self, index: WorkloadIndex) -> None:
        self.index = index
        self.changed()

    def changed(self) -> None:
        """The index was updated in place (an XDS delta, a reloaded file): wake waiters, tell subscribers."""
        index = self.index
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        for callback in list(self._subscribers):
            callback(index)

    async def wait_change(self) -> None:
        await self._changed.wait()


@dataclasses.dataclass
class Shared:
    settings: ProxySettings
    certs: CertSource
    indexes: IndexHolder = dataclasses.field(default_factory=IndexHolder)
    telemetry: Telemetry = dataclasses.field(default_factory=Telemetry)
    connections: ConnectionSet = dataclasses.field(default_factory=ConnectionSet)
    listeners: ListenerSource = dataclasses.field(default_factory=ListenerSource)
    key_dir: Path = dataclasses.field(default_factory=default_key_dir)
    cluster_id: str = "Kubernetes"
    contexts: ContextCache | None = None
    resumes: ResumeRegistry = dataclasses.field(init=False)  # stopped HBONE streams' app sockets, parked

    def __post_init__(self) -> None:
        if self.contexts is None:
            self.contexts = ContextCache(self.key_dir)
        self.resumes = ResumeRegistry(self.telemetry, self.connections)

    @property
    def tls(self) -> ContextCache:
        assert self.contexts is not None
        return self.contexts

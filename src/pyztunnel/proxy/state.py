"""The proxy's state manager (ztunnel's, `src/state.rs` + `src/app.rs`): one workload index, fed by the LOCAL_XDS_PATH
file and by istiod's XDS, as ztunnel combines them (reference §5.1), and the "state manager" readiness rule: synced
once the file is loaded (if one is configured) and every XDS type got its first ACKed response (if XDS is on).

It owns its tasks (the file watch, the XDS client). A change from either source updates the index in place and then
notifies the holder's subscribers (the pods re-check their connections' policies, the app prefetches certificates).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from pyztunnel.aio import TaskGroup
from pyztunnel.errors import UserError
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.protocols import xds
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.proxy.shared import IndexHolder
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.workloads.watch import ConfigWatch
from pyztunnel.xds.apply import Batch
from pyztunnel.xds.client import XdsClient
from pyztunnel.xds.config import XdsSettings, node_id, node_metadata

_log = logging.getLogger("pyztunnel.proxy.state")

DECODE_SLICE = 2000  # resources decoded between yields to the event loop (≈10–20 ms of work)


class StateManager:
    def __init__(
        self,
        settings: ProxySettings,
        xds_settings: XdsSettings | None,
        auth: CaClientSettings,
        holder: IndexHolder,
        on_change: Callable[[WorkloadIndex], None],
        environ: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.on_change = on_change
        self.synced = asyncio.Event()
        self.watch: ConfigWatch | None = None
        self.xds: XdsClient | None = None
        self.tasks = TaskGroup("state manager")  # the file watch and the XDS client
        self._xds_ready = xds_settings is None or not xds_settings.enabled
        if settings.local_xds_path is not None:
            self.watch = ConfigWatch(
                Path(settings.local_xds_path),
                on_change=self._file_loaded,
                index=holder.index,
                max_bytes=settings.local_xds_max_bytes,
            )
        if xds_settings is not None and xds_settings.enabled:
            if xds_settings.xds_on_demand:
                raise UserError("XDS_ON_DEMAND=true: on-demand XDS is not supported; unset it (ztunnel's default)")
            namespace = xds_settings.pod_namespace
            node = xds.node(
                node_id(xds_settings.instance_ip, settings.pod_name, namespace),
                node_metadata(environ, xds_settings.instance_ip, settings.pod_name, namespace, settings.node_name),
            )
            self.xds = XdsClient(xds_settings, auth, node, self._apply, self._xds_synced, environ=environ)

    @property
    def sources(self) -> list[str]:
        return [s for s, on in (("LOCAL_XDS_PATH", self.watch is not None), ("XDS", self.xds is not None)) if on]

    async def start(self) -> None:
        if self.watch is not None:
            try:
                await self.watch.load()  # at once, as ztunnel reads the file at start-up (parsed beside the loop)
            except local.ConfigError as exc:  # as ztunnel: a file it cannot use at start is one line, exit 2
                raise UserError(str(exc)) from None
            self.tasks.spawn(self.watch.run(float(self.settings.config_poll_interval)), "config-watch")
        if self.xds is not None:
            self.tasks.spawn(self.xds.run(), "xds-client")
        self._check_synced()

    def _file_loaded(self, index: WorkloadIndex) -> None:
        self._changed(index)
        self._check_synced()

    def _xds_synced(self) -> None:
        self._xds_ready = True
        self._check_synced()

    def _check_synced(self) -> None:
        file_ready = self.watch is None or self.watch.loaded
        if file_ready and self._xds_ready and not self.synced.is_set():
            self.synced.set()
            _log.info("state synced", extra={"fields": {"sources": ",".join(self.sources) or "none"}})

    async def _apply(self, update: xds.Update) -> list[tuple[str, str]]:
        """Decode in slices (yielding between them: a 100 000-workload push must not stall the data path), then
        apply the whole response to the index at once."""
        batch = Batch(update)
        upserts = update.upserts
        for start in range(0, len(upserts), DECODE_SLICE):
            batch.decode(upserts[start : start + DECODE_SLICE])
            if start + DECODE_SLICE < len(upserts):
                await asyncio.sleep(0)  # yield to the data path between slices
        index = self.holder.index
        if batch.apply(index):
            self._changed(index)
        return batch.new_rejects

    def _changed(self, index: WorkloadIndex) -> None:
        self.holder.changed()
        self.on_change(index)

    @property
    def version(self) -> str | None:
        """The LOCAL_XDS_PATH file's version in force (the readiness header the local cluster reads)."""
        return self.watch.version if self.watch is not None else None

    def dump(self) -> dict[str, object]:
        index = self.holder.index
        return {
            "sources": self.sources,
            "synced": self.synced.is_set(),
            "counts": index.counts(),
            "xds": self.xds.dump() if self.xds is not None else None,
        }

    async def close(self) -> None:
        await self.tasks.close()
        if self.xds is not None:
            await self.xds.close()

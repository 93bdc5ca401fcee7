"""The set of per-pod proxies of this node, driven by ZDS: start a pod's listeners inside its netns, drain a pod
at once on DelWorkload, retry pods whose listeners could not be created (ztunnel's pending set, every 5 s).

The top of the data path: every pod's listeners are served by `DATA_PATH` (outbound 15001, inbound plaintext 15006,
inbound HBONE 15008), which goes down through resumable streams to the pod and its relays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.protocols.zds import WorkloadInfo
from pyztunnel.proxy import inbound, outbound
from pyztunnel.proxy.netsock import PodNetns
from pyztunnel.proxy.pod import Handlers, PodProxy, Ports
from pyztunnel.proxy.shared import Shared

_log = logging.getLogger("pyztunnel.proxy.podset")

RETRY_INTERVAL = 5.0
DATA_PATH = Handlers(outbound=outbound.handle, plaintext=inbound.handle_plaintext, hbone=inbound.handle_hbone)


class PodSet:
    def __init__(
        self,
        shared: Shared,
        ports: Ports | None = None,
        retry_interval: float = RETRY_INTERVAL,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.shared = shared
        self.ports = ports or Ports()
        self.retry_interval = retry_interval
        self.pods: dict[str, PodProxy] = {}
        self.pending: dict[str, tuple[WorkloadInfo, int]] = {}  # uid -> (info, netns fd) not started yet
        self.started_total = 0
        self.stopped_total = 0
        self._retry: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.on_change = on_change

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
        if self.on_change is not None:
            self.on_change()

    async def start(self, uid: str, info: WorkloadInfo, netns_fd: int) -> str | None:
        """Start the pod's proxy; takes ownership of `netns_fd`. Returns None, or the error (the pod stays pending)."""
        self.pending.pop(uid, None)
        env = PodNetns(
            netns_fd,
            name=f"{info.namespace}/{info.name}",
            original_source=self.shared.settings.enable_orig_src,
            migrate=self.shared.settings.tcp_migrate_req,
        )
        key = (info.namespace, info.name)
        pod = PodProxy(self.shared, uid, env, lambda idx: idx.by_name.get(key), DATA_PATH, self.ports)
        try:
            await pod.start()
        except OSError as exc:
            env.close()
            self.pending[uid] = (info, netns_fd)
            self._ensure_retry()
            self._notify()
            _log.warning("failed to start proxy", extra={"fields": {"uid": uid, "error": str(exc)}})
            return f"failure to start proxy : {exc}"
        self.pods[uid] = pod
        self.started_total += 1
        _log.info(
            "pod proxy started",
            extra={"fields": {"uid": uid, "name": info.name, "namespace": info.namespace}},
        )
        self._notify()
        return None

    async def drain(self, uid: str) -> None:
        """Stop the pod's proxy now (DelWorkload / not in the snapshot): listeners closed, connections reset."""
        pending = self.pending.pop(uid, None)
        if pending is not None:
            with contextlib.suppress(OSError):
                os.close(pending[1])
        pod = self.pods.pop(uid, None)
        if pod is None:
            self._notify()
            return
        await pod.drain_immediate()
        env = pod.env
        if isinstance(env, PodNetns):
            with contextlib.suppress(OSError):
                os.close(env.fd)
        self.stopped_total += 1
        _log.info("pod proxy stopped", extra={"fields": {"uid": uid}})
        self._notify()

    def forget_pending(self, uid: str) -> None:
        pending = self.pending.pop(uid, None)
        if pending is not None:
            with contextlib.suppress(OSError):
                os.close(pending[1])
            self._notify()

    def _ensure_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = spawn(self._retry_pending(), "podset-retry")

    async def _retry_pending(self) -> None:
        while self.pending:
            await asyncio.sleep(self.retry_interval)  # ztunnel's RETRY_DURATION between attempts
            for uid, (info, fd) in list(self.pending.items()):
                await self.start(uid, info, fd)

    async def stop_accepting(self) -> None:
        for pod in list(self.pods.values()):
            await pod.stop_accepting()

    def goaway(self) -> None:
        for pod in list(self.pods.values()):
            pod.goaway()

    async def close(self) -> None:
        if self._retry is not None:
            await cancel_and_wait(self._retry)
        for uid in list(self.pods):
            await self.drain(uid)
        for uid in list(self.pending):
            self.forget_pending(uid)

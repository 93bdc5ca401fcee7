"""The agent's pod set: what `POST/DELETE /v1/pods` do, and the snapshot the ZDS server sends.

A pod is registered before its Add goes out, so a proxy that connects in between gets it in its snapshot, and a
retried POST (after a 503) is a no-op on both sides. The pod set is saved to `<run-dir>/pods.json` so a restarted
agent serves the same snapshot; a pod whose netns is gone by then is sent as `KeepWorkload`, as istio-cni does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pyztunnel.agent import plumbing
from pyztunnel.agent.config import AgentSettings
from pyztunnel.agent.pods import BadPod, PodSpec
from pyztunnel.agent.zds_server import NoConnection, SnapshotEntry, ZdsServer
from pyztunnel.protocols import zds

log = logging.getLogger("pyztunnel.agent")

Plumb = Callable[[PodSpec, int], None]
Unplumb = Callable[[str], bool]


class ProxyRefused(Exception):
    """The proxy NACKed the pod's Add (or its connection was lost before the Ack)."""


@dataclasses.dataclass
class _Pod:
    spec: PodSpec
    netns_fd: int | None  # None: the netns could not be opened (after an agent restart); sent as Keep


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        plumb: Plumb | None = None,
        unplumb: Unplumb | None = None,
    ) -> None:
        self.settings = settings
        self.pods: dict[str, _Pod] = {}
        sysctls = plumbing.pod_sysctls(settings.tcp_migrate_req)
        self._plumb: Plumb = plumb or (
            lambda spec, fd: plumbing.plumb(spec, fd, settings.bridge, sysctls, settings.dns_capture)
        )
        self._unplumb: Unplumb = unplumb or plumbing.unplumb
        self.zds = ZdsServer(settings.zds_socket, self.snapshot, timeout=float(settings.zds_timeout))
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        self._load()
        await self.zds.start()

    async def close(self) -> None:
        await self.zds.close()
        for pod in self.pods.values():
            if pod.netns_fd is not None:
                os.close(pod.netns_fd)
        self.pods.clear()

    def snapshot(self) -> list[SnapshotEntry]:
        out: list[SnapshotEntry] = []
        for pod in self.pods.values():
            if not pod.spec.mesh:
                continue
            if pod.netns_fd is None:
                out.append((zds.KeepWorkload(pod.spec.uid), None))
            else:
                out.append((_add_request(pod.spec), pod.netns_fd))
        return out

    async def add_pod(self, spec: PodSpec) -> None:
        """Plumb the pod; for a mesh pod also wait for the newest proxy's ACK. Raises BadPod, PlumbingError,
        NoConnection or ProxyRefused."""
        async with self._lock(spec.uid):
            fd = _open_netns(spec.netns)
            try:
                await asyncio.to_thread(self._plumb, spec, fd)
            except BaseException:
                os.close(fd)
                raise
            old = self.pods.get(spec.uid)
            if old is not None and old.netns_fd is not None:
                os.close(old.netns_fd)
            self.pods[spec.uid] = _Pod(spec, fd)
            self._save()
            log.info(
                "pod added",
                extra={"fields": {"uid": spec.uid, "pod": f"{spec.namespace}/{spec.name}", "mesh": spec.mesh}},
            )
            if not spec.mesh:
                return
            ack = await self.zds.add(_add_request(spec), fd)
            if not ack.ok:
                raise ProxyRefused(ack.error)

    async def delete_pod(self, uid: str) -> bool:
        """Remove the veth and broadcast the Del. Idempotent: False when the pod was unknown."""
        async with self._lock(uid):
            pod = self.pods.pop(uid, None)
            removed = await asyncio.to_thread(self._unplumb, uid)
            if pod is not None:
                self._save()
                if pod.netns_fd is not None:
                    os.close(pod.netns_fd)
            if pod is None or pod.spec.mesh:
                for ack in await self.zds.delete(uid):
                    if not ack.ok:
                        log.warning("ztunnel refused a delete", extra={"fields": {"uid": uid, "error": ack.error}})
            log.info("pod deleted", extra={"fields": {"uid": uid, "known": pod is not None, "veth": removed}})
            return pod is not None or removed

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    # --------------------------------------------------------------------------------------------------- state

    def _save(self) -> None:
        path = self.settings.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([p.spec.to_json() for p in self.pods.values()], indent=1) + "\n")
        tmp.replace(path)

    def _load(self) -> None:
        path = self.settings.state_file
        try:
            docs = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable pod state", extra={"fields": {"path": str(path), "error": str(exc)}})
            return
        for doc in docs if isinstance(docs, list) else []:
            try:
                spec = PodSpec.from_json(doc)
            except BadPod as exc:
                log.warning("ignoring a saved pod", extra={"fields": {"error": str(exc)}})
                continue
            fd: int | None = None
            with contextlib.suppress(BadPod):
                fd = _open_netns(spec.netns)
            self.pods[spec.uid] = _Pod(spec, fd)
        log.info("pod state loaded", extra={"fields": {"pods": len(self.pods)}})


def _add_request(spec: PodSpec) -> zds.AddWorkload:
    return zds.AddWorkload(spec.uid, zds.WorkloadInfo(spec.name, spec.namespace, spec.service_account))


def _open_netns(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BadPod(f"cannot open netns {path}: {exc.strerror}") from None


__all__ = ["Agent", "BadPod", "NoConnection", "ProxyRefused"]

"""Waiting for a change of the proxy DaemonSet or its pods with a bound: two watches, started at the DaemonSet's
resourceVersion read first, so no change between the caller's look and the watch is missed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Pod as KPod

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.k8s.backend_access import KubeAccess


async def _raise(exc: BaseException) -> Any:
    raise exc


@contextlib.asynccontextmanager
async def watch_changes(
    backend: KubeAccess, *, pods: bool = True, node: str | None = None
) -> AsyncIterator[Callable[[float], Awaitable[bool]]]:
    flag = asyncio.Event()
    failure: list[BaseException] = []

    async def pump(stream: AsyncIterable[Any]) -> None:
        try:
            async for _ in stream:
                flag.set()
        except Exception as exc:  # handed to the waiter
            failure.append(exc)
            flag.set()

    # Both watches start at the DaemonSet's resourceVersion (resourceVersions are cluster-wide), read before the
    # caller's first look: no change between that look and the watch is missed.
    ds = await backend.get_ds()
    since = str(ds["metadata"]["resourceVersion"])
    streams = [
        backend.client.watch(
            DaemonSet, namespace=backend.namespace, fields={"metadata.name": backend.name}, resource_version=since
        )
    ]
    if pods:
        fields: dict[str, Any] | None = {"spec.nodeName": node} if node else None
        labels = dict(((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        pod_events: AsyncIterable[Any] = backend.client.watch(
            KPod, namespace=backend.namespace, labels=labels, fields=fields, resource_version=since
        )
        streams.append(pod_events)
    tasks = [spawn(pump(s), "k8s-watch") for s in streams]

    async def changed(deadline: float) -> bool:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await flag.wait()
        except TimeoutError:
            return False
        flag.clear()
        if failure:
            await backend.api("watch", _raise(failure[0]))
        return True

    try:
        yield changed
    finally:
        await cancel_and_wait(*tasks)

"""`replace_proxy` for clusters whose DaemonSet controller does not roll by itself (the local cluster, the test fake):
the client replaces a node's proxy through four primitives. With surge the order is the lossless one: the new proxy
is created beside the old and Ready before the old gets SIGTERM (its listeners and connections are handed over);
without surge the old is deleted first. Every step is reconciled against what the cluster shows, so an interrupted
replacement continues correctly when called again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from pyztunnel.rollout.backend import ProxyNotReady, ProxyPod


class ProxyOps(Protocol):
    async def proxies(self, node: str | None = None) -> list[ProxyPod]: ...

    async def create_proxy(self, node: str) -> ProxyPod:
        """A new proxy on the node from the current template."""
        ...

    async def delete_proxy(self, name: str) -> None:
        """SIGTERM; SIGKILL after its grace period. Returns once it has exited."""
        ...

    async def wait_proxy_ready(self, name: str, within: float) -> bool: ...


async def replace_on_node(
    ops: ProxyOps, node: str, *, surge: bool, within: float, describe: Callable[[ProxyPod], Awaitable[str]]
) -> ProxyPod:
    live = [p for p in await ops.proxies(node) if not p.terminating]
    new = [p for p in live if p.updated]
    old = [p for p in live if not p.updated]
    keep = min(new, key=lambda p: (not p.ready, p.created, p.name)) if new else None
    for extra in new:  # an interrupted earlier run may have left a second one behind
        if extra is not keep:
            await ops.delete_proxy(extra.name)
    if not surge:
        for p in old:
            await ops.delete_proxy(p.name)
        if keep is None and old:  # the controller may have replaced the deleted proxy from the template already
            again = [p for p in await ops.proxies(node) if p.updated and not p.terminating]
            keep = again[0] if again else None
    if keep is None:
        keep = await ops.create_proxy(node)
    if not await ops.wait_proxy_ready(keep.name, within):
        current = next((p for p in await ops.proxies(node) if p.name == keep.name), keep)
        raise ProxyNotReady(
            f"proxy {keep.name} ({keep.version}) not ready within {within:g}s: {await describe(current)}", current
        )
    if surge:
        for p in old:
            await ops.delete_proxy(p.name)
    return keep

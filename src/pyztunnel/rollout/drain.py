"""One node of the seeds' drain procedure (seed 002, steps 3–5), automated as `kubectl drain` does it: cordon, evict
every pod but DaemonSet and mirror pods through the Eviction API (429 from a PodDisruptionBudget → retry every 5 s),
refuse emptyDir / unmanaged pods unless the flags allow them (kubectl's words), wait until each evicted pod is gone,
replace the node's proxy (delete the old, the new one Ready), uncordon."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from pyztunnel.rollout.backend import BackendError, ClusterBackend, EvictionBlocked, Pod
from pyztunnel.rollout.drainfilter import DrainFlags, plan_drain

DEFAULT_EVICTION_RETRY = 5.0  # kubectl drain's
DEFAULT_DRAIN_TIMEOUT = 600.0  # kubectl's --timeout is 0 (for ever); an unattended rollout needs a bound


class DrainFailed(Exception):
    """The node could not be drained; the message is kubectl-like and the node was uncordoned."""


@dataclasses.dataclass(frozen=True)
class DrainOptions:
    flags: DrainFlags = dataclasses.field(default_factory=DrainFlags)
    eviction_retry: float = DEFAULT_EVICTION_RETRY
    timeout: float = DEFAULT_DRAIN_TIMEOUT
    grace_seconds: int | None = None  # the evicted pods' grace period (None: each pod's own, kubectl's -1)


async def drain_node(
    backend: ClusterBackend,
    node: str,
    options: DrainOptions,
    phase: Callable[[str], Awaitable[None]],
    warn: Callable[[str], None],
    replace: Callable[[], Awaitable[None]],
) -> None:
    await phase("cordon")
    await backend.cordon(node)
    await phase("evict")
    try:
        await _evict_all(backend, node, options, warn)
    except (DrainFailed, BackendError) as exc:
        await backend.uncordon(node)
        raise DrainFailed(f"{exc}; node uncordoned") from None
    await phase("replace")
    await replace()
    await phase("uncordon")
    await backend.uncordon(node)


async def _evict_all(backend: ClusterBackend, node: str, options: DrainOptions, warn: Callable[[str], None]) -> None:
    plan = plan_drain(await backend.pods_on(node), options.flags)
    refusal = plan.error()
    if refusal is not None:
        raise DrainFailed(refusal)
    for line in plan.warning_lines():
        warn(f"node {node}: {line}")
    deadline = time.monotonic() + options.timeout
    results = await asyncio.gather(*(_evict(backend, p, options, deadline) for p in plan.evict), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r  # cancellation or the process going away is not a failed eviction
    failed = [(p, r) for p, r in zip(plan.evict, results, strict=True) if isinstance(r, Exception)]
    if failed:
        pod, why = failed[0]
        raise DrainFailed(f"evicting {pod.ref} failed: {why}")


async def _evict(backend: ClusterBackend, pod: Pod, options: DrainOptions, deadline: float) -> None:
    while True:
        try:
            await backend.evict(pod, options.grace_seconds)
            break
        except EvictionBlocked as exc:
            if time.monotonic() + options.eviction_retry > deadline:
                raise DrainFailed(
                    f"evicting {pod.ref}: still refused after {options.timeout:g}s ({exc}): a PodDisruptionBudget "
                    "allows no disruption"
                ) from None
            await asyncio.sleep(options.eviction_retry)  # kubectl's retry interval under a PDB
    await backend.wait_gone(pod, max(0.0, deadline - time.monotonic()))

"""What the backend's parts (the Sail owner, the state annotation, the watches) need of the backend: its client, the
DaemonSet it rolls and its error mapping. A protocol, so those parts depend on this and not on `backend.py`, which
imports them (no circle)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from lightkube import AsyncClient

T = TypeVar("T")


class KubeAccess(Protocol):
    client: AsyncClient
    namespace: str
    name: str

    async def api(self, what: str, call: Awaitable[T]) -> T:
        """`call`'s result; an API or transport error becomes the backend's error naming `what`."""
        ...

    async def get_ds(self) -> dict[str, Any]:
        """The DaemonSet as the API server has it now."""
        ...

    def changes(self, *, pods: bool = True, node: str | None = None) -> Any:
        """`async with changes() as changed`: `await changed(deadline)` is True once the DaemonSet (or its pods)
        changed, False at the deadline."""
        ...

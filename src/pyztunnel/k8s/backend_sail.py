"""A proxy DaemonSet owned by the Sail operator (`ZTunnel`, sailoperator.io/v1, cluster-scoped, named `default`):
patching the DaemonSet would be reverted by the operator, so the seed's steps 1–2 change the resource instead
(`spec.version`, `spec.values.ztunnel.{updateStrategy, terminationGracePeriodSeconds, image}`), then wait until the
operator has reconciled (its status.observedGeneration) and the DaemonSet controller has observed the new template."""

from __future__ import annotations

import time
from typing import Any

from lightkube.generic_resource import create_global_resource
from lightkube.types import PatchType

from pyztunnel.k8s import backend_objects as objects
from pyztunnel.k8s.backend_access import KubeAccess
from pyztunnel.rollout.backend import BackendError, TemplateChange

ZTunnel = create_global_resource(objects.SAIL_GROUP, "v1", "ZTunnel", "ztunnels")
NAME = "default"
MANAGED_BY = "sail-operator"


def owned_by_sail(ds: dict[str, Any]) -> bool:
    refs = (ds.get("metadata") or {}).get("ownerReferences") or []
    if any(
        str(r.get("apiVersion", "")).startswith(f"{objects.SAIL_GROUP}/") and r.get("kind") == "ZTunnel" for r in refs
    ):
        return True
    return ((ds.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY


class SailOwner:
    def __init__(self, backend: KubeAccess) -> None:
        self.backend = backend

    @classmethod
    async def of(cls, backend: KubeAccess, ds: dict[str, Any]) -> SailOwner | None:
        if not owned_by_sail(ds):
            return None
        owner = cls(backend)
        await owner.get()  # a clear error now if the resource is missing or forbidden
        return owner

    async def get(self) -> dict[str, Any]:
        found = await self.backend.api(
            f"get ztunnels.{objects.SAIL_GROUP} {NAME}", self.backend.client.get(ZTunnel, NAME)
        )
        return dict(found)

    async def spec(self) -> dict[str, Any]:
        return dict((await self.get()).get("spec") or {})

    async def change(self, change: TemplateChange) -> None:
        patch = objects.sail_patch(await self.spec(), change)
        if patch["spec"]:
            await self.backend.api(
                f"patch ztunnels.{objects.SAIL_GROUP} {NAME}",
                self.backend.client.patch(ZTunnel, NAME, patch, patch_type=PatchType.MERGE),
            )

    async def restore(self, spec: dict[str, Any], strategy: str) -> None:
        spec = dict(spec)
        values = dict(spec.get("values") or {})
        ztunnel = dict(values.get("ztunnel") or {})
        current = ztunnel.get("updateStrategy") or {}
        if current.get("type", "RollingUpdate") != strategy:
            ztunnel["updateStrategy"] = (
                {"type": strategy}
                if strategy == "OnDelete"
                else {
                    "type": strategy,
                    "rollingUpdate": current.get("rollingUpdate") or {"maxSurge": 1, "maxUnavailable": 0},
                }
            )
        values["ztunnel"] = ztunnel
        spec["values"] = values
        ops = [{"op": "replace", "path": "/spec", "value": spec}]
        await self.backend.api(
            f"restore ztunnels.{objects.SAIL_GROUP} {NAME}",
            self.backend.client.patch(ZTunnel, NAME, ops, patch_type=PatchType.JSON),
        )

    async def reconciled(self, within: float) -> None:
        """Until the operator's status says it reconciled the current generation of the resource."""
        deadline = time.monotonic() + within
        async with self.backend.changes(pods=False) as changed:
            while True:
                zt = await self.get()
                seen = int((zt.get("status") or {}).get("observedGeneration", 0))
                if seen >= int(zt["metadata"].get("generation", 0)):
                    return
                if not await changed(deadline):
                    raise BackendError(
                        f"the Sail operator did not reconcile ztunnels.{objects.SAIL_GROUP}/{NAME} within {within:g}s"
                    )

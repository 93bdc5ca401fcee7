"""The rollout's resume state in an annotation on the DaemonSet: metadata only, so saving it starts no rollout, and
it travels with the cluster (a run interrupted on one machine continues from another)."""

from __future__ import annotations

from lightkube.resources.apps_v1 import DaemonSet
from lightkube.types import PatchType

from pyztunnel.k8s import backend_objects as objects
from pyztunnel.k8s.backend_access import KubeAccess


class AnnotationState:
    """The rollout's state in an annotation on the DaemonSet (its metadata: no new generation, no rollout)."""

    def __init__(self, backend: KubeAccess) -> None:
        self.backend = backend

    @property
    def where(self) -> str:
        return f"annotation {objects.STATE_ANNOTATION} of daemonset {self.backend.namespace}/{self.backend.name}"

    async def load(self) -> str | None:
        ds = await self.backend.get_ds()
        text = ((ds["metadata"].get("annotations")) or {}).get(objects.STATE_ANNOTATION)
        return str(text) if text is not None else None

    async def save(self, text: str | None) -> None:
        b = self.backend
        patch = {"metadata": {"annotations": {objects.STATE_ANNOTATION: text}}}
        await b.api(
            "save the rollout state",
            b.client.patch(DaemonSet, b.name, patch, namespace=b.namespace, patch_type=PatchType.MERGE),
        )

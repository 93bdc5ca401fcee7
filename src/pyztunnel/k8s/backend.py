"""`ClusterBackend` over a Kubernetes API server, on lightkube's AsyncClient (README: why lightkube).

It needs only the proxy DaemonSet and its pods, so it drives Istio's ztunnel DaemonSet unchanged. The DaemonSet
controller rolls by itself (`rolls_itself`): rolling upgrades patch the template and follow the status; per-node
replacement (drain, canary) runs under OnDelete: delete the node's old pod, wait for the pod of the current
`controller-revision-hash` to be Ready (the controller creates it once the old pod object is gone). Where the Sail
operator owns the DaemonSet, template changes go to its `ZTunnel` resource instead (backend_sail.py). The rollout's
resume state is an annotation on the DaemonSet, so it travels with the cluster. Waits use watches, except where
kubectl polls (an evicted pod, every second until 404 or a new UID).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient
from lightkube.config.client_adapter import AsyncClient as RawClient
from lightkube.config.client_adapter import ConnectionParams
from lightkube.models.meta_v1 import DeleteOptions, ObjectMeta
from lightkube.resources.apps_v1 import ControllerRevision, DaemonSet
from lightkube.resources.core_v1 import Node as KNode
from lightkube.resources.core_v1 import Pod as KPod
from lightkube.resources.core_v1 import PodEviction
from lightkube.types import PatchType

from pyztunnel.k8s import backend_objects as objects
from pyztunnel.k8s.backend_sail import SailOwner
from pyztunnel.k8s.backend_state import AnnotationState
from pyztunnel.k8s.backend_watch import watch_changes
from pyztunnel.k8s.config import load_config
from pyztunnel.rollout import cause
from pyztunnel.rollout.backend import (
    BackendError,
    EvictionBlocked,
    Node,
    Pod,
    ProxyNotReady,
    ProxyPod,
    RolloutView,
    StateStore,
    Template,
    TemplateChange,
)

T = TypeVar("T")
GONE_POLL_S = 1.0  # kubectl drain's
OBSERVE_TIMEOUT_S = 60.0  # for the controller (or the operator) to observe a template change
REQUEST_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 50


class Unreachable(BackendError):
    pass


def _message(exc: ApiError) -> str:
    return str(exc.status.message or exc.status.reason or f"HTTP {exc.status.code}")


class KubeBackend:
    rolls_itself = True

    def __init__(self, client: AsyncClient, raw: httpx2.AsyncClient, server: str, namespace: str, name: str) -> None:
        self.client, self.raw, self.server = client, raw, server
        self.namespace, self.name = namespace, name
        self.where = f"daemonset {namespace}/{name} at {server}"
        self.state: StateStore = AnnotationState(self)
        self.sail: SailOwner | None = None
        self.gone_poll = GONE_POLL_S
        self._uid = ""

    # Calls, with the errors a user can act on ----------------------------------------------------------------------

    async def api(self, what: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await call
        except ApiError as exc:
            code = exc.status.code
            if code == 403:
                raise BackendError(f"{what}: forbidden (RBAC): {_message(exc)}") from None
            if code == 401:
                raise BackendError(f"{what}: unauthorized: the kubeconfig's credentials were refused") from None
            raise BackendError(f"{what}: {_message(exc)} (HTTP {code})") from None
        except (httpx2.TransportError, OSError) as exc:
            raise Unreachable(
                f"{what}: the API server at {self.server} is unreachable ({exc or type(exc).__name__})"
            ) from None
        except msgspec.ValidationError as exc:
            raise BackendError(f"{what}: the API server answered an object this client cannot read ({exc})") from None
        except TimeoutError:
            raise Unreachable(
                f"{what}: no answer from the API server at {self.server} within {REQUEST_TIMEOUT_S:g}s"
            ) from None

    async def get_ds(self) -> dict[str, Any]:
        ds = await self.api(
            f"get daemonset {self.namespace}/{self.name}",
            self.client.get(DaemonSet, self.name, namespace=self.namespace),
        )
        doc: dict[str, Any] = ds.to_dict()
        self._uid = doc["metadata"]["uid"]
        return doc

    async def locate(self, wanted: str | None) -> None:
        """Find the proxy DaemonSet (NS/NAME, or the one labelled app=ztunnel) and whether an operator owns it."""
        if wanted:
            self.namespace, _, self.name = wanted.rpartition("/")
            self.namespace = self.namespace or "istio-system"
        else:
            found = [
                d.to_dict()
                async for d in await self.api(
                    "list daemonsets", self._listing(DaemonSet, namespace="*", labels={"app": "ztunnel"})
                )
            ]
            if len(found) != 1:
                names = ", ".join(f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in found) or "none"
                raise BackendError(f"pick the proxy DaemonSet with --daemonset NS/NAME (labelled app=ztunnel: {names})")
            self.namespace, self.name = found[0]["metadata"]["namespace"], found[0]["metadata"]["name"]
        self.where = f"daemonset {self.namespace}/{self.name} at {self.server}"
        try:
            ds = await self.get_ds()
        except BackendError as exc:
            if "not found" in str(exc):
                raise BackendError(f"daemonset {self.namespace}/{self.name} not found at {self.server}") from None
            raise
        self.sail = await SailOwner.of(self, ds)

    async def _listing(self, res: Any, **kw: Any) -> Any:
        """lightkube's list is lazy: fetch it now, inside the error mapping."""
        items = [item async for item in self.client.list(res, **kw)]

        async def replay() -> AsyncIterator[Any]:
            for item in items:
                yield item

        return replay()

    async def _list(self, what: str, res: Any, **kw: Any) -> list[dict[str, Any]]:
        return [item.to_dict() async for item in await self.api(what, self._listing(res, **kw))]

    # Template and history --------------------------------------------------------------------------------------

    async def revisions(self) -> list[dict[str, Any]]:
        mine = await self._list("list controllerrevisions", ControllerRevision, namespace=self.namespace)
        return [r for r in mine if (objects.controller_of(r) or {}).get("uid") == self._uid]

    async def current_hash(self, ds: dict[str, Any] | None = None) -> str:
        ds = ds or await self.get_ds()
        status = ds.get("status") or {}
        if int(status.get("observedGeneration", 0)) < int(ds["metadata"].get("generation", 0)):
            return ""  # the controller has not seen the template yet: nothing is "updated"
        return objects.current_hash(await self.revisions())

    async def template(self) -> Template:
        ds = await self.get_ds()
        if self.sail is not None:
            return objects.template_of(ds, await self.sail.spec())
        return objects.template_of(ds)

    async def set_template(self, change: TemplateChange) -> Template:
        if self.sail is not None:
            await self.sail.change(change)
        else:
            ds = await self.get_ds()
            patch = objects.daemonset_patch(ds, change)
            if patch["spec"]:
                await self.api(
                    f"patch daemonset {self.namespace}/{self.name}",
                    self.client.patch(
                        DaemonSet, self.name, patch, namespace=self.namespace, patch_type=PatchType.STRATEGIC
                    ),
                )
        await self.observed()
        return await self.template()

    async def restore_template(self, template: Template) -> Template:
        if self.sail is not None and "sail" in template.body:
            await self.sail.restore(template.body["sail"], template.strategy)
        else:
            strategy = dict(template.body.get("updateStrategy") or {})
            if strategy.get("type") != template.strategy:
                strategy = objects.strategy_patch(TemplateChange(strategy=template.strategy), strategy) or {}
                strategy = {k: v for k, v in strategy.items() if v is not None}
            ops = [
                {"op": "replace", "path": "/spec/template", "value": template.body["template"]},
                {"op": "replace", "path": "/spec/updateStrategy", "value": strategy},
            ]
            await self.api(
                f"restore the template of daemonset {self.namespace}/{self.name}",
                self.client.patch(DaemonSet, self.name, ops, namespace=self.namespace, patch_type=PatchType.JSON),
            )
        await self.observed()
        return await self.template()

    async def history(self) -> list[Template]:
        ds = await self.get_ds()
        strategy = (ds.get("spec") or {}).get("updateStrategy") or {"type": "RollingUpdate"}
        ordered = sorted(await self.revisions(), key=lambda r: -int(r.get("revision", 0)))
        return [objects.revision_template(r, strategy) for r in ordered[1:]]

    async def observed(self) -> dict[str, Any]:
        """Until the controller (and the operator) has observed the DaemonSet's current generation."""

        def seen(ds: dict[str, Any]) -> bool:
            status = ds.get("status") or {}
            return int(status.get("observedGeneration", 0)) >= int(ds["metadata"].get("generation", 0))

        if self.sail is not None:
            await self.sail.reconciled(OBSERVE_TIMEOUT_S)
        return await self.wait_ds(seen, OBSERVE_TIMEOUT_S, "the DaemonSet controller to observe the new template")

    async def wait_ds(self, done: Callable[[dict[str, Any]], bool], within: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + within
        async with self.changes(pods=False) as changed:
            while True:
                ds = await self.get_ds()
                if done(ds):
                    return ds
                if not await changed(deadline):
                    raise BackendError(f"waited {within:g}s for {what}")

    # Watching --------------------------------------------------------------------------------------------------

    def changes(self, *, pods: bool = True, node: str | None = None) -> Any:
        """`async with backend.changes() as changed`: `await changed(deadline)` is True once the DaemonSet (or its
        pods) changed, False at the deadline (backend_watch.py)."""
        return watch_changes(self, pods=pods, node=node)

    async def watch_rollout(self) -> AsyncIterator[RolloutView]:
        async with self.changes() as changed:
            while True:
                ds = await self.get_ds()
                status = ds.get("status") or {}
                yield RolloutView(
                    self.name,
                    int(ds["metadata"].get("generation", 0)),
                    int(status.get("observedGeneration", 0)),
                    int(status.get("desiredNumberScheduled", 0)),
                    int(status.get("updatedNumberScheduled", 0)),
                    int(status.get("numberAvailable", 0)),
                    str(((ds.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")),
                    tuple(await self._proxies(ds)),
                )
                while not await changed(time.monotonic() + 3600):
                    pass

    # Nodes and pods ----------------------------------------------------------------------------------------------

    async def nodes(self) -> list[Node]:
        found = await self._list("list nodes", KNode)
        return [Node(n["metadata"]["name"], not (n.get("spec") or {}).get("unschedulable")) for n in found]

    async def cordon(self, node: str) -> None:
        await self.api(f"cordon node {node}", self.client.patch(KNode, node, {"spec": {"unschedulable": True}}))

    async def uncordon(self, node: str) -> None:
        await self.api(f"uncordon node {node}", self.client.patch(KNode, node, {"spec": {"unschedulable": None}}))

    async def pods_on(self, node: str) -> list[Pod]:
        found = await self._list(f"list pods on {node}", KPod, namespace="*", fields={"spec.nodeName": node})
        missing: set[str] = set()
        for p in found:
            ref = objects.controller_of(p)
            if ref and ref.get("kind") == "DaemonSet" and ref.get("uid") != self._uid:
                ns = p["metadata"].get("namespace", "default")
                try:
                    await self.api("get daemonset", self.client.get(DaemonSet, ref["name"], namespace=ns))
                except BackendError as exc:
                    if "not found" not in str(exc):
                        raise
                    missing.add(f"{ns}/{ref['name']}")
        mine = [p for p in found if (objects.controller_of(p) or {}).get("uid") != self._uid]
        return [objects.pod_of(p, missing) for p in mine]

    async def evict(self, pod: Pod, grace_seconds: int | None = None) -> None:
        options = DeleteOptions(gracePeriodSeconds=grace_seconds) if grace_seconds is not None else None
        eviction = PodEviction(metadata=ObjectMeta(name=pod.name, namespace=pod.namespace), deleteOptions=options)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                await self.client.create(eviction, name=pod.name, namespace=pod.namespace)
        except ApiError as exc:
            if exc.status.code == 429:
                causes = [
                    c.message for c in (exc.status.details.causes if exc.status.details else None) or [] if c.message
                ]
                raise EvictionBlocked(" ".join([_message(exc), *causes])) from None
            if exc.status.code == 404:
                return
            await self.api(f"evict {pod.ref}", _raise(exc))
        except (httpx2.TransportError, OSError, TimeoutError) as exc:
            await self.api(f"evict {pod.ref}", _raise(exc))

    async def wait_gone(self, pod: Pod, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    found = await self.client.get(KPod, pod.name, namespace=pod.namespace)
            except ApiError as exc:
                if exc.status.code == 404:
                    return
                await self.api(f"get pod {pod.ref}", _raise(exc))
            except (httpx2.TransportError, OSError, TimeoutError) as exc:
                await self.api(f"get pod {pod.ref}", _raise(exc))
            else:
                if found.metadata is not None and found.metadata.uid != pod.uid:
                    return  # a new pod of the same name
            if time.monotonic() > deadline:
                raise BackendError(f"pod {pod.ref} is not gone after {within:g}s")
            await asyncio.sleep(self.gone_poll)  # kubectl drain polls every second

    # Proxies -------------------------------------------------------------------------------------------------------

    async def _proxies(self, ds: dict[str, Any], node: str | None = None) -> list[ProxyPod]:
        labels = dict(((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        fields = {"spec.nodeName": node} if node else None
        found = await self._list("list proxy pods", KPod, namespace=self.namespace, labels=labels, fields=fields)
        digest = await self.current_hash(ds)
        mine = [p for p in found if (objects.controller_of(p) or {}).get("uid") == ds["metadata"]["uid"]]
        return [objects.proxy_of(p, digest) for p in mine]

    async def proxies(self, node: str | None = None) -> list[ProxyPod]:
        return await self._proxies(await self.get_ds(), node)

    async def replace_proxy(self, node: str, *, surge: bool, within: float) -> ProxyPod:
        """Under OnDelete: delete the node's old pod(s), then wait for the current revision's pod Ready (it comes
        once the old pod object is gone, so the deadline also covers the old pod's grace period)."""
        await self.observed()
        grace = 0.0
        for p in await self.proxies(node):
            if not p.updated and not p.terminating:
                found = await self._pod(p.name)
                grace = max(grace, float((found.get("spec") or {}).get("terminationGracePeriodSeconds", 30)))
                await self.api(f"delete pod {p.name}", self.client.delete(KPod, p.name, namespace=self.namespace))
        # `within` counts from when the old pod object is gone (its grace period is the old proxy's own drain).
        deadline = time.monotonic() + within + grace
        latest: ProxyPod | None = None
        async with self.changes(node=node) as changed:
            while True:
                mine = await self.proxies(node)
                new = [p for p in mine if p.updated and not p.terminating]
                latest = next((p for p in new if p.ready), new[0] if new else latest)
                if latest is not None and latest.ready and all(p.updated for p in mine):
                    return latest
                if all(p.updated for p in mine):
                    deadline = min(deadline, time.monotonic() + within)
                if not await changed(deadline):
                    break
        if latest is None:
            raise ProxyNotReady(
                f"no proxy pod of the current revision appeared on {node} within {within + grace:g}s", None
            )
        raise ProxyNotReady(
            f"proxy {latest.name} ({latest.version}) not ready within {within:g}s: {await self.describe(latest)}",
            latest,
        )

    async def _pod(self, name: str) -> dict[str, Any]:
        found = await self.api(f"get pod {name}", self.client.get(KPod, name, namespace=self.namespace))
        doc: dict[str, Any] = found.to_dict()
        return doc

    async def describe(self, proxy: ProxyPod) -> str:
        try:
            pod = await self._pod(proxy.name)
        except BackendError as exc:
            return str(exc)
        fresh = objects.proxy_of(pod, "")
        log = ""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{proxy.name}/log"
        for previous in ("true", "false") if fresh.restarts else ("false",):
            with contextlib.suppress(BackendError):
                log = await self.text(path, {"tailLines": str(LOG_TAIL_LINES), "previous": previous})
                if log.strip():
                    break
        return cause.describe(fresh.last_exit, fresh.restarts, objects.waiting_reason(pod), log)

    async def text(self, path: str, params: dict[str, str] | None = None) -> str:
        """A GET that answers text (pod log, pod proxy), through the same connection settings and credentials."""

        async def get() -> str:
            resp = await self.raw.get(path, params=params)
            if resp.status_code >= 400:
                try:
                    message = json.loads(resp.text).get("message") or resp.text
                except ValueError:
                    message = resp.text.strip()
                raise BackendError(f"GET {path}: {message} (HTTP {resp.status_code})")
            return resp.text

        return await self.api(f"GET {path}", get())

    async def scrape(self, proxy: ProxyPod) -> str:
        return await self.text(f"/api/v1/namespaces/{self.namespace}/pods/{proxy.name}:15020/proxy/metrics")

    async def close(self) -> None:
        await self.client.close()
        await self.raw.aclose()


async def _raise(exc: BaseException) -> Any:
    raise exc


@contextlib.asynccontextmanager
async def connect(kubeconfig: Path, context: str | None, daemonset: str | None) -> AsyncIterator[KubeBackend]:
    config = load_config(kubeconfig, context)
    timeout = httpx2.Timeout(REQUEST_TIMEOUT_S)
    client = AsyncClient(config=config, timeout=timeout, trust_env=False)
    raw = RawClient(config, ConnectionParams(timeout=timeout, trust_env=False))
    backend = KubeBackend(client, raw, config.cluster.server, "istio-system", "ztunnel")
    try:
        await backend.locate(daemonset)
        yield backend
    finally:
        await backend.close()

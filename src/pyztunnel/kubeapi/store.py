"""The object store: resources by (plural, namespace, name), one resourceVersion counter, generation bumps on spec
changes, graceful deletion (a pod with a grace period stays, Terminating, until the kubelet has stopped it), and the
event history watches are served from (a resourceVersion older than the history answers 410 Gone)."""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from pyztunnel.kubeapi.errors import ApiError, conflict, not_found

HISTORY = 20000
WATCH_QUEUE = 10000


@dataclasses.dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    short: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


KINDS = [
    Kind("", "v1", "Namespace", "namespaces", False, short=("ns",)),
    Kind("", "v1", "Node", "nodes", False, short=("no",), subresources=("status",)),
    Kind("", "v1", "Pod", "pods", True, short=("po",), subresources=("eviction", "log", "proxy", "status")),
    Kind("", "v1", "Event", "events", True, short=("ev",)),
    Kind("apps", "v1", "DaemonSet", "daemonsets", True, short=("ds",), subresources=("status",)),
    Kind("apps", "v1", "ReplicaSet", "replicasets", True, short=("rs",), subresources=("status",)),
    Kind("apps", "v1", "ControllerRevision", "controllerrevisions", True),
    Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, short=("pdb",), subresources=("status",)),
    Kind("sailoperator.io", "v1", "ZTunnel", "ztunnels", False, subresources=("status",)),
]
BY_PLURAL = {k.plural: k for k in KINDS}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    plural: str
    obj: dict[str, Any]


Key = tuple[str, str, str]  # plural, namespace ("" for cluster-scoped), name


class Store:
    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any]] = {}
        self._rv = 1
        self._history: collections.deque[Event] = collections.deque(maxlen=HISTORY)
        self._watchers: set[asyncio.Queue[Event | None]] = set()
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def rv(self) -> int:
        return self._rv

    def listen(self, callback: Callable[[Event], None]) -> None:
        """Called (synchronously) after every change: the controllers' wake-up."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[Event], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _emit(self, kind: str, plural: str, obj: dict[str, Any]) -> None:
        event = Event(self._rv, kind, plural, copy.deepcopy(obj))
        self._history.append(event)
        for queue in list(self._watchers):
            if queue.qsize() >= WATCH_QUEUE:
                queue.put_nowait(None)  # too slow: the watch ends (the client re-lists)
                self._watchers.discard(queue)
            else:
                queue.put_nowait(event)
        for listener in list(self._listeners):
            listener(event)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @staticmethod
    def _key(plural: str, namespace: str | None, name: str) -> Key:
        return (plural, (namespace or "") if BY_PLURAL[plural].namespaced else "", name)

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects.get(self._key(plural, namespace, name))
        if obj is None:
            kind = BY_PLURAL[plural]
            raise not_found(plural, name, kind.group)
        return copy.deepcopy(obj)

    def find(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self._objects.get(self._key(plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        scoped = BY_PLURAL[plural].namespaced and namespace
        return [
            copy.deepcopy(o)
            for (p, ns, _), o in sorted(self._objects.items())
            if p == plural and (not scoped or ns == namespace)
        ]

    def create(self, plural: str, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        kind = BY_PLURAL[plural]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value")
        if kind.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        key = self._key(plural, namespace, name)
        if key in self._objects:
            raise ApiError(
                409, "AlreadyExists", f'{plural}{"." + kind.group if kind.group else ""} "{name}" already exists'
            )
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        for stale in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(stale, None)
        self._objects[key] = obj
        self._emit("ADDED", plural, obj)
        return copy.deepcopy(obj)

    def replace(
        self, plural: str, namespace: str | None, name: str, obj: dict[str, Any], *, status: bool = False
    ) -> dict[str, Any]:
        """PUT semantics: the whole object (or only its status); a stale metadata.resourceVersion is a conflict."""
        key = self._key(plural, namespace, name)
        current = self._objects.get(key)
        if current is None:
            raise not_found(plural, name, BY_PLURAL[plural].group)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        wanted = meta.get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise conflict(
                plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if status:
            new = copy.deepcopy(current)
            new["status"] = obj.get("status", {})
        else:
            new = obj
            new["status"] = (
                obj.get("status", current.get("status", {})) if "status" in obj else current.get("status", {})
            )
            for fixed in (
                "uid",
                "creationTimestamp",
                "namespace",
                "name",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ):
                if fixed in current["metadata"]:
                    meta[fixed] = current["metadata"][fixed]
            meta["generation"] = current["metadata"].get("generation", 1)
            if json.dumps(new.get("spec"), sort_keys=True) != json.dumps(current.get("spec"), sort_keys=True):
                meta["generation"] += 1
        new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
        if new == current:
            return copy.deepcopy(current)  # no change: no new resourceVersion, no event
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key] = new
        self._emit("MODIFIED", plural, new)
        return copy.deepcopy(new)

    def delete(
        self, plural: str, namespace: str | None, name: str, grace: int | None = None, uid: str | None = None
    ) -> dict[str, Any]:
        """Pods with a grace period become Terminating (deletionTimestamp) and are removed by `remove` once the
        kubelet stopped them; everything else goes at once."""
        key = self._key(plural, namespace, name)
        current = self._objects.get(key)
        if current is None:
            raise not_found(plural, name, BY_PLURAL[plural].group)
        if uid and current["metadata"]["uid"] != uid:
            raise conflict(
                plural,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {current['metadata']['uid']}",
            )
        if plural == "pods" and (current.get("spec") or {}).get("nodeName"):
            if grace is None:
                grace = int((current.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            meta = current["metadata"]
            if grace > 0:
                if "deletionTimestamp" in meta:
                    return copy.deepcopy(current)
                new = copy.deepcopy(current)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                new["metadata"]["resourceVersion"] = self._next_rv()
                self._objects[key] = new
                self._emit("MODIFIED", plural, new)
                return copy.deepcopy(new)
        return self.remove(plural, namespace, name)

    def remove(self, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        current = self._objects.pop(self._key(plural, namespace, name), None)
        if current is None:
            raise not_found(plural, name, BY_PLURAL[plural].group)
        current["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", plural, current)
        return copy.deepcopy(current)

    def subscribe(self, plural: str, since: int | None) -> Subscription:
        """Events of `plural` after resourceVersion `since` (None: from now), registered at once so nothing is missed
        between a list and its watch. 410 when `since` is older than the history."""
        backlog: list[Event] = []
        if since is not None and since < self._rv:
            oldest = self._history[0].rv if self._history else self._rv
            if since < oldest - 1:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest - 1})")
            backlog = [e for e in self._history if e.rv > since and e.plural == plural]
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        for event in backlog:
            queue.put_nowait(event)
        self._watchers.add(queue)
        return Subscription(self, plural, queue)

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._watchers.discard(queue)


class Subscription:
    def __init__(self, store: Store, plural: str, queue: asyncio.Queue[Event | None]) -> None:
        self.store, self.plural, self.queue = store, plural, queue

    async def events(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self.queue.get()
                if event is None:
                    return
                if event.plural == self.plural:
                    yield event
        finally:
            self.close()

    def close(self) -> None:
        self.store.unsubscribe(self.queue)

"""Delta XDS (incremental ADS), the server's side, sans-IO: what istiod does for each ztunnel stream.

A `Catalog` holds what the control plane serves: per type URL, resource name → (version, serialized resource), and a
generation that grows with every committed change (it keeps a short log of which names each generation touched, so
a push to a stream that is up to date costs the changes, not the catalog). A `Stream` is one client's view:

- the first request of a type subscribes (wildcard unless it names resources, as ztunnel's on-demand mode does with
  subscribe `*` + unsubscribe `*`), records the node, and takes `initial_resource_versions` as what the client holds,
  so a reconnecting client gets only what changed and `removed_resources` for what is gone;
- a push sends each type's difference since the stream's last view, one response per type, with a fresh nonce;
- an ACK marks the stream as holding the generation that response reflected (later pushes that found nothing to send
  for the type count too); a NACK keeps the older generation and forgets what that response carried, so the next
  push offers it again. `synced(type)` is what the cluster's readiness is built on: "every proxy ACKed the latest".

No I/O, no clock; the gRPC servicer (`pyztunnel.xds.server`) drives it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from pyztunnel.protocols._pb import discovery_pb2
from pyztunnel.protocols.xds import ZTUNNEL_TYPES, ProtocolError

WILDCARD = "*"
LOG_LIMIT = 200_000  # names kept in the change log; a stream further behind gets a full comparison


def version_of(payload: bytes) -> str:
    """A resource's version: a digest of its bytes, so an unchanged resource keeps its version across restarts."""
    return hashlib.blake2b(payload, digest_size=8).hexdigest()


@dataclasses.dataclass(frozen=True)
class Entry:
    version: str
    payload: bytes  # a serialized Address or Authorization

    @classmethod
    def of(cls, payload: bytes) -> Entry:
        return cls(version_of(payload), payload)


class Catalog:
    """The resources the control plane serves, per type URL, with a generation per committed change."""

    def __init__(self, types: Sequence[str] = ZTUNNEL_TYPES) -> None:
        self.types = tuple(types)
        self.resources: dict[str, dict[str, Entry]] = {t: {} for t in self.types}
        self.generation = 0
        self._log: list[tuple[int, str, tuple[str, ...]]] = []  # (generation, type, names it touched)
        self._logged = 0
        self._staged: dict[str, set[str]] = {}

    def put(self, type_url: str, name: str, entry: Entry | None) -> bool:
        """Set (or, with None, remove) one resource; staged until `commit`. True if that changes anything."""
        held = self.resources[type_url]
        old = held.get(name)
        if entry is None:
            if old is None:
                return False
            del held[name]
        else:
            if old is not None and old.version == entry.version:
                return False
            held[name] = entry
        self._staged.setdefault(type_url, set()).add(name)
        return True

    def replace(self, type_url: str, resources: Mapping[str, Entry]) -> int:
        """Make a type's resources exactly `resources`; returns how many names changed (staged until commit)."""
        changed = 0
        for name in [n for n in self.resources[type_url] if n not in resources]:
            changed += self.put(type_url, name, None)
        for name, entry in resources.items():
            changed += self.put(type_url, name, entry)
        return changed

    def commit(self) -> int:
        """End a change: the generation grows if anything was staged. Returns the (possibly unchanged) generation."""
        if not self._staged:
            return self.generation
        self.generation += 1
        for type_url, names in self._staged.items():
            self._log.append((self.generation, type_url, tuple(names)))
            self._logged += len(names)
        self._staged = {}
        while self._logged > LOG_LIMIT and len(self._log) > 1:
            self._logged -= len(self._log.pop(0)[2])
        return self.generation

    def changed_since(self, type_url: str, generation: int) -> set[str] | None:
        """Names of a type touched after `generation`; None if the log does not reach back that far."""
        if generation >= self.generation:
            return set()
        if not self._log or self._log[0][0] > generation + 1:
            return None
        out: set[str] = set()
        for gen, t, names in reversed(self._log):
            if gen <= generation:
                break
            if t == type_url:
                out.update(names)
        return out


@dataclasses.dataclass
class Subscription:
    """One type on one stream."""

    wildcard: bool
    names: set[str]
    held: dict[str, str]  # name -> version the client holds, as far as we know
    seen: int = -1  # the catalog generation `held` was last brought up to (-1: compare everything)
    covered: int = -1  # the newest generation a push found nothing more to send for
    synced: int = -1  # the generation the client ACKed holding
    inflight: dict[str, tuple[int, tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    last_nack: str = ""
    responded: bool = False  # the first answer to a subscription is sent even when empty (readiness waits on it)
    acks: int = 0
    nacks: int = 0

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


@dataclasses.dataclass(frozen=True)
class Event:
    """What a request meant, for the shell's logs and the controller's readiness."""

    type_url: str
    kind: str  # "subscribe" | "ack" | "nack" | "stale"
    nonce: str = ""
    error: str = ""


class Stream:
    """The server's bookkeeping for one client stream."""

    _ids = itertools.count(1)

    def __init__(self, catalog: Catalog, peer: str = "") -> None:
        self.catalog = catalog
        self.peer = peer  # who authenticated (the node of its bearer token)
        self.node_id = ""
        self.metadata: dict[str, object] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._nonces = itertools.count(1)
        self.id = next(self._ids)

    # ------------------------------------------------------------------ requests
    def receive(self, data: bytes) -> tuple[list[Event], list[discovery_pb2.DeltaDiscoveryResponse]]:
        try:
            request = discovery_pb2.DeltaDiscoveryRequest.FromString(data)
        except DecodeError as exc:
            raise ProtocolError(f"undecodable request ({len(data)} bytes): {exc}") from None
        return self.receive_message(request)

    def receive_message(
        self, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> tuple[list[Event], list[discovery_pb2.DeltaDiscoveryResponse]]:
        type_url = request.type_url
        if type_url not in self.catalog.resources:
            raise ProtocolError(f"unknown type {type_url!r}")
        if request.HasField("node") and not self.node_id:
            self.node_id = request.node.id
            self.metadata = dict(request.node.metadata.items())
        events: list[Event] = []
        sub = self.subscriptions.get(type_url)
        if sub is None:
            subscribe = set(request.resource_names_subscribe)
            unsubscribe = set(request.resource_names_unsubscribe)
            wildcard = (not subscribe or WILDCARD in subscribe) and WILDCARD not in unsubscribe
            sub = Subscription(
                wildcard=wildcard,
                names=(subscribe - unsubscribe) - {WILDCARD},
                held=dict(request.initial_resource_versions),
            )
            self.subscriptions[type_url] = sub
            events.append(Event(type_url, "subscribe"))
        else:
            if request.response_nonce:
                events.append(self._answered(type_url, sub, request))
            if not self._resubscribe(sub, request):
                return events, []  # a plain ACK/NACK: what it needs (a NACK's resend) waits for the next push
        response = self._diff(type_url, sub)
        return events, [response] if response is not None else []

    def _answered(self, type_url: str, sub: Subscription, request: discovery_pb2.DeltaDiscoveryRequest) -> Event:
        nonce = request.response_nonce
        if nonce not in sub.inflight:
            return Event(type_url, "stale", nonce)  # an answer to a response we no longer track: ignored (Envoy)
        newest = next(reversed(sub.inflight))
        generation, names = sub.inflight[nonce]
        for older in list(sub.inflight):  # answering one answers every earlier one (the client is in order)
            del sub.inflight[older]
            if older == nonce:
                break
        detail = request.error_detail if request.HasField("error_detail") else None
        if detail is not None and (detail.code or detail.message):
            sub.nacks += 1
            sub.last_nack = detail.message
            for name in names:  # offer them again with the next push (ztunnel keeps its last good version)
                sub.held.pop(name, None)
            sub.seen = -1
            return Event(type_url, "nack", nonce, detail.message)
        sub.acks += 1
        sub.synced = max(sub.covered, generation) if nonce == newest else generation
        return Event(type_url, "ack", nonce)

    def _resubscribe(self, sub: Subscription, request: discovery_pb2.DeltaDiscoveryRequest) -> bool:
        """Apply a request's subscription changes; True if it had any."""
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                sub.wildcard = True
            else:
                sub.names.add(name)
            sub.held.pop(name, None)  # Envoy: a subscribed name is always sent, even if the client may have it
            sub.seen = -1
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                sub.wildcard = False
            else:
                sub.names.discard(name)
            sub.seen = -1
        return bool(request.resource_names_subscribe or request.resource_names_unsubscribe)

    # ------------------------------------------------------------------ pushes
    def push(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """After a catalog commit: one response per type that has something new for this client."""
        out = []
        for type_url, sub in self.subscriptions.items():
            response = self._diff(type_url, sub)
            if response is not None:
                out.append(response)
        return out

    def _diff(self, type_url: str, sub: Subscription) -> discovery_pb2.DeltaDiscoveryResponse | None:
        catalog = self.catalog
        resources = catalog.resources[type_url]
        candidates: Iterable[str] | None = catalog.changed_since(type_url, sub.seen) if sub.seen >= 0 else None
        if candidates is None:
            candidates = itertools.chain(resources, [n for n in sub.held if n not in resources])
        upserts: list[tuple[str, Entry]] = []
        removes: list[str] = []
        held = sub.held
        for name in candidates:
            entry = resources.get(name)
            if entry is None or not sub.wants(name):
                if held.pop(name, None) is not None:
                    removes.append(name)
            elif held.get(name) != entry.version:
                held[name] = entry.version
                upserts.append((name, entry))
        sub.seen = catalog.generation
        if not upserts and not removes and sub.responded:
            sub.covered = catalog.generation
            if not sub.inflight:
                sub.synced = catalog.generation
            return None
        sub.responded = True
        nonce = f"{catalog.generation}-{next(self._nonces)}"
        sub.inflight[nonce] = (catalog.generation, tuple(name for name, _ in upserts))
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(catalog.generation),
            type_url=type_url,
            nonce=nonce,
            removed_resources=removes,
            resources=[
                discovery_pb2.Resource(
                    name=name, version=entry.version, resource=any_pb2.Any(type_url=type_url, value=entry.payload)
                )
                for name, entry in upserts
            ],
        )

    # ------------------------------------------------------------------ state
    def synced(self, type_url: str) -> int:
        sub = self.subscriptions.get(type_url)
        return sub.synced if sub is not None else -1

    def current(self, types: Sequence[str] = ZTUNNEL_TYPES) -> bool:
        """The client ACKed the catalog's current generation for every one of `types`."""
        return all(self.synced(t) == self.catalog.generation for t in types)

    def status(self) -> dict[str, object]:
        return {
            "node": self.node_id,
            "peer": self.peer,
            "types": {
                t: {
                    "synced": s.synced,
                    "acks": s.acks,
                    "nacks": s.nacks,
                    "lastNack": s.last_nack,
                    "resources": len(s.held),
                }
                for t, s in self.subscriptions.items()
            },
        }

"""Delta XDS (incremental ADS), the client's side, sans-IO: serialized responses in, requests and decisions out.

What ztunnel's `src/xds/client.rs` does, as a state machine the gRPC stream drives (kubernetes.md §2):

- a stream starts with one request per type (wildcard: nothing subscribed by name), carrying the node and, on a
  reconnect, `initial_resource_versions` = what we hold, so the server sends only what changed and what was removed;
- every response is answered with its nonce: an ACK, or a NACK whose `error_detail` names each rejected resource
  and why (ztunnel joins `name: reason` with `; `). Resources are judged one by one, as ztunnel's handlers do: the
  good ones are applied, a rejected one keeps its last good version (or stays absent);
- `removed_resources` are dropped;
- readiness: the first ACKed response of each type (ztunnel's `types_to_expect`), once per process;
- a stream's end is classified as ztunnel's `istio_xds_connection_terminations_total{reason}` and gives the delay
  before the next attempt: 10 ms doubling to 15 s (ztunnel: no jitter; a jitter fraction is a switch). ztunnel
  resets the delay after a clean end or a local error even when the stream achieved nothing; here it is reset only
  by a stream that got a response ACKed, so a server that accepts and hangs up (or sends garbage) is retried with a
  growing delay, not in a tight loop.

The resource payloads stay opaque here: the caller decodes and judges them (`Update.upserts`) and hands back the
rejects. Time is an argument; nothing here sleeps, reads a clock or does I/O.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from google.protobuf.message import DecodeError

from pyztunnel.protocols._pb import discovery_pb2, envoy_core_pb2, google_rpc_status_pb2

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
ZTUNNEL_TYPES = (ADDRESS_TYPE, AUTHORIZATION_TYPE)
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

INITIAL_BACKOFF = 0.010  # ztunnel's INITIAL_BACKOFF
MAX_BACKOFF = 15.0  # ztunnel's MAX_BACKOFF
MAX_ERROR_DETAIL = 4096  # a NACK names its rejects; a response of 100 000 bad resources must not make a 10 MB NACK


class Termination(StrEnum):
    """ztunnel's ConnectionTerminationReason (the `reason` label)."""

    CONNECTION_ERROR = "ConnectionError"
    ERROR = "Error"
    RECONNECT = "Reconnect"
    COMPLETE = "Complete"


# gRPC status codes ztunnel treats as an ordinary reconnect (istiod's max connection age, a GOAWAY): retried at once.
_RECONNECT_CODES = frozenset({"UNKNOWN", "CANCELLED", "DEADLINE_EXCEEDED"})
_RECONNECT_UNAVAILABLE = ("transport is closing", "received prior goaway")


def classify(code: str | None, details: str = "", *, got_response: bool = False) -> Termination:
    """Why a stream ended. `code` is the gRPC status name (None: ended cleanly, "LOCAL": our own error, such as a
    response that does not parse). UNAVAILABLE before any response is a connection error (the server is down or
    unreachable: gRPC reports a failed connect that way)."""
    if code is None:
        return Termination.COMPLETE
    if code in _RECONNECT_CODES or (code == "UNAVAILABLE" and any(s in details for s in _RECONNECT_UNAVAILABLE)):
        return Termination.RECONNECT
    if code == "UNAVAILABLE" and not got_response:
        return Termination.CONNECTION_ERROR
    return Termination.ERROR


@dataclasses.dataclass
class Backoff:
    """The delay before the next stream. ztunnel: 10 ms, doubled on each error, at most 15 s."""

    initial: float = INITIAL_BACKOFF
    maximum: float = MAX_BACKOFF
    jitter: float = 0.0  # fraction, e.g. 0.2 → ±20 %; ztunnel's client has none
    current: float = INITIAL_BACKOFF
    rand: Callable[[], float] = random.random

    def next_delay(self, reason: Termination, progressed: bool) -> float:
        if progressed:
            self.current = self.initial
        if reason is Termination.RECONNECT:
            self.current = self.initial
            delay = self.initial
        elif reason is Termination.COMPLETE and progressed:
            delay = 0.0
        else:
            self.current = min(self.maximum, self.current * 2)
            delay = self.current
        if self.jitter and delay:
            delay *= 1 + self.jitter * (2 * self.rand() - 1)
        return delay


class ProtocolError(Exception):
    """The server broke the protocol (a response that does not parse, a second response before we answered)."""


@dataclasses.dataclass(frozen=True)
class Resource:
    name: str
    version: str
    payload: bytes  # the Any's value: a serialized Address or Authorization


@dataclasses.dataclass(frozen=True)
class Update:
    """One response, unpacked: what the caller must apply (`upserts`, `removes`) and judge."""

    type_url: str
    nonce: str
    system_version: str
    upserts: tuple[Resource, ...]
    removes: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]  # (name, reason) found here: no payload, another type, a duplicate
    payload_bytes: int  # ztunnel's istio_xds_message_bytes_total: the sum of the resources' Any values


@dataclasses.dataclass(frozen=True)
class Answer:
    request: discovery_pb2.DeltaDiscoveryRequest
    acked: bool
    became_ready: bool  # the last expected type got its first ACK: readiness may clear "state manager"
    error: str = ""  # the NACK's error_detail message


@dataclasses.dataclass
class Stats:
    """Counters behind ztunnel's istio_xds_* metrics, read by the metrics collector."""

    messages: dict[str, int] = dataclasses.field(default_factory=dict)  # istio_xds_message_total{url}
    message_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # istio_xds_message_bytes_total{url}
    terminations: dict[str, int] = dataclasses.field(default_factory=dict)  # {reason}
    acks: int = 0
    nacks: int = 0


def error_detail(rejects: Iterable[tuple[str, str]]) -> str:
    """ztunnel's NACK message: `name: reason` joined by `; `, bounded."""
    parts: list[str] = []
    size = 0
    items = list(rejects)
    for i, (name, reason) in enumerate(items):
        part = f"{name}: {reason}"
        if size + len(part) > MAX_ERROR_DETAIL:
            parts.append(f"(and {len(items) - i} more)")
            break
        parts.append(part)
        size += len(part) + 2
    return "; ".join(parts)


class ClientState:
    """The bookkeeping of one delta ADS client across streams (one process's XDS session)."""

    def __init__(
        self,
        node: envoy_core_pb2.Node,
        types: Sequence[str] = ZTUNNEL_TYPES,
        backoff: Backoff | None = None,
    ) -> None:
        self.node = node
        self.types = tuple(types)
        self.backoff = backoff or Backoff()
        self.stats = Stats()
        # name -> version of every resource we hold, per type; survives reconnects (initial_resource_versions)
        self.versions: dict[str, dict[str, str]] = {t: {} for t in self.types}
        self.system_versions: dict[str, str] = {}  # the last ACKed response's system_version_info, per type
        self.last_nack: dict[str, str] = {}  # type -> the error of the last NACK (config_dump)
        self.expecting: set[str] = set(self.types)  # ztunnel's types_to_expect: readiness waits for these
        self.ready = False
        self.connected = False
        self._pending: Update | None = None  # received, not answered yet
        self._progressed = False  # this stream got a response ACKed

    # ------------------------------------------------------------------ stream lifecycle
    def start_stream(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """The first requests of a new stream, one per type, in order."""
        self.connected = True
        self._pending = None
        self._progressed = False
        return [
            discovery_pb2.DeltaDiscoveryRequest(
                node=self.node, type_url=type_url, initial_resource_versions=self.versions[type_url]
            )
            for type_url in self.types
        ]

    def end_stream(self, reason: Termination) -> float:
        """The stream is over: count it and return the delay before the next one (seconds)."""
        self.connected = False
        self._pending = None
        self.stats.terminations[reason.value] = self.stats.terminations.get(reason.value, 0) + 1
        return self.backoff.next_delay(reason, self._progressed)

    @property
    def progressed(self) -> bool:
        return self._progressed

    # ------------------------------------------------------------------ responses
    def receive(self, data: bytes) -> Update:
        """A serialized DeltaDiscoveryResponse. Raises ProtocolError for one that does not parse or that arrives
        before the previous one was answered (the stream must then be torn down)."""
        if self._pending is not None:
            raise ProtocolError("a response arrived before the previous one was answered")
        try:
            response = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
        except DecodeError as exc:
            raise ProtocolError(f"undecodable response ({len(data)} bytes): {exc}") from None
        return self.receive_message(response)

    def receive_message(self, response: discovery_pb2.DeltaDiscoveryResponse) -> Update:
        if self._pending is not None:
            raise ProtocolError("a response arrived before the previous one was answered")
        type_url = response.type_url
        upserts: list[Resource] = []
        rejected: list[tuple[str, str]] = []
        seen: set[str] = set()
        size = 0
        for resource in response.resources:
            name = resource.name
            if not resource.HasField("resource"):
                rejected.append((name, "XDS payload without resource"))
                continue
            payload = resource.resource
            size += len(payload.value)
            if payload.type_url != type_url:
                rejected.append((name, f"resource of type {payload.type_url!r} in a {type_url!r} response"))
                continue
            if name in seen:
                rejected.append((name, "duplicate resource name in one response"))
                continue
            seen.add(name)
            upserts.append(Resource(name, resource.version, payload.value))
        self.stats.messages[type_url] = self.stats.messages.get(type_url, 0) + 1
        self.stats.message_bytes[type_url] = self.stats.message_bytes.get(type_url, 0) + size
        if type_url not in self.versions:
            rejected = [(type_url, "unknown type: not subscribed")]
            upserts = []
        update = Update(
            type_url=type_url,
            nonce=response.nonce,
            system_version=response.system_version_info,
            upserts=tuple(upserts),
            removes=tuple(response.removed_resources) if type_url in self.versions else (),
            rejected=tuple(rejected),
            payload_bytes=size,
        )
        self._pending = update
        return update

    def answer(self, update: Update, rejects: Iterable[tuple[str, str]] = ()) -> Answer:
        """The caller applied `update` except for `rejects` (name, reason): record it and build the ACK or NACK."""
        if self._pending is not update:
            raise ProtocolError("answering a response that is not the pending one")
        self._pending = None
        all_rejects = [*update.rejected, *rejects]
        held = self.versions.get(update.type_url)
        if held is not None:
            refused = {name for name, _ in all_rejects}
            for resource in update.upserts:
                if resource.name not in refused:
                    held[resource.name] = resource.version
            for name in update.removes:
                held.pop(name, None)
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=update.type_url, response_nonce=update.nonce)
        became_ready = False
        if all_rejects:
            message = error_detail(all_rejects)
            request.error_detail.CopyFrom(google_rpc_status_pb2.Status(message=message))
            self.stats.nacks += 1
            self.last_nack[update.type_url] = message
            return Answer(request, acked=False, became_ready=False, error=message)
        self.stats.acks += 1
        self._progressed = True
        self.system_versions[update.type_url] = update.system_version
        if update.type_url in self.expecting:
            self.expecting.discard(update.type_url)
            if not self.expecting and not self.ready:
                self.ready = True
                became_ready = True
        return Answer(request, acked=True, became_ready=became_ready)

    def forget(self, type_url: str, names: Iterable[str]) -> None:
        """Names the caller no longer holds (e.g. a rejected replacement it dropped)."""
        held = self.versions.get(type_url, {})
        for name in names:
            held.pop(name, None)


def node(node_id: str, metadata: Mapping[str, Any]) -> envoy_core_pb2.Node:
    """The Node ztunnel sends: an id and a metadata Struct (strings, plus ISTIO_METAJSON_* values), nothing else."""
    out = envoy_core_pb2.Node(id=node_id)
    out.metadata.update(dict(metadata))
    return out

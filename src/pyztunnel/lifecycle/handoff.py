"""Listener handoff between an old and a new proxy instance, sans-IO: messages, the two state machines, validation.

Transport (handoff_io.py): a unix SOCK_SEQPACKET socket (`handoff.sock` in the node's run dir); one message is one
record holding a JSON header and, for `listeners`, up to 200 fds as SCM_RIGHTS (the kernel's limit is 253).

    new → old  {"type": "hello", "version": 2, "nonce"}
    old → new  {"type": "hello", "version": 2, "nonce", "proof"}    (or {"type": "error", "reason"} and close)
    new → old  {"type": "request", "pods": [{"uid", "netns": [st_dev, st_ino], "ports": [15001, …]}], "proof"}
    old → new  {"type": "listeners", "listeners": [{"uid", "port"}, …]}  + one fd per entry, in order; repeated
    old → new  {"type": "done", "missing": [{"uid", "reason"}]}
    new → old  {"type": "adopted", "listeners": [{"uid", "port"}, …]}   once it accepts on them
    old → new  {"type": "released"}                          the old one no longer accepts on them
           … the connection stays open: it is the lease of the released listeners …

Both ends prove they hold the node's handoff key before anything is offered (`nonce`, `proof`: peerauth.py); the
shell has already checked the peer's uid (SO_PEERCRED). Version 1 had no proof: its peers are refused.

**The lease.** A release holds only while the new instance lives: the connection stays open after `released`, and
when it ends (the new instance exited, was killed, or broke the protocol) the old one accepts on those listeners
again, unless it is draining itself (`HandoffServer.gone()` says which). Otherwise a new instance that died after
`adopted` would leave the listeners un-accepted while the old one still reports ready.

Why this is lossless: SCM_RIGHTS gives the new process a second descriptor of the *same* open file description, so
both share one socket and one accept queue. Whoever calls accept() next gets the queued connection; nothing is
reset when the old one stops accepting. The socket is torn down only when its last reference goes, so once the new
process holds its duplicate (recvmsg returned), the old one closing its own copy is harmless. Before that the fds in
flight keep the socket alive, but if the receiver vanished without reading them they would be dropped: that is why the
old one keeps its copies open, and keeps accepting, until `adopted` arrives. Two things the old one must never do to a
handed-off listener: `shutdown()` (it acts on the shared socket and resets its queue) and closing before removing it
from its event loop (an epoll registration belongs to the open file description and would outlive the fd number).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pyztunnel.lifecycle.peerauth import AuthError, Handshake
from pyztunnel.protocols import linux

VERSION = 2
MAX_FDS_PER_MESSAGE = 200
MAX_MESSAGE_BYTES = 256 * 1024
PROXY_PORTS = (15001, 15006, 15008)

Netns = tuple[int, int]  # (st_dev, st_ino) of the namespace file


class ProtocolError(Exception):
    pass


@dataclasses.dataclass(frozen=True, order=True)
class ListenerKey:
    uid: str
    port: int


@dataclasses.dataclass(frozen=True)
class PodRequest:
    uid: str
    netns: Netns
    ports: tuple[int, ...] = PROXY_PORTS


# Messages -----------------------------------------------------------------------------------------------------------


def encode(msg: Mapping[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("message without a type")
    return msg


def hello(auth: Handshake) -> bytes:
    return encode({"type": "hello", "version": VERSION, **auth.hello_fields()})


def authenticate_hello(auth: Handshake, msg: Mapping[str, Any]) -> None:
    """The peer's hello: its nonce (and, from the old end, its proof). Raises ProtocolError."""
    try:
        auth.peer_hello(msg)
    except AuthError as exc:
        raise ProtocolError(str(exc)) from None


def authenticate_proof(auth: Handshake, msg: Mapping[str, Any]) -> None:
    """The new end's first message after the hellos carries its proof. Raises ProtocolError."""
    try:
        auth.peer_proof(msg)
    except AuthError as exc:
        raise ProtocolError(str(exc)) from None


def _keys(items: Any) -> list[ListenerKey]:
    if not isinstance(items, list):
        raise ProtocolError("listeners must be a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("uid"), str) or type(item.get("port")) is not int:
            raise ProtocolError(f"bad listener entry {item!r}")
        out.append(ListenerKey(item["uid"], item["port"]))
    return out


def _key_list(keys: Iterable[ListenerKey]) -> list[dict[str, Any]]:
    return [{"uid": k.uid, "port": k.port} for k in keys]


# Validation of a received fd ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SocketFacts:
    """What the shell found out about a received fd (handoff_io.probe). `error` when it is not even a socket."""

    family: int = 0
    type: int = 0
    accepting: bool = False
    port: int | None = None
    netns: Netns | None = None
    error: str | None = None


def check_inet_stream(error: str | None, family: int, kind: int) -> str | None:
    """The checks every received socket passes first (listener handoff and connection migration alike)."""
    if error is not None:
        return error
    if family not in (linux.AF_INET, linux.AF_INET6):
        return f"not an inet socket (family {family})"
    if kind != linux.SOCK_STREAM:
        return f"not a stream socket (type {kind})"
    return None


def check_netns(found: Netns | None, expected: Netns) -> str | None:
    """A received socket must live in the pod's network namespace."""
    if found is None:
        return "network namespace unknown"
    if found != expected:
        return f"in network namespace {found[1]}, not the pod's {expected[1]}"
    return None


def validate(facts: SocketFacts, key: ListenerKey, expected_netns: Netns) -> str | None:
    """None if the fd is the listener it claims to be, else why it is rejected."""
    why = check_inet_stream(facts.error, facts.family, facts.type)
    if why is not None:
        return why
    if not facts.accepting:
        return "not a listening socket"
    if facts.port != key.port:
        return f"bound to port {facts.port}, not {key.port}"
    return check_netns(facts.netns, expected_netns)


# The new instance ---------------------------------------------------------------------------------------------------


class ClientState(enum.Enum):
    HELLO = "hello"
    LISTENERS = "listeners"
    FINISHED = "finished"


@dataclasses.dataclass
class ClientStep:
    send: list[bytes] = dataclasses.field(default_factory=list)
    keep: list[tuple[int, ListenerKey]] = dataclasses.field(default_factory=list)  # fd index → what it is
    reject: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # fd index → why; the shell closes it
    finished: bool = False


class HandoffClient:
    """The new instance's side: asks for the listeners of `pods`, decides on every fd, and knows what to bind itself."""

    def __init__(self, pods: Sequence[PodRequest], key: bytes) -> None:
        self.pods = {p.uid: p for p in pods}
        self.auth = Handshake(key, "new")
        self.state = ClientState.HELLO
        self.adopted: set[ListenerKey] = set()
        self.reasons: dict[ListenerKey, str] = {}
        self._general: str | None = None  # why everything not adopted falls back

    def wanted(self) -> list[ListenerKey]:
        return sorted(ListenerKey(p.uid, port) for p in self.pods.values() for port in p.ports)

    def start(self) -> bytes:
        return hello(self.auth)

    def receive(self, data: bytes, facts: Sequence[SocketFacts]) -> ClientStep:
        """One message from the old instance with the facts of the fds that came with it."""
        step = ClientStep()
        try:
            msg = decode(data)
            self._receive(msg, facts, step)
        except ProtocolError as exc:
            # Nothing of a malformed message is kept (errors are raised before any fd of it is decided).
            step.keep = []
            step.reject = [(i, f"protocol error: {exc}") for i in range(len(facts))]
            self.fail(f"protocol error: {exc}")
            step.finished = True
        return step

    def _receive(self, msg: dict[str, Any], facts: Sequence[SocketFacts], step: ClientStep) -> None:
        kind = msg["type"]
        if kind == "error":
            raise ProtocolError(f"peer refused: {msg.get('reason')}")
        if self.state is ClientState.HELLO:
            if kind != "hello":
                raise ProtocolError(f"expected hello, got {kind}")
            if msg.get("version") != VERSION:
                raise ProtocolError(f"peer speaks version {msg.get('version')}, we speak {VERSION}")
            if facts:
                raise ProtocolError("fds with hello")
            authenticate_hello(self.auth, msg)
            self.state = ClientState.LISTENERS
            pods = [{"uid": p.uid, "netns": list(p.netns), "ports": list(p.ports)} for p in self.pods.values()]
            step.send.append(encode({"type": "request", "pods": pods, **self.auth.proof_field()}))
            return
        if self.state is ClientState.LISTENERS:
            if kind == "listeners":
                keys = _keys(msg.get("listeners"))
                if len(keys) != len(facts):
                    raise ProtocolError(f"{len(keys)} listeners announced, {len(facts)} fds received")
                for i, (key, fact) in enumerate(zip(keys, facts, strict=True)):
                    reason = self._check(key, fact)
                    if reason is None:
                        self.adopted.add(key)
                        self.reasons.pop(key, None)
                        step.keep.append((i, key))
                    else:
                        if key.uid in self.pods:
                            self.reasons.setdefault(key, reason)
                        step.reject.append((i, reason))
                return
            if kind == "done":
                if facts:
                    raise ProtocolError("fds with done")
                for item in msg.get("missing") or []:
                    if isinstance(item, dict) and item.get("uid") in self.pods:
                        for port in self.pods[item["uid"]].ports:
                            self.reasons.setdefault(
                                ListenerKey(item["uid"], port), f"not offered: {item.get('reason')}"
                            )
                self.state = ClientState.FINISHED
                step.finished = True
                return
            raise ProtocolError(f"unexpected {kind}")
        raise ProtocolError(f"unexpected {kind} after done")

    def _check(self, key: ListenerKey, facts: SocketFacts) -> str | None:
        pod = self.pods.get(key.uid)
        if pod is None:
            return f"pod {key.uid} was not asked for"
        if key.port not in pod.ports:
            return f"port {key.port} was not asked for"
        if key in self.adopted:
            return "duplicate listener"
        return validate(facts, key, pod.netns)

    def fail(self, reason: str) -> None:
        """The peer vanished, timed out or broke the protocol: what is not adopted yet falls back, for this reason."""
        if self._general is None:
            self._general = reason
        self.state = ClientState.FINISHED

    def to_bind(self) -> dict[ListenerKey, str]:
        """Every wanted listener not adopted, with why: the new instance binds these itself."""
        out = {}
        for key in self.wanted():
            if key in self.adopted:
                continue
            out[key] = self.reasons.get(key) or self._general or "not offered"
        return out

    def adopted_message(self, keys: Iterable[ListenerKey]) -> bytes:
        return encode({"type": "adopted", "listeners": _key_list(sorted(keys))})


# The old instance ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Owned:
    """A pod the old instance serves: its netns and the ports it listens on."""

    netns: Netns
    ports: tuple[int, ...]


@dataclasses.dataclass
class ServerStep:
    send: list[tuple[bytes, list[ListenerKey]]] = dataclasses.field(default_factory=list)  # header + fds to attach
    released: list[ListenerKey] = dataclasses.field(default_factory=list)  # the new one accepts on these now
    reclaim: list[ListenerKey] = dataclasses.field(default_factory=list)  # the lease broke: accept on these again
    close: bool = False


class HandoffServer:
    """The old instance's side of one handoff connection. `inventory()` says what it serves right now."""

    def __init__(
        self, inventory: Callable[[], Mapping[str, Owned]], key: bytes, batch: int = MAX_FDS_PER_MESSAGE
    ) -> None:
        if not 1 <= batch <= MAX_FDS_PER_MESSAGE:
            raise ValueError(f"batch must be 1..{MAX_FDS_PER_MESSAGE}")
        self._inventory = inventory
        self._auth = Handshake(key, "old")
        self._batch = batch
        self._offered: set[ListenerKey] = set()
        self._released: list[ListenerKey] = []
        self._state = "hello"

    @property
    def fresh(self) -> bool:
        """Nothing received yet (the first message may ask for another phase, see lifecycle.migrate)."""
        return self._state == "hello"

    def receive(self, data: bytes) -> ServerStep:
        step = ServerStep()
        try:
            msg = decode(data)
            kind = msg["type"]
            if self._state == "hello" and kind == "hello":
                if msg.get("version") != VERSION:
                    reason = f"version {msg.get('version')} not supported, we speak {VERSION}"
                    step.send.append((encode({"type": "error", "reason": reason}), []))
                    step.close = True
                    return step
                authenticate_hello(self._auth, msg)
                self._state = "request"
                step.send.append((hello(self._auth), []))
            elif self._state == "request" and kind == "request":
                authenticate_proof(self._auth, msg)  # before anything is offered
                self._offer(msg, step)
                self._state = "adopted"
            elif self._state == "adopted" and kind == "adopted":
                # Only what we actually handed over can be released: a confused peer cannot stop other listeners.
                step.released = sorted(set(_keys(msg.get("listeners"))) & self._offered)
                self._released = list(step.released)
                step.send.append((encode({"type": "released"}), []))
                self._state = "leased"
            else:
                raise ProtocolError(f"unexpected {kind} in state {self._state}")
        except ProtocolError as exc:
            step.send = [(encode({"type": "error", "reason": str(exc)}), [])]
            step.released = []
            step.reclaim = self.gone()
            step.close = True
        return step

    @property
    def leased(self) -> list[ListenerKey]:
        """What the new instance accepts on while this connection lives."""
        return list(self._released) if self._state == "leased" else []

    def gone(self) -> list[ListenerKey]:
        """The connection ended (or broke the protocol): the released listeners to accept on again, once."""
        reclaim = self.leased
        self._released = []
        self._state = "closed"
        return reclaim

    def _offer(self, msg: dict[str, Any], step: ServerStep) -> None:
        pods = msg.get("pods")
        if not isinstance(pods, list):
            raise ProtocolError("request without pods")
        inventory = self._inventory()
        offer: list[ListenerKey] = []
        missing: list[dict[str, str]] = []
        for pod in pods:
            if not isinstance(pod, dict) or not isinstance(pod.get("uid"), str):
                raise ProtocolError(f"bad pod {pod!r}")
            owned = inventory.get(pod["uid"])
            netns = pod.get("netns")
            if owned is None:
                missing.append({"uid": pod["uid"], "reason": "unknown pod"})
            elif not isinstance(netns, list) or tuple(netns) != owned.netns:
                # Same uid, another namespace: never hand over a listener of a namespace the new one did not name.
                missing.append({"uid": pod["uid"], "reason": "network namespace differs"})
            else:
                ports = pod.get("ports") or list(owned.ports)
                offer.extend(ListenerKey(pod["uid"], p) for p in owned.ports if p in ports)
        for start in range(0, len(offer), self._batch):
            chunk = offer[start : start + self._batch]
            step.send.append((encode({"type": "listeners", "listeners": _key_list(chunk)}), chunk))
        step.send.append((encode({"type": "done", "missing": missing}), []))
        self._offered.update(offer)

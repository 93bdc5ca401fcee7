"""Moving established TCP↔TCP relays from an old proxy instance to a new one, sans-IO: messages, both state machines,
validation of the received sockets (docs/migration.md).

It is a second phase of the handoff socket (`handoff.sock`, one SOCK_SEQPACKET record = one JSON header + fds): the
new instance opens its own connection there and says which phase it wants. An old instance that does not know the
phase answers `error` and the new one simply takes nothing (the old keeps today's behaviour).

    new → old  {"type": "hello", "version": 2, "phase": "connections", "nonce"}
    old → new  {"type": "hello", "version": 2, "phase": "connections", "nonce", "proof"}
    new → old  {"type": "take", "pods": [{"uid", "netns": [st_dev, st_ino]}, …], "proof"}   I take these pods' connections
    old → new  {"type": "registered", "pods": [uid, …]}                           the ones it serves in that netns
           … nothing until the old instance drains; EOF here (the new one died) ends the registration …
    old → new  {"type": "ping"}        at drain, before anything is paused or stopped: is the taker still there?
    new → old  {"type": "pong"}        (none within the bound: nothing moves, nothing is stopped)
    old → new  {"type": "connections", "batch": n, "connections": [header, …]}   + its fds (down, up; an HBONE leg has none)
    new → old  {"type": "taken", "batch": n, "taken": [id, …], "refused": [{"id", "reason"}, …]}
    old → new  {"type": "commit", "batch": n, "ids": [id, …]}   the old released these (or "abort": it kept all)
           … more batches …
    old → new  {"type": "done"}

Both ends prove they hold the node's handoff key (`nonce`, `proof`: peerauth.py) before anything is registered.
The registration is also the new instance's link to its predecessor: it takes over the name `handoff.sock` only when
this exchange ends (`done`, or EOF: the old one exited or died), so the name always leads to the instance that holds
the listeners (docs/lifecycle.md, "Who holds the name").

Ownership is decided by the old instance alone, which makes the exchange safe against a slow or lying peer. Before
`commit` the old one still owns every connection of the batch: it holds its copies, the relay is only paused, and the
new one must not touch the sockets. If `taken` does not come within the bound the old one sends `abort` (or nothing:
the connection may be dead) and resumes those relays itself; the new one, without `commit`, only closes its duplicates,
which sends nothing on the wire while the old holds its own. The new instance waits for `commit` longer than the old
waits for `taken`, so a `commit` that was sent is always read before the new one gives up.

A header: {"id", "uid", "kind", "down": {"local", "peer"}, "up": {"local", "peer"}, "elapsed", "context"} where
addresses are [ip, port] (both legs' roles: `down` is the accepted connection, `up` the one the proxy opened; null
for the HBONE leg of an `*-hbone` kind, which does not travel: see LEGS_OF), `elapsed`
the seconds since the connection began and `context` the access-log/metrics record (JSON scalars, owned by the proxy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyztunnel.lifecycle.handoff import (
    Netns,
    ProtocolError,
    authenticate_hello,
    authenticate_proof,
    decode,
    encode,
)
from pyztunnel.lifecycle.migrate_header import LEGS_OF, ConnFacts, ConnHeader, fds_of, parse_header, validate_leg
from pyztunnel.lifecycle.peerauth import Handshake

VERSION = 2
PHASE = "connections"
MAX_CONNECTIONS_PER_MESSAGE = 100  # at most 2 fds each: 200, within the kernel's 253 per message
ANSWER_TIMEOUT = 5.0  # the old instance waits this long for `taken`, then keeps the batch (a loaded node is slow)
COMMIT_TIMEOUT = ANSWER_TIMEOUT + 3.0  # the new one waits longer for `commit`, so a sent commit is always read


def hello(auth: Handshake) -> bytes:
    return encode({"type": "hello", "version": VERSION, "phase": PHASE, **auth.hello_fields()})


def is_connections_hello(msg: Mapping[str, Any]) -> bool:
    """Does this first message ask for the connections phase (and not the listener handoff)?"""
    return msg.get("type") == "hello" and msg.get("phase") == PHASE


# The new instance (takes connections) -----------------------------------------------------------------------------


@dataclasses.dataclass
class TakerStep:
    send: list[bytes] = dataclasses.field(default_factory=list)
    registered: list[str] | None = None  # the old instance will migrate these pods' connections at its drain
    # valid: keep, do not touch (fd indices of down and up; None for a leg that does not travel)
    hold: list[tuple[ConnHeader, int | None, int | None]] = dataclasses.field(default_factory=list)
    reject: list[int] = dataclasses.field(default_factory=list)  # fd indices to close now
    commit: list[int] = dataclasses.field(default_factory=list)  # header ids now ours: resume them
    drop: list[int] = dataclasses.field(default_factory=list)  # header ids held but not committed: close our copies
    finished: bool = False


class Taker:
    """The new instance's side: registers for `pods` (uid → netns), checks every received connection, and resumes
    only what the old one commits."""

    def __init__(self, pods: Mapping[str, Netns], key: bytes) -> None:
        self.pods = dict(pods)
        self.auth = Handshake(key, "new")
        self.state = "hello"
        self._batch: int | None = None
        self._held: set[int] = set()
        self.reasons: dict[int, str] = {}  # refused header id → why (logged by the shell)

    def start(self) -> bytes:
        return hello(self.auth)

    def receive(self, data: bytes, facts: Sequence[ConnFacts]) -> TakerStep:
        step = TakerStep()
        try:
            self._receive(decode(data), facts, step)
        except ProtocolError as exc:
            self.reasons[-1] = f"protocol error: {exc}"
            step.hold = []
            step.reject = list(range(len(facts)))
            step.drop = sorted(self._held)
            self._held.clear()
            self.state = "finished"
            step.finished = True
        return step

    def _receive(self, msg: dict[str, Any], facts: Sequence[ConnFacts], step: TakerStep) -> None:
        kind = msg["type"]
        if kind == "error":
            raise ProtocolError(f"peer refused: {msg.get('reason')}")
        if kind != "connections" and facts:
            raise ProtocolError(f"fds with {kind}")
        if self.state == "hello" and kind == "hello":
            if msg.get("version") != VERSION or msg.get("phase") != PHASE:
                raise ProtocolError(f"peer speaks {msg.get('phase')} version {msg.get('version')}")
            authenticate_hello(self.auth, msg)
            self.state = "registering"
            pods = [{"uid": uid, "netns": list(netns)} for uid, netns in sorted(self.pods.items())]
            step.send.append(encode({"type": "take", "pods": pods, **self.auth.proof_field()}))
        elif self.state == "registering" and kind == "registered":
            uids = msg.get("pods")
            if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
                raise ProtocolError("registered without a list of pods")
            step.registered = [u for u in uids if u in self.pods]
            self.state = "waiting"
        elif self.state == "waiting" and kind == "ping":
            step.send.append(encode({"type": "pong"}))
        elif self.state == "waiting" and kind == "connections":
            self._connections(msg, facts, step)
        elif self.state == "holding" and kind in ("commit", "abort"):
            if msg.get("batch") != self._batch:
                raise ProtocolError(f"{kind} for batch {msg.get('batch')}, expected {self._batch}")
            ids = msg.get("ids") if kind == "commit" else []
            if not isinstance(ids, list) or not all(type(i) is int for i in ids):
                raise ProtocolError("commit without a list of ids")
            # Only what we hold can become ours; anything else named is ignored.
            step.commit = sorted(set(ids) & self._held)
            step.drop = sorted(self._held - set(step.commit))
            self._held.clear()
            self.state = "waiting"
        elif self.state == "waiting" and kind == "done":
            self.state = "finished"
            step.finished = True
        else:
            raise ProtocolError(f"unexpected {kind} in state {self.state}")

    def _connections(self, msg: dict[str, Any], facts: Sequence[ConnFacts], step: TakerStep) -> None:
        batch = msg.get("batch")
        items = msg.get("connections")
        if type(batch) is not int or not isinstance(items, list):
            raise ProtocolError("connections without batch or list")
        headers = [parse_header(item) for item in items]
        if len(facts) != sum(fds_of(h) for h in headers):
            raise ProtocolError(f"{len(headers)} connections announced, {len(facts)} fds received")
        taken: list[int] = []
        refused: list[dict[str, Any]] = []
        seen: set[int] = set()
        at = 0
        for header in headers:
            has_down, has_up = LEGS_OF[header.kind]
            down_index = at if has_down else None
            up_index = at + has_down if has_up else None
            at += fds_of(header)
            mine = [i for i in (down_index, up_index) if i is not None]
            reason = self._check(
                header,
                None if down_index is None else facts[down_index],
                None if up_index is None else facts[up_index],
                seen,
            )
            seen.add(header.id)
            if reason is None:
                step.hold.append((header, down_index, up_index))
                taken.append(header.id)
            else:
                self.reasons[header.id] = reason
                step.reject += mine
                refused.append({"id": header.id, "reason": reason})
        self._batch = batch
        self._held = set(taken)
        self.state = "holding"
        step.send.append(encode({"type": "taken", "batch": batch, "taken": taken, "refused": refused}))

    def _check(self, header: ConnHeader, down: ConnFacts | None, up: ConnFacts | None, seen: set[int]) -> str | None:
        netns = self.pods.get(header.uid)
        if netns is None:
            return f"pod {header.uid} was not asked for"
        if header.id in seen:
            return "duplicate id"
        for name, facts, ends in (("down", down, header.down), ("up", up, header.up)):
            if facts is None or ends is None:
                continue  # parse_header made sure the kind says so
            reason = validate_leg(facts, ends, netns)
            if reason is not None:
                return f"{name}: {reason}"
        return None

    def orphaned(self) -> list[int]:
        """The old instance vanished (EOF, or a broken pipe) while we held a batch it had not decided on. It never
        closes its side with a batch undecided while it lives (it sends commit or abort first), so its copies died with
        it: ours are the connections' only descriptors, and nobody but us can continue them. They are ours."""
        held = sorted(self._held) if self.state == "holding" else []
        self._held.clear()
        self.state = "finished"
        return held

    def give_up(self) -> list[int]:
        """No commit in time, or the peer broke the protocol: the held ids, whose duplicates the shell closes."""
        held = sorted(self._held)
        self._held.clear()
        self.state = "finished"
        return held


# The old instance (gives connections) -----------------------------------------------------------------------------


@dataclasses.dataclass
class GiverStep:
    send: list[bytes] = dataclasses.field(default_factory=list)
    registered: dict[str, Netns] | None = None  # the taker: uid → netns it named
    close: bool = False


@dataclasses.dataclass
class Decision:
    """The old instance's verdict on one batch: `release` are the new one's now, `keep` stay here and resume."""

    send: bytes
    release: list[int]
    keep: list[int]
    refused: dict[int, str]


class Giver:
    """The old instance's side of one connections-phase exchange. `serves` says which pods (uid → netns) it has."""

    def __init__(self, key: bytes) -> None:
        self.state = "hello"
        self.auth = Handshake(key, "old")
        self.pods: dict[str, Netns] = {}
        self._batch = 0
        self._offered: set[int] = set()

    def receive(self, data: bytes, serves: Mapping[str, Netns]) -> GiverStep:
        step = GiverStep()
        try:
            msg = decode(data)
            kind = msg["type"]
            if self.state == "hello" and kind == "hello":
                if msg.get("version") != VERSION or msg.get("phase") != PHASE:
                    raise ProtocolError(f"{msg.get('phase')} version {msg.get('version')} not supported")
                authenticate_hello(self.auth, msg)
                self.state = "take"
                step.send.append(hello(self.auth))
            elif self.state == "take" and kind == "take":
                authenticate_proof(self.auth, msg)  # before the taker is registered for anything
                self.pods = self._match(msg.get("pods"), serves)
                step.registered = dict(self.pods)
                step.send.append(encode({"type": "registered", "pods": sorted(self.pods)}))
                self.state = "registered"
            else:
                raise ProtocolError(f"unexpected {kind} in state {self.state}")
        except ProtocolError as exc:
            step.send = [encode({"type": "error", "reason": str(exc)})]
            step.registered = None
            step.close = True
        return step

    @staticmethod
    def _match(pods: Any, serves: Mapping[str, Netns]) -> dict[str, Netns]:
        if not isinstance(pods, list):
            raise ProtocolError("take without pods")
        out: dict[str, Netns] = {}
        for pod in pods:
            if not isinstance(pod, dict) or not isinstance(pod.get("uid"), str):
                raise ProtocolError(f"bad pod {pod!r}")
            netns = pod.get("netns")
            ours = serves.get(pod["uid"])
            # Same uid in another namespace: never give a connection to a pod the taker did not name.
            if ours is not None and isinstance(netns, list) and tuple(netns) == ours:
                out[pod["uid"]] = ours
        return out

    def ping(self) -> bytes:
        if self.state != "registered":
            raise ProtocolError(f"cannot ping in state {self.state}")
        return encode({"type": "ping"})

    def pong(self, data: bytes) -> None:
        """The taker's answer to `ping`; raises ProtocolError for anything else."""
        msg = decode(data)
        if msg["type"] != "pong":
            raise ProtocolError(f"expected pong, got {msg['type']}")

    def batch(self, headers: Iterable[ConnHeader]) -> bytes:
        """The `connections` message for these (their fds go with it: down, up, in order)."""
        if self.state != "registered":
            raise ProtocolError(f"cannot send connections in state {self.state}")
        items = list(headers)
        if len(items) > MAX_CONNECTIONS_PER_MESSAGE:
            raise ValueError(f"at most {MAX_CONNECTIONS_PER_MESSAGE} connections per message")
        self._batch += 1
        self._offered = {h.id for h in items}
        self.state = "offered"
        return encode({"type": "connections", "batch": self._batch, "connections": [h.to_json() for h in items]})

    def answer(self, data: bytes) -> Decision:
        """The taker's `taken`: release what it took of what we offered; everything else stays ours."""
        offered, self._offered = self._offered, set()
        self.state = "registered"
        try:
            msg = decode(data)
            if msg["type"] != "taken" or msg.get("batch") != self._batch:
                raise ProtocolError(f"expected taken for batch {self._batch}, got {msg['type']} {msg.get('batch')}")
            taken = msg.get("taken")
            if not isinstance(taken, list):
                raise ProtocolError("taken without a list")
            release = sorted({i for i in taken if type(i) is int} & offered)
            refused = {}
            for item in msg.get("refused") or []:
                if isinstance(item, dict) and item.get("id") in offered and item.get("id") not in release:
                    refused[int(item["id"])] = str(item.get("reason"))
        except ProtocolError as exc:
            return Decision(encode({"type": "abort", "batch": self._batch}), [], sorted(offered), {-1: str(exc)})
        keep = sorted(offered - set(release))
        return Decision(encode({"type": "commit", "batch": self._batch, "ids": release}), release, keep, refused)

    def timeout(self) -> Decision:
        offered, self._offered = self._offered, set()
        self.state = "registered"
        return Decision(encode({"type": "abort", "batch": self._batch}), [], sorted(offered), {})

    def done(self) -> bytes:
        self.state = "done"
        return encode({"type": "done"})

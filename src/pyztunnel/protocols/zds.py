"""ZDS, the protocol between the node agent (istio-cni, the server) and the node proxy (ztunnel, the client).

Sans-IO (reference/ztunnel.md §2): one protobuf message per SOCK_SEQPACKET datagram, no length prefix. This module
turns datagrams (bytes + the number of fds that came with them + the recvmsg flags) into typed messages and back, and
holds the two protocol state machines:

- `ServerConnection`: one agent-side connection. Await `ZdsHello`, send the snapshot one message at a time (each waits
  for its Ack), send `SnapshotSent`, then serve queued requests one at a time.
- `ClientState`: the proxy side, kept across reconnects as ztunnel's state manager is. Hello first, an Ack for every
  request (the caller sends it once it has acted), snapshot set tracking, reconcile on `SnapshotSent`.

File descriptors never enter this module: the decode functions return a decision (`Incoming.uses_fd`) and the caller
keeps the one fd an `AddWorkload` carries and closes every other fd it received, including on any error.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Iterable, Sequence

from google.protobuf.message import DecodeError

from pyztunnel.protocols import linux
from pyztunnel.protocols._pb import zds_pb2

# Both sides read into a buffer of this size (reference §2.1); a larger datagram arrives truncated, which is an error.
MAX_DATAGRAM = 1024
VERSION_V1 = 1
# Default deadlines of istio-cni (`readWriteDeadline`, `defaultZTunnelKeepAliveCheckInterval`).
HELLO_TIMEOUT = 5.0
ACK_TIMEOUT = 5.0
LIVENESS_INTERVAL = 5.0


class ZdsError(Exception):
    """A datagram that is not a valid ZDS message, or a message that breaks the protocol's rules."""


class MalformedMessage(ZdsError):
    """Bytes that do not decode as the expected message (bad protobuf, missing payload, truncated datagram)."""


class FdMisuse(ZdsError):
    """An `AddWorkload` without exactly one fd, or any other message with an fd."""


class ProtocolError(ZdsError):
    """A well-formed message at the wrong time (ztunnel's `ProtocolError`): Keep after the snapshot, a second
    SnapshotSent, an Add without workload_info, an unexpected message."""


# --------------------------------------------------------------------------------------------------------- messages


@dataclasses.dataclass(frozen=True)
class WorkloadInfo:
    name: str
    namespace: str
    service_account: str


@dataclasses.dataclass(frozen=True)
class Hello:
    version: int = VERSION_V1


@dataclasses.dataclass(frozen=True)
class AddWorkload:
    """Must travel with exactly one netns fd. `info` is None only when a peer omitted it (a protocol error)."""

    uid: str
    info: WorkloadInfo | None


@dataclasses.dataclass(frozen=True)
class KeepWorkload:
    uid: str


@dataclasses.dataclass(frozen=True)
class DelWorkload:
    uid: str


@dataclasses.dataclass(frozen=True)
class SnapshotSent:
    pass


Request = AddWorkload | KeepWorkload | DelWorkload | SnapshotSent


@dataclasses.dataclass(frozen=True)
class Ack:
    """`error` empty = ACK, non-empty = NACK with the proxy's reason."""

    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclasses.dataclass(frozen=True)
class Incoming:
    """A received request and the fd decision: `uses_fd` means the caller keeps the single fd it received (an Add);
    otherwise the caller closes every fd that came with the datagram."""

    message: Request
    uses_fd: bool


def encode_hello(hello: Hello = Hello()) -> bytes:
    return zds_pb2.ZdsHello(version=hello.version).SerializeToString()  # type: ignore[arg-type]


def encode_request(request: Request) -> bytes:
    msg = zds_pb2.WorkloadRequest()
    match request:
        case AddWorkload(uid=uid, info=info):
            msg.add.uid = uid
            if info is not None:
                msg.add.workload_info.name = info.name
                msg.add.workload_info.namespace = info.namespace
                msg.add.workload_info.service_account = info.service_account
        case KeepWorkload(uid=uid):
            msg.keep.uid = uid
        case DelWorkload(uid=uid):
            getattr(msg, "del").uid = uid  # `del` is a Python keyword
        case SnapshotSent():
            msg.snapshot_sent.SetInParent()
    return msg.SerializeToString()


def encode_ack(ack: Ack = Ack()) -> bytes:
    msg = zds_pb2.WorkloadResponse()
    msg.ack.error = ack.error
    msg.ack.SetInParent()  # an empty Ack must still be present, or the response has no payload
    return msg.SerializeToString()


def _check_flags(flags: int) -> None:
    if flags & linux.MSG_TRUNC:
        raise MalformedMessage(f"datagram truncated (MSG_TRUNC): larger than {MAX_DATAGRAM} bytes")
    if flags & linux.MSG_CTRUNC:
        raise MalformedMessage("control data truncated (MSG_CTRUNC)")


def _parse(message: zds_pb2.ZdsHello | zds_pb2.WorkloadRequest | zds_pb2.WorkloadResponse, data: bytes) -> None:
    if not data:
        raise MalformedMessage("empty datagram")
    try:
        message.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        # ValueError/RuntimeError: some protobuf backends report bad UTF-8 or deep nesting this way.
        raise MalformedMessage(f"not a {type(message).__name__}: {exc}") from None


def decode_hello(data: bytes, fd_count: int = 0, flags: int = 0) -> Hello:
    _check_flags(flags)
    if fd_count:
        raise FdMisuse("ZdsHello carried a file descriptor")
    msg = zds_pb2.ZdsHello()
    _parse(msg, data)
    if msg.version == zds_pb2.NOT_USED:
        raise MalformedMessage("ZdsHello without a version")
    return Hello(version=int(msg.version))


def decode_request(data: bytes, fd_count: int = 0, flags: int = 0) -> Incoming:
    """A `WorkloadRequest` datagram as the proxy receives it. More than one fd counts as none (the caller closes all)."""
    _check_flags(flags)
    msg = zds_pb2.WorkloadRequest()
    _parse(msg, data)
    has_fd = fd_count == 1
    which = msg.WhichOneof("payload")
    request: Request
    if which == "add":
        info = None
        if msg.add.HasField("workload_info"):
            wi = msg.add.workload_info
            info = WorkloadInfo(wi.name, wi.namespace, wi.service_account)
        request = AddWorkload(msg.add.uid, info)
        if not has_fd:
            # ztunnel's words; also when several fds came (they were all closed, so there is none).
            raise FdMisuse(f"No control message: AddWorkload {msg.add.uid!r} without exactly one netns fd")
        return Incoming(request, uses_fd=True)
    if which == "keep":
        request = KeepWorkload(msg.keep.uid)
    elif which == "del":
        request = DelWorkload(getattr(msg, "del").uid)
    elif which == "snapshot_sent":
        request = SnapshotSent()
    else:
        raise MalformedMessage("WorkloadRequest without a payload")
    if has_fd:
        raise FdMisuse(f"{type(request).__name__} carried a file descriptor")
    return Incoming(request, uses_fd=False)


def decode_ack(data: bytes, fd_count: int = 0, flags: int = 0) -> Ack:
    """A `WorkloadResponse` datagram as the agent receives it."""
    _check_flags(flags)
    if fd_count:
        raise FdMisuse("WorkloadResponse carried a file descriptor")
    msg = zds_pb2.WorkloadResponse()
    _parse(msg, data)
    if msg.WhichOneof("payload") != "ack":
        raise MalformedMessage("WorkloadResponse without an Ack")
    return Ack(msg.ack.error)


# ------------------------------------------------------------------------------------- server (agent) state machine


class ServerPhase(enum.Enum):
    AWAIT_HELLO = "await-hello"
    SNAPSHOT = "snapshot"
    READY = "ready"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class Send:
    """Send this request (and, for an Add, the netns fd of its uid), then wait for its Ack (deadline `ACK_TIMEOUT`)."""

    request: Request


@dataclasses.dataclass(frozen=True)
class Completed:
    """A request got its answer, or failed (`ack.error` says why). `token` is the caller's handle given to `enqueue`
    (None for snapshot messages)."""

    request: Request
    ack: Ack
    token: object = None


@dataclasses.dataclass(frozen=True)
class SnapshotDone:
    """The proxy ACKed SnapshotSent: it is synchronised with the agent."""


@dataclasses.dataclass(frozen=True)
class Close:
    reason: str


ServerAction = Send | Completed | SnapshotDone | Close


@dataclasses.dataclass
class _Queued:
    request: Request
    token: object  # the caller's handle for matching the `Completed` (e.g. a future); None in the snapshot


class ServerConnection:
    """One agent-side ZDS connection. Feed it what the socket delivers; do what the returned actions say.

    The snapshot is fixed when the connection is made (`snapshot`: Add or Keep per pod). Requests enqueued before the
    snapshot completes are sent after it, in order, one at a time, as istio-cni does.
    """

    def __init__(self, snapshot: Sequence[AddWorkload | KeepWorkload]) -> None:
        self.phase = ServerPhase.AWAIT_HELLO
        self.hello: Hello | None = None
        self._queue: deque[_Queued] = deque(_Queued(r, None) for r in snapshot)
        self._queue.append(_Queued(SnapshotSent(), None))
        self._snapshot_left = len(self._queue)
        self._in_flight: _Queued | None = None

    @property
    def in_flight(self) -> Request | None:
        return self._in_flight.request if self._in_flight else None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def receive_hello(self, data: bytes, fd_count: int = 0, flags: int = 0) -> list[ServerAction]:
        if self.phase is not ServerPhase.AWAIT_HELLO:
            return self._fail("unexpected ZdsHello")
        try:
            self.hello = decode_hello(data, fd_count, flags)
        except ZdsError as exc:
            return self._fail(f"bad hello: {exc}")
        self.phase = ServerPhase.SNAPSHOT
        return self._next()

    def receive(self, data: bytes, fd_count: int = 0, flags: int = 0) -> list[ServerAction]:
        """A datagram after the hello: must be the Ack of the request in flight."""
        if self.phase is ServerPhase.AWAIT_HELLO:
            return self.receive_hello(data, fd_count, flags)
        if self.phase is ServerPhase.CLOSED:
            return []
        try:
            ack = decode_ack(data, fd_count, flags)
        except ZdsError as exc:
            return self._fail(str(exc))
        if self._in_flight is None:
            return self._fail("message from the proxy while no request was in flight")
        done, self._in_flight = self._in_flight, None
        # A NACK does not end the connection: istio-cni logs it and carries on, in the snapshot too (ztunnel retries
        # a workload it failed to start by itself). The shell logs `Completed` with an error.
        actions: list[ServerAction] = [Completed(done.request, ack, done.token)]
        if self.phase is ServerPhase.SNAPSHOT:
            self._snapshot_left -= 1
            if self._snapshot_left == 0:
                self.phase = ServerPhase.READY
                actions.append(SnapshotDone())
        return actions + self._next()

    def enqueue(self, request: AddWorkload | DelWorkload, token: object = None) -> list[ServerAction]:
        if self.phase is ServerPhase.CLOSED:
            return [Completed(request, Ack("connection closed"), token)]
        self._queue.append(_Queued(request, token))
        return self._next()

    def timeout(self) -> list[ServerAction]:
        """The hello or the Ack in flight did not come within its deadline."""
        if self.phase is ServerPhase.AWAIT_HELLO:
            return self._fail(f"no ZdsHello within {HELLO_TIMEOUT:g}s")
        if self._in_flight is not None:
            return self._fail(f"no Ack for {type(self._in_flight.request).__name__} within {ACK_TIMEOUT:g}s")
        return []

    def unsolicited(self) -> list[ServerAction]:
        """The liveness check read a message although nothing was in flight: a protocol error, as in istio-cni."""
        return self._fail("unexpected message from the proxy")

    def closed(self, reason: str) -> list[ServerAction]:
        """The socket closed or failed (EOF, send error)."""
        return self._fail(reason)

    def _fail(self, reason: str) -> list[ServerAction]:
        if self.phase is ServerPhase.CLOSED:
            return []
        if self.phase is ServerPhase.SNAPSHOT:
            reason = f"{reason} (during the snapshot)"
        self.phase = ServerPhase.CLOSED
        actions: list[ServerAction] = [Close(reason)]
        pending = ([self._in_flight] if self._in_flight else []) + list(self._queue)
        self._in_flight = None
        self._queue.clear()
        for item in pending:
            if item.token is not None:
                actions.append(Completed(item.request, Ack(f"ztunnel connection lost: {reason}"), item.token))
        return actions

    def _next(self) -> list[ServerAction]:
        if self._in_flight is not None or not self._queue or self.phase is ServerPhase.AWAIT_HELLO:
            return []
        if self.phase is ServerPhase.CLOSED:
            return []
        self._in_flight = self._queue.popleft()
        return [Send(self._in_flight.request)]


# ------------------------------------------------------------------------------------- client (proxy) state machine


@dataclasses.dataclass(frozen=True)
class StartWorkload:
    """Start the pod's proxy in the netns of the fd that came with the Add; ACK when started, NACK on failure."""

    uid: str
    info: WorkloadInfo


@dataclasses.dataclass(frozen=True)
class ReplaceWorkload:
    """Same uid, different netns (sandbox re-created): drain the old proxy, start a new one."""

    uid: str
    info: WorkloadInfo


@dataclasses.dataclass(frozen=True)
class Unchanged:
    """Same uid, same netns (or a Keep): nothing to do but ACK. The caller closes the Add's fd."""

    uid: str


@dataclasses.dataclass(frozen=True)
class DrainWorkload:
    """Drain the pod's proxy now (Del after the snapshot; ztunnel drains `Immediate`)."""

    uid: str


@dataclasses.dataclass(frozen=True)
class ForgetFromSnapshot:
    """Del before the snapshot: nothing runs down now; the reconcile at SnapshotSent will drain it if it runs."""

    uid: str


@dataclasses.dataclass(frozen=True)
class Reconcile:
    """SnapshotSent: drain every workload in `drain` (running, but neither added nor kept in this snapshot), then
    ACK. The proxy is synchronised from now on (readiness may be gated on it)."""

    drain: tuple[str, ...]


ClientEvent = StartWorkload | ReplaceWorkload | Unchanged | DrainWorkload | ForgetFromSnapshot | Reconcile
NetnsId = tuple[int, int]  # (st_dev, st_ino) of the netns fd


class ClientState:
    """The proxy's view, which survives reconnects (running proxies are reconciled at the next SnapshotSent).

    Call `connect()` for every new connection and send the bytes it returns first; feed each `Incoming` to `handle`
    (with the netns identity of the Add's fd), act on the event, then send `encode_ack(...)`. `ProtocolError` is
    raised for a message at the wrong time; ztunnel NACKs then reconnects (a missing workload_info makes it exit).
    """

    def __init__(self) -> None:
        self.workloads: dict[str, NetnsId | None] = {}  # uid -> netns identity (None: kept without an fd)
        self.snapshot_received = False
        self.snapshot: set[str] = set()
        self.connected = False

    def connect(self) -> bytes:
        """A new connection: the snapshot starts again (`reset_snapshot`). Returns the ZdsHello to send first."""
        self.connected = True
        self.snapshot_received = False
        self.snapshot = set()
        return encode_hello()

    def handle(self, message: Request, netns: NetnsId | None = None) -> ClientEvent:
        if not self.connected:
            raise ProtocolError("request before the ZdsHello was sent")
        match message:
            case AddWorkload(uid=uid, info=info):
                if info is None:
                    raise ProtocolError(f"AddWorkload {uid!r} without workload_info")
                if netns is None:
                    raise FdMisuse(f"No control message: AddWorkload {uid!r} without a netns fd")
                if not self.snapshot_received:
                    self.snapshot.add(uid)
                previous = self.workloads.get(uid, ())
                self.workloads[uid] = netns
                if previous == ():
                    return StartWorkload(uid, info)
                if previous == netns:
                    return Unchanged(uid)
                return ReplaceWorkload(uid, info)
            case KeepWorkload(uid=uid):
                if self.snapshot_received:
                    raise ProtocolError(f"KeepWorkload {uid!r} after the snapshot")
                self.snapshot.add(uid)
                self.workloads.setdefault(uid, None)
                return Unchanged(uid)
            case DelWorkload(uid=uid):
                if not self.snapshot_received:
                    self.snapshot.discard(uid)
                    return ForgetFromSnapshot(uid)
                self.workloads.pop(uid, None)
                return DrainWorkload(uid)
            case SnapshotSent():
                if self.snapshot_received:
                    raise ProtocolError("second SnapshotSent on one connection")
                self.snapshot_received = True
                drain = tuple(sorted(uid for uid in self.workloads if uid not in self.snapshot))
                for uid in drain:
                    del self.workloads[uid]
                return Reconcile(drain)
        raise ProtocolError(f"unknown request {message!r}")

    def forget(self, uids: Iterable[str]) -> None:
        """The proxy gave up on these workloads (e.g. NACKed and will not retry): a later Add starts them afresh."""
        for uid in uids:
            self.workloads.pop(uid, None)

    def disconnected(self) -> None:
        self.connected = False

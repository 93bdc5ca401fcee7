"""ZDS messages and their codec: one protobuf message per SOCK_SEQPACKET datagram (reference/ztunnel.md §2)."""

from __future__ import annotations

import dataclasses

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

"""The proxy side of ZDS (ztunnel's): `ClientState`, kept across reconnects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from pyztunnel.protocols.zds.messages import (
    AddWorkload,
    DelWorkload,
    FdMisuse,
    KeepWorkload,
    ProtocolError,
    Request,
    SnapshotSent,
    WorkloadInfo,
    encode_hello,
)

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

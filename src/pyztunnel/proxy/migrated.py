"""A migrated connection's parts that both ends of a migration share (proxy/migration.py, migration_hbone.py): its
access-log record as it travels in the header's context and is rebuilt on arrival, what its policy check saw, and
how a paused leg's socket is flushed, duplicated and let go without a trace on the wire."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyztunnel import authz
from pyztunnel.aio import poll_until
from pyztunnel.lifecycle.migrate_header import ConnHeader, Ends
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.protocols import hbone
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg

_RECORD_FIELDS = [f.name for f in dataclasses.fields(ConnectionRecord) if f.name not in ("start", "direction")]


def record_context(record: ConnectionRecord, bytes_recv: int, bytes_sent: int) -> dict[str, Any]:
    """The record as JSON scalars (its start travels as `elapsed`; the bytes are the relay's counts so far)."""
    out = {name: getattr(record, name) for name in _RECORD_FIELDS}
    out["bytes_recv"], out["bytes_sent"] = bytes_recv, bytes_sent
    return out


def record_from(header: ConnHeader, now: float | None = None) -> ConnectionRecord:
    """The record of a received connection: the same fields, started `elapsed` seconds ago (the monotonic clock is
    the host's, but a duration is what travels, so nothing depends on that)."""
    record = ConnectionRecord(
        src_addr="", dst_addr="", direction="inbound" if header.kind.startswith("inbound") else "outbound"
    )
    for name in _RECORD_FIELDS:
        value = header.context.get(name)
        default = getattr(record, name)
        if value is None and default is not None:
            continue
        if default is None or isinstance(value, type(default)):
            setattr(record, name, value)
    record.start = (time.monotonic() if now is None else now) - header.elapsed
    return record


def policy_view(record: ConnectionRecord) -> authz.ConnectionInfo | None:
    """What the policy check saw of a moved inbound connection, rebuilt from its record, so that a policy change
    after the upgrade still closes it (ztunnel's PolicyWatcher). Outbound connections are not re-checked."""
    if record.direction != "inbound":
        return None
    src = hbone.parse_authority(record.src_addr)
    dst = hbone.parse_authority(record.dst_hbone_addr or record.dst_addr)
    if src is None or dst is None:
        return None
    return authz.ConnectionInfo(src_ip=src[0], dst_ip=dst[0], dst_port=dst[1], identity=record.src_identity or None)


def leg_ends(leg: TcpLeg) -> Ends | None:
    assert leg.transport is not None
    local, peer = leg.transport.get_extra_info("sockname"), leg.transport.get_extra_info("peername")
    if not isinstance(local, tuple) or not isinstance(peer, tuple):
        return None
    return Ends((str(local[0]), int(local[1])), (str(peer[0]), int(peer[1])))


async def flush_writes(legs: Sequence[TcpLeg], within: float, still: Callable[[], bool]) -> bool:
    """Reading is off; what we already read is in our write buffers until the kernel takes it. Wait (bounded) for
    them to be empty: then every byte is in a kernel queue, which moves with the socket."""
    return await poll_until(
        lambda: all(leg.transport is not None and leg.transport.get_write_buffer_size() == 0 for leg in legs),
        within,
        still,
    )


def dup_all(legs: Sequence[TcpLeg]) -> list[int] | None:
    fds: list[int] = []
    try:
        for leg in legs:
            fds.append(os.dup(fileno_of(leg)))
    except OSError:  # out of fds: it stays here
        for fd in fds:
            os.close(fd)
        return None
    return fds


def let_go(pod: PodProxy, relay: Relay, legs: Sequence[TcpLeg]) -> None:
    """Forget the relay without a trace on the wire: no shutdown(), no SO_LINGER, no `connection complete`. The
    write buffers are empty (flushed before the export): only our descriptors go; the new instance holds its own."""
    relay.detach()
    for leg in legs:
        leg.release()
    pod.untrack(relay)


def fileno_of(leg: TcpLeg) -> int:
    assert leg.transport is not None
    sock = leg.transport.get_extra_info("socket")
    return int(sock.fileno())

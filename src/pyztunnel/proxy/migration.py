"""The proxy's side of connection migration (lifecycle.migrate_io runs the exchange; docs/migration.md): which relays
can move, how one is paused, exported and released without a FIN, and how a received one resumes here with its
access-log record, so that the one `connection complete` line at its real end has the whole duration and bytes.

Only relays whose two legs are plain kernel TCP sockets move: inbound plaintext (15006 → app) and outbound
passthrough (15001 → a destination outside the mesh). An HBONE leg carries user-space TLS and HTTP/2 state that
another process cannot continue; those connections drain and are reset at the deadline, as in ztunnel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyztunnel.lifecycle import migrate_io
from pyztunnel.lifecycle.handoff import Netns
from pyztunnel.lifecycle.migrate import ConnHeader, Ends
from pyztunnel.lifecycle.migrate_io import Exported, GiveService, Intake
from pyztunnel.netns import netns_inode
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.proxy.netsock import PodNetns
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg

_log = logging.getLogger("pyztunnel.proxy.migration")

KIND_OF = {"inbound": "inbound-plaintext", "outbound": "outbound-passthrough"}
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
        src_addr="", dst_addr="", direction="inbound" if header.kind == "inbound-plaintext" else "outbound"
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


def _ends(leg: TcpLeg) -> Ends | None:
    assert leg.transport is not None
    local, peer = leg.transport.get_extra_info("sockname"), leg.transport.get_extra_info("peername")
    if not isinstance(local, tuple) or not isinstance(peer, tuple):
        return None
    return Ends((str(local[0]), int(local[1])), (str(peer[0]), int(peer[1])))


def movable(relay: Relay) -> bool:
    """Both legs plain TCP, both directions still open, nothing finished: the kernel sockets are the whole state."""
    if relay.finished or relay.error is not None or not isinstance(relay.info, ConnectionRecord):
        return False
    for leg in (relay.down, relay.up):
        if not isinstance(leg, TcpLeg) or leg.transport is None or leg.transport.is_closing():
            return False
        if leg.done or leg.eof_in or leg.eof_out or leg._early:
            return False
    return True


class RelayExport:
    """One relay of one pod, as `migrate_io.Exportable`."""

    def __init__(self, pod: PodProxy, relay: Relay) -> None:
        self.pod = pod
        self.relay = relay
        self._paused = False

    def _legs(self) -> tuple[TcpLeg, TcpLeg]:
        down, up = self.relay.down, self.relay.up
        assert isinstance(down, TcpLeg) and isinstance(up, TcpLeg)
        return down, up

    async def prepare(self, within: float) -> Exported | None:
        if not movable(self.relay):
            return None
        down, up = self._legs()
        down.pause_reading()
        up.pause_reading()
        self._paused = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # Reading is off; what we already read is in our write buffers until the kernel takes it. Wait for both to
        # be empty (then every byte is in a kernel queue, which moves with the socket).
        while True:
            if not movable(self.relay):
                self.resume()
                return None
            assert down.transport is not None and up.transport is not None
            if down.transport.get_write_buffer_size() == 0 and up.transport.get_write_buffer_size() == 0:
                break
            if loop.time() >= deadline:
                self.resume()
                return None
            await asyncio.sleep(0.002)  # a bounded poll of a condition, not a synchronisation
        down_ends, up_ends = _ends(down), _ends(up)
        if down_ends is None or up_ends is None:
            self.resume()
            return None
        record: ConnectionRecord = self.relay.info
        fds: list[int] = []
        try:
            for leg in (down, up):
                fds.append(os.dup(_fileno(leg)))
        except OSError:  # out of fds: it stays here
            for fd in fds:
                os.close(fd)
            self.resume()
            return None
        return Exported(
            uid=self.pod.key,
            kind=KIND_OF[record.direction],
            down=down_ends,
            up=up_ends,
            elapsed=max(0.0, time.monotonic() - record.start),
            context=record_context(record, down.received, up.received),
            down_fd=fds[0],
            up_fd=fds[1],
        )

    def release(self) -> None:
        """Forget the relay without a trace on the wire: no shutdown(), no SO_LINGER, no `connection complete`."""
        for leg in self._legs():
            leg.done = True  # connection_lost (from closing our transport) must not finish or log the relay
            leg.relay = None
            leg.peer = None
            if leg.transport is not None:
                leg.transport.close()  # the buffer is empty: only our fd goes; the new instance holds its own
        self.relay.finished = True
        if not self.relay.closed.done():
            self.relay.closed.set_result(None)
        self.pod.untrack(self.relay)

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            for leg in self._legs():
                leg.resume_reading()


def _fileno(leg: TcpLeg) -> int:
    assert leg.transport is not None
    sock = leg.transport.get_extra_info("socket")
    return int(sock.fileno())


class Migration:
    """Both sides for one proxy: `GiveService` (old: its relays go at drain) and the intake (new: takes them)."""

    def __init__(self, pods: Callable[[], Sequence[PodProxy]], path: Path, **give: Any) -> None:
        self._pods = pods
        self.path = path
        self.give = GiveService(self, **give)
        self.intake: Intake | None = None
        self.attempted = False  # registration started (the app sets it before spawning it)
        self.settled = False  # registration over, whatever its outcome: the app may report ready
        self._own_netns = netns_inode("/proc/self/ns/net")

    # --- both sides
    def migration_pods(self) -> Mapping[str, Netns]:
        out: dict[str, Netns] = {}
        for pod in self._pods():
            if pod.stopped:
                continue
            out[pod.key] = netns_inode(pod.env.fd) if isinstance(pod.env, PodNetns) else self._own_netns
        return out

    # --- old instance
    def migration_candidates(self, uids: set[str]) -> list[RelayExport]:
        return [
            RelayExport(pod, relay)
            for pod in self._pods()
            if pod.key in uids
            for relay in list(pod.relays)
            if movable(relay)
        ]

    async def drain(self) -> None:
        await self.give.migrate()

    # --- new instance
    async def register(self) -> None:
        """Ask the previous instance (if any) for its established connections, once, before we report ready."""
        try:
            self.intake = await migrate_io.take(self.path, self)
        finally:
            self.settled = True

    async def adopt(self, header: ConnHeader, down_sock: socket.socket, up_sock: socket.socket) -> bool:
        from pyztunnel.proxy import inbound, outbound

        pod = next((p for p in self._pods() if p.key == header.uid and not p.stopped), None)
        if pod is None:
            return False
        record = record_from(header)
        loop = asyncio.get_running_loop()
        down, up = TcpLeg(start_paused=True), TcpLeg(start_paused=True)
        for sock in (down_sock, up_sock):
            sock.setblocking(False)
        await loop.connect_accepted_socket(lambda: down, down_sock)
        try:
            await loop.connect_accepted_socket(lambda: up, up_sock)
        except BaseException:
            assert down.transport is not None
            down.done = True
            down.transport.close()
            raise
        # Add, do not assign: a transport may have delivered its first bytes (kept for the relay) already.
        down.received += record.bytes_recv
        up.received += record.bytes_sent
        done = inbound.relay_done if record.direction == "inbound" else outbound.relay_done
        relay = Relay(down, up, lambda r, e: done(pod, r, e), record)
        pod.track(relay)
        pod.shared.telemetry.opened(record)
        relay.start()
        return True

    async def close(self) -> None:
        await self.give.close()
        if self.intake is not None:
            await self.intake.close()

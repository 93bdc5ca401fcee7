"""The proxy's side of connection migration (lifecycle.migrate_io and migrate_take run the exchange;
docs/migration.md): which relays can move, how one is paused, exported and released without a FIN, and how a received
one resumes here with its access-log record, so that the one `connection complete` line at its real end has the
whole duration and bytes.

Relays whose two legs are plain kernel TCP sockets move whole: inbound plaintext (15006 → app) and outbound
passthrough (15001 → a destination outside the mesh). An HBONE leg carries user-space TLS and HTTP/2 state that
another process cannot continue: when the peer is a pyztunnel that agreed to resume the stream, the stream is stopped
at a known byte count (proxy/resumable.py), only the app's socket moves, and a new CONNECT continues it. Other HBONE
streams (a ztunnel peer, `PYZTUNNEL_HBONE_RESUME=false`) drain and are reset at the deadline, as in ztunnel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyztunnel import authz
from pyztunnel.aio import poll_until
from pyztunnel.lifecycle import faults, migrate_take
from pyztunnel.lifecycle.handoff import Netns
from pyztunnel.lifecycle.migrate_header import ConnHeader, Ends
from pyztunnel.lifecycle.migrate_io import Exported, GiveService
from pyztunnel.lifecycle.migrate_take import Intake
from pyztunnel.netns import netns_inode
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.protocols import hbone
from pyztunnel.proxy.netsock import PodNetns
from pyztunnel.proxy.outbound import continue_as_client
from pyztunnel.proxy.parking import Parked
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg
from pyztunnel.proxy.resumable import ResumeState
from pyztunnel.proxy.stream import StreamLeg

_log = logging.getLogger("pyztunnel.proxy.migration")

KIND_OF = {"inbound": "inbound-plaintext", "outbound": "outbound-passthrough"}
HBONE_KIND_OF = {"inbound": "inbound-hbone", "outbound": "outbound-hbone"}
HBONE_QUIESCE_TIMEOUT = 3.0  # a stop needs the peer's answer: a round trip and its flush, on a loaded node
TOKEN_KEY = "hbone.resume_token"  # in a migrated header's context: the stream to continue
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
    return all(isinstance(leg, TcpLeg) and leg.open and leg.steady for leg in (relay.down, relay.up))


def resumable_stream(relay: Relay) -> ResumeState | None:
    """The relay's resumable HBONE stream, if it is one (app socket + a stream both ends agreed to resume) that is
    still open both ways and not being stopped already."""
    if relay.finished or relay.error is not None or not isinstance(relay.info, ConnectionRecord):
        return None
    stream = relay.up if isinstance(relay.up, StreamLeg) else relay.down
    state = stream.control if isinstance(stream, StreamLeg) else None
    if not isinstance(state, ResumeState) or state.announced or state.broken:
        return None
    app, stream = state.app, state.stream
    if not (app.open and app.steady and stream.steady and stream.conn.open):
        return None
    return state


async def _flush_writes(legs: Sequence[TcpLeg], within: float, still: Callable[[], bool]) -> bool:
    """Reading is off; what we already read is in our write buffers until the kernel takes it. Wait (bounded) for
    them to be empty: then every byte is in a kernel queue, which moves with the socket."""
    return await poll_until(
        lambda: all(leg.transport is not None and leg.transport.get_write_buffer_size() == 0 for leg in legs),
        within,
        still,
    )


def _dup_all(legs: Sequence[TcpLeg]) -> list[int] | None:
    fds: list[int] = []
    try:
        for leg in legs:
            fds.append(os.dup(_fileno(leg)))
    except OSError:  # out of fds: it stays here
        for fd in fds:
            os.close(fd)
        return None
    return fds


def _let_go(pod: PodProxy, relay: Relay, legs: Sequence[TcpLeg]) -> None:
    """Forget the relay without a trace on the wire: no shutdown(), no SO_LINGER, no `connection complete`. The
    write buffers are empty (flushed before the export): only our descriptors go; the new instance holds its own."""
    relay.detach()
    for leg in legs:
        leg.release()
    pod.untrack(relay)


class RelayExport:
    """One TCP↔TCP relay of one pod, as `migrate_io.Exportable`."""

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
        if not await _flush_writes((down, up), within, lambda: movable(self.relay)):
            self.resume()
            return None
        down_ends, up_ends = _ends(down), _ends(up)
        fds = _dup_all((down, up)) if down_ends is not None and up_ends is not None else None
        if fds is None:
            self.resume()
            return None
        record: ConnectionRecord = self.relay.info
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
        _let_go(self.pod, self.relay, self._legs())

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            for leg in self._legs():
                leg.resume_reading()


class StreamExport:
    """One app socket ↔ resumable HBONE stream relay, as `migrate_io.Exportable`: the stream is stopped with its
    peer, the app socket moves, and the new instance continues the stream under its token."""

    def __init__(self, pod: PodProxy, state: ResumeState) -> None:
        self.pod = pod
        self.state = state
        self.relay = state.relay

    async def prepare(self, within: float) -> Exported | None:
        state, app = self.state, self.state.app
        if resumable_stream(self.relay) is not state:
            return None
        within = max(within, HBONE_QUIESCE_TIMEOUT)
        if not await state.stop(within):
            if state.announced:
                self._spoil("hbone stream could not be stopped for the upgrade")
            return None
        ends = _ends(app) if await _flush_writes((app,), within, lambda: not app.done) else None
        fds = _dup_all((app,)) if ends is not None else None
        if fds is None:
            self._spoil("app socket could not be flushed for the upgrade")
            return None
        record: ConnectionRecord = self.relay.info
        outbound = state.client_side
        stream_received = state.stream.received
        context = record_context(
            record,
            app.received if outbound else stream_received,
            stream_received if outbound else app.received,
        )
        context[TOKEN_KEY] = state.token
        return Exported(
            uid=self.pod.key,
            kind=HBONE_KIND_OF[record.direction],
            down=ends if outbound else None,
            up=None if outbound else ends,
            elapsed=max(0.0, time.monotonic() - record.start),
            context=context,
            down_fd=fds[0] if outbound else None,
            up_fd=None if outbound else fds[0],
        )

    def release(self) -> None:
        _let_go(self.pod, self.relay, (self.state.app,))

    def resume(self) -> None:
        # Stopped with the peer, which now waits for a resume from the new instance that did not take it: nothing
        # here can continue it (our listener is the new instance's). It ends as the drain would have ended it.
        self._spoil("the new instance did not take the stopped hbone stream")

    def _spoil(self, why: str) -> None:
        if not self.relay.finished:
            self.relay.reset(ConnectionResetError(why))


def _fileno(leg: TcpLeg) -> int:
    assert leg.transport is not None
    sock = leg.transport.get_extra_info("socket")
    return int(sock.fileno())


class Migration:
    """Both sides for one proxy: `GiveService` (old: its relays go at drain) and the intake (new: takes them).

    The registration is also how a new instance follows its predecessor (it takes over the handoff socket's name
    when the intake is done), so it runs even with connection migration off (`enabled=False`): then no pod is named
    either way and nothing moves."""

    def __init__(
        self, pods: Callable[[], Sequence[PodProxy]], path: Path, key: bytes, enabled: bool = True, **give: Any
    ) -> None:
        self._pods = pods
        self.path = path
        self.key = key
        self.enabled = enabled
        self.give = GiveService(self, key, **give)
        self.intake: Intake | None = None
        self.attempted = False  # registration started (the app sets it before spawning it)
        self.settled = False  # registration over, whatever its outcome: the app may report ready
        self._own_netns = netns_inode("/proc/self/ns/net")
        self._listed: weakref.WeakSet[Relay] = weakref.WeakSet()  # offered once: what stays is not offered again

    # --- both sides
    def migration_pods(self) -> Mapping[str, Netns]:
        out: dict[str, Netns] = {}
        if not self.enabled:
            return out
        for pod in self._pods():
            if pod.stopped:
                continue
            out[pod.key] = netns_inode(pod.env.fd) if isinstance(pod.env, PodNetns) else self._own_netns
        return out

    # --- old instance
    def migration_candidates(self, uids: set[str]) -> list[RelayExport | StreamExport]:
        out: list[RelayExport | StreamExport] = []
        for pod in self._pods():
            if pod.key not in uids:
                continue
            for relay in list(pod.relays):
                if relay in self._listed:
                    continue
                self._listed.add(relay)
                if movable(relay):
                    out.append(RelayExport(pod, relay))
                elif (state := resumable_stream(relay)) is not None:
                    out.append(StreamExport(pod, state))
        return out

    def migration_relist(self) -> None:
        self._listed = weakref.WeakSet()

    async def drain(self) -> None:
        await self.give.migrate()

    # --- new instance
    async def register(self) -> None:
        """Ask the previous instance (if any) for its established connections, once, before we report ready."""
        try:
            self.intake = await migrate_take.take(self.path, self, key=self.key)
        finally:
            self.settled = True

    async def adopt(self, header: ConnHeader, down_sock: socket.socket | None, up_sock: socket.socket | None) -> bool:
        pod = next((p for p in self._pods() if p.key == header.uid and not p.stopped), None)
        if pod is None:
            return False
        record = record_from(header)
        if header.kind in HBONE_KIND_OF.values():
            return await _adopt_stream(pod, header, record, down_sock or up_sock)
        assert down_sock is not None and up_sock is not None  # migrate_header.LEGS_OF
        loop = asyncio.get_running_loop()
        down, up = TcpLeg(start_paused=True), TcpLeg(start_paused=True)
        for sock in (down_sock, up_sock):
            sock.setblocking(False)
        await loop.connect_accepted_socket(lambda: down, down_sock)
        try:
            await loop.connect_accepted_socket(lambda: up, up_sock)
        except BaseException:
            down.release()
            raise
        # Add, do not assign: a transport may have delivered its first bytes (kept for the relay) already.
        down.received += record.bytes_recv
        up.received += record.bytes_sent
        relay = Relay(down, up, pod.relay_done, record)
        pod.track(relay, policy_view(record))
        pod.shared.telemetry.opened(record)
        relay.start()
        return True

    async def close(self) -> None:
        await self.give.close()
        if self.intake is not None:
            await self.intake.close()


async def _adopt_stream(
    pod: PodProxy, header: ConnHeader, record: ConnectionRecord, sock: socket.socket | None
) -> bool:
    """An app socket whose HBONE stream was stopped by the previous instance: continue the stream from here (as its
    client), or wait for the peer to continue it (as its server)."""
    token = header.context.get(TOKEN_KEY)
    if sock is None or not isinstance(token, str):
        return False
    faults.reached("new-stream-resume")
    outbound = record.direction == "outbound"
    app = TcpLeg(start_paused=True)
    sock.setblocking(False)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: app, sock)
    app.received += record.bytes_recv if outbound else record.bytes_sent
    stream_received = record.bytes_sent if outbound else record.bytes_recv
    parked = Parked(pod.key, app, record, token, stream_received, client_side=outbound, authorized=policy_view(record))
    pod.shared.telemetry.opened(record)
    if outbound:
        continue_as_client(pod, parked)
    else:
        pod.shared.resumes.park(parked)
    return True

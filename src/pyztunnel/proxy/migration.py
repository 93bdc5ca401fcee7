"""The proxy's side of connection migration (lifecycle.migrate_io and migrate_take run the exchange;
docs/migration.md): which relays can move, how one is paused, exported and released without a FIN, and how a received
one resumes here with its access-log record, so that the one `connection complete` line at its real end has the
whole duration and bytes.

Relays whose two legs are plain kernel TCP sockets move whole: inbound plaintext (15006 → app) and outbound
passthrough (15001 → a destination outside the mesh). An HBONE leg carries user-space TLS and HTTP/2 state that
another process cannot continue: when the peer is a pyztunnel that agreed to resume the stream, the stream is stopped
and only the app's socket moves (proxy/migration_hbone.py). Other HBONE streams (a ztunnel peer,
`PYZTUNNEL_HBONE_RESUME=false`) drain and are reset at the deadline, as in ztunnel.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyztunnel.lifecycle import handoff_name, migrate_take
from pyztunnel.lifecycle.handoff import Netns
from pyztunnel.lifecycle.migrate_header import ConnHeader
from pyztunnel.lifecycle.migrate_io import Exported, GiveService
from pyztunnel.lifecycle.migrate_take import Intake
from pyztunnel.netns import netns_inode
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.proxy.migrated import dup_all, flush_writes, leg_ends, let_go, policy_view, record_context, record_from
from pyztunnel.proxy.migration_hbone import HBONE_KIND_OF, ParkedExport, StreamExport, adopt_stream, resumable_stream
from pyztunnel.proxy.netsock import PodNetns
from pyztunnel.proxy.parking import Parked
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg

KIND_OF = {"inbound": "inbound-plaintext", "outbound": "outbound-passthrough"}


def movable(relay: Relay) -> bool:
    """Both legs plain TCP, both directions still open, nothing finished: the kernel sockets are the whole state."""
    if relay.finished or relay.error is not None or not isinstance(relay.info, ConnectionRecord):
        return False
    return all(isinstance(leg, TcpLeg) and leg.open and leg.steady for leg in (relay.down, relay.up))


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
        if not await flush_writes((down, up), within, lambda: movable(self.relay)):
            self.resume()
            return None
        down_ends, up_ends = leg_ends(down), leg_ends(up)
        fds = dup_all((down, up)) if down_ends is not None and up_ends is not None else None
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
        let_go(self.pod, self.relay, self._legs())

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            for leg in self._legs():
                leg.resume_reading()


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
        self.name_seen = 0  # the handoff socket's inode when we registered (0: none)
        self._own_netns = netns_inode("/proc/self/ns/net")
        # Offered once: what stays is not offered again.
        self._listed: weakref.WeakSet[Relay | Parked] = weakref.WeakSet()

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
    def migration_candidates(self, uids: set[str]) -> list[RelayExport | StreamExport | ParkedExport]:
        out: list[RelayExport | StreamExport | ParkedExport] = []
        for pod in self._pods():
            if pod.key not in uids:
                continue
            for parked in pod.shared.resumes.waiting(pod.key):
                if parked not in self._listed:
                    self._listed.add(parked)
                    out.append(ParkedExport(pod, parked))
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
        """Ask the previous instance (if any) for its established connections, before we report ready (and again if
        another instance took the handoff socket's name before we could: handoff_name.claim)."""
        self.name_seen = handoff_name.name_inode(self.path)  # where the name led when we looked
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
            return await adopt_stream(pod, header, record, down_sock or up_sock)
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

"""The asyncio shell of connection migration, the new instance's side (protocol in migrate.py; the old instance's side:
migrate_io.py).

`take(path, sink)` registers with the old instance and, in the background (`Intake`), validates every received
connection (`probe_conn` + `migrate_header.validate_leg`) and resumes the committed ones through `sink.adopt`; `Intake.done`
is set when the old instance is finished with us (it sent `done`, or went away): the new instance then takes over the
name. A batch the old instance left undecided when it died is ours (`Taker.orphaned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pyztunnel import unixfd
from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.lifecycle import faults, migrate, migrate_header
from pyztunnel.lifecycle.handoff import Netns, ProtocolError
from pyztunnel.lifecycle.handoff_io import (
    PeerGone,
    PeerRefused,
    connect,
    node_key,
    recv_msg,
    send_msg,
    socket_kind,
    socket_netns,
    wrap_fd,
)
from pyztunnel.lifecycle.migrate_header import ConnFacts, ConnHeader
from pyztunnel.lifecycle.migrate_io import REGISTER_TIMEOUT
from pyztunnel.netns import netns_inode

_log = logging.getLogger("pyztunnel.lifecycle.migrate")


# Probing a received connection --------------------------------------------------------------------------------------


def _norm(addr: object) -> migrate_header.Addr | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return None


def own_netns_tcp_inodes() -> set[int]:
    """Inodes of every TCP socket of this process's network namespace (/proc/self/net/tcp{,6}: no privilege needed)."""
    inodes: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/self/net/{name}") as table:
                next(table, None)  # header
                for row in table:
                    fields = row.split()
                    if len(fields) > 9:
                        inodes.add(int(fields[9]))
        except OSError:
            continue
    return inodes


def _netns_of(sock: socket.socket, own_inodes: Callable[[], set[int]]) -> Netns:
    """SIOCGSKNS (needs CAP_NET_ADMIN). Without it, a socket listed in our own namespace's TCP table is in our own
    namespace (direct mode, unprivileged tests); anything else stays unknown."""
    try:
        return socket_netns(sock)
    except PermissionError:
        if os.fstat(sock.fileno()).st_ino in own_inodes():
            return netns_inode("/proc/self/ns/net")
        raise


def probe_conn(
    fd: int, own_inodes: Callable[[], set[int]] = own_netns_tcp_inodes
) -> tuple[socket.socket | None, ConnFacts]:
    """Wrap a received fd (the socket object then owns it) and find out what it really is."""
    sock, not_socket = wrap_fd(fd)
    if sock is None:
        return None, ConnFacts(error=not_socket)
    try:
        family, kind, accepting = socket_kind(sock)
        if family not in (socket.AF_INET, socket.AF_INET6) or kind != socket.SOCK_STREAM or accepting:
            return sock, ConnFacts(family=family, type=kind, accepting=accepting)
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        local = _norm(sock.getsockname())
        try:
            peer = _norm(sock.getpeername())
        except OSError:
            peer = None
    except OSError as exc:
        return sock, ConnFacts(error=f"cannot inspect socket: {exc.strerror}")
    try:
        netns: Netns | None = _netns_of(sock, own_inodes)
        error = None
    except OSError as exc:
        netns, error = None, f"cannot read its network namespace (SIOCGSKNS: {exc.strerror})"
    return sock, ConnFacts(family, kind, accepting, state, local, peer, netns, error)


# The new instance -----------------------------------------------------------------------------------------------------


class ConnectionSink(Protocol):
    def migration_pods(self) -> Mapping[str, Netns]:
        """uid → netns of every pod this instance serves (it takes their connections)."""

    async def adopt(self, header: ConnHeader, down: socket.socket | None, up: socket.socket | None) -> bool:
        """Resume this relay here; False if it cannot (the sockets are then closed by the caller)."""


class Intake:
    """The new instance's registration: `task` receives and resumes connections until the old instance is done."""

    def __init__(self, conn: socket.socket, taker: migrate.Taker, sink: ConnectionSink, commit_timeout: float) -> None:
        self.conn = conn
        self.taker = taker
        self.sink = sink
        self.commit_timeout = commit_timeout
        self.adopted = 0
        self.refused = 0
        self.done = asyncio.Event()
        self.task = spawn(self._run(), "migrate-intake")

    async def _run(self) -> None:
        held: dict[int, _Held] = {}
        adopting: list[asyncio.Task[None]] = []
        try:
            while self.taker.state != "finished":
                holding = self.taker.state == "holding"
                try:
                    if holding:
                        async with asyncio.timeout(self.commit_timeout):
                            data, fds = await recv_msg(self.conn, max_fds=2 * migrate.MAX_CONNECTIONS_PER_MESSAGE)
                    else:
                        data, fds = await recv_msg(self.conn, max_fds=2 * migrate.MAX_CONNECTIONS_PER_MESSAGE)
                except TimeoutError:
                    _log.warning("old instance did not commit in time; leaving the connections to it")
                    break
                refused_before = len(self.taker.reasons)
                own = functools.cache(own_netns_tcp_inodes)  # read once per message, and only if needed
                probed = [probe_conn(fd, own) for fd in fds]
                step = self.taker.receive(data, [facts for _, facts in probed])
                for header, down_index, up_index in step.hold:
                    # validate_leg rejects what probe could not wrap
                    down = None if down_index is None else probed[down_index][0]
                    up = None if up_index is None else probed[up_index][0]
                    held[header.id] = (header, down, up)
                for index in step.reject:
                    sock = probed[index][0]
                    if sock is not None:
                        sock.close()  # our duplicate only: the old instance keeps serving it
                    else:
                        os.close(fds[index])
                if step.reject:
                    self.refused += len(self.taker.reasons) - refused_before
                    _log.warning("refused migrated connections", extra={"fields": {"reasons": self._reasons()}})
                if step.hold or step.reject:
                    faults.reached("new-migration-batch")
                for out in step.send:
                    await send_msg(self.conn, out)
                for ident in step.drop:
                    _close_pair(held.pop(ident, None))
                if step.commit:
                    # Resumed in the background, all at once: the next batch's answer must not wait for this one's
                    # sockets to be wrapped, one event-loop turn each, on a node busy relaying.
                    batch = [held.pop(ident) for ident in step.commit]
                    adopting.append(spawn(self._adopt_all(batch), "migrate-adopt"))
        except PeerGone as exc:
            if orphans := self.taker.orphaned():
                _log.warning(
                    "the previous instance went away during the migration; taking the batch it held",
                    extra={"fields": {"connections": len(orphans)}},
                )
                batch = [held.pop(ident) for ident in orphans]
                for _, down, up in batch:
                    _no_linger(down, up)
                adopting.append(spawn(self._adopt_all(batch), "migrate-adopt"))
            _log.info("connection migration ended", extra={"fields": {"reason": str(exc)}})
        except OSError as exc:
            _log.info("connection migration ended", extra={"fields": {"reason": str(exc)}})
        finally:
            for ident in self.taker.give_up():
                _close_pair(held.pop(ident, None))
            for pair in held.values():
                _close_pair(pair)
            self.conn.close()
            if adopting:
                await asyncio.gather(*adopting, return_exceptions=True)
            if self.adopted or self.refused:
                _log.info(
                    "took over established connections",
                    extra={"fields": {"connections": self.adopted, "refused": self.refused}},
                )
            self.done.set()

    async def _adopt_all(self, batch: Sequence[_Held]) -> None:
        results = await asyncio.gather(*(self._adopt(*item) for item in batch))
        self.adopted += sum(results)

    async def _adopt(self, header: ConnHeader, down: socket.socket | None, up: socket.socket | None) -> bool:
        try:
            if await self.sink.adopt(header, down, up):
                return True
        except Exception:
            _log.exception("cannot resume a migrated connection")
        # Committed but unusable here: closing our (now only) copies ends it, as a crash of the old one would.
        _close_pair((header, down, up))
        return False

    def _reasons(self) -> str:
        return "; ".join(sorted(set(self.taker.reasons.values())))[:500]

    async def close(self) -> None:
        await cancel_and_wait(self.task)


_Held = tuple[ConnHeader, socket.socket | None, socket.socket | None]


def _no_linger(*socks: socket.socket | None) -> None:
    """A connection the old instance reset while we held it (its drain deadline, a forced exit) still lives on our
    copy, with its SO_LINGER {1, 0}: clear it, so that it ends with a FIN, not a RST, when it ends here."""
    for sock in socks:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))


def _close_pair(pair: _Held | None) -> None:
    if pair is not None:
        for sock in pair[1:]:
            if sock is not None:
                sock.close()


async def take(
    path: Path,
    sink: ConnectionSink,
    within: float = REGISTER_TIMEOUT,
    commit_timeout: float = migrate.COMMIT_TIMEOUT,
    key: bytes | None = None,
) -> Intake | None:
    """Register with the instance serving `path` for the established connections of our pods. None when there is no
    such instance or it does not migrate connections (it then keeps today's behaviour)."""
    taker = migrate.Taker(sink.migration_pods(), node_key(path, key))
    conn: socket.socket | None = None
    try:
        async with asyncio.timeout(within):
            conn = await connect(path)
            await send_msg(conn, taker.start())
            while taker.state not in ("waiting", "finished"):
                data, fds = await recv_msg(conn, max_fds=1)
                unixfd.close_fds(fds)
                step = taker.receive(data, [])
                for out in step.send:
                    await send_msg(conn, out)
                if step.registered:
                    _log.info(
                        "registered to take established connections",
                        extra={"fields": {"pods": len(step.registered)}},
                    )
                elif step.registered is not None:
                    _log.info("registered with the previous instance as its successor (taking no connections)")
                if step.registered is not None:
                    faults.reached("new-registered")
    except (FileNotFoundError, ConnectionRefusedError):
        if conn is not None:
            conn.close()
        return None
    except (TimeoutError, OSError, PeerGone, PeerRefused, ProtocolError) as exc:
        _log.info("previous instance does not migrate connections", extra={"fields": {"reason": str(exc) or "timeout"}})
        if conn is not None:
            conn.close()
        return None
    if taker.state != "waiting":
        _log.info(
            "previous instance does not migrate connections", extra={"fields": {"reason": taker.reasons.get(-1, "")}}
        )
        conn.close()
        return None
    return Intake(conn, taker, sink, commit_timeout)

"""The asyncio shell of connection migration (protocol and reasoning in migrate.py, design in docs/migration.md).

Old instance: `GiveService.handle(conn, first)` serves a connections-phase exchange arriving on the handoff socket
(`handoff_io.HandoffService(connections=…)` routes it here, after the peer's uid check); at drain,
`GiveService.migrate()` pauses, exports and passes every eligible relay of the registered pods to the taker, in
batches of ≤ 100 (two fds each), and releases only what the taker committed to. New instance: `take(path, sink)`
registers with the old instance and, in the background, validates every received connection (`probe_conn` +
`migrate.validate_leg`) and resumes the committed ones through `sink.adopt`; `Intake.done` is set when the old
instance is finished with us (it sent `done`, or went away): the new instance then takes over the name.

A registered taker is watched until the drain: its EOF (it died) ends its registration at once, so `migrate()` never
picks a dead one; and before anything is paused or stopped, a ping must come back. Otherwise an HBONE stream would be
stopped with its peer for a taker that cannot take it, and reset (docs/migration.md, "When the new instance dies").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from pyztunnel.lifecycle import faults, migrate
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
from pyztunnel.lifecycle.migrate import ConnFacts, ConnHeader, Ends
from pyztunnel.netns import netns_inode

_log = logging.getLogger("pyztunnel.lifecycle.migrate")

REGISTER_TIMEOUT = 2.0
QUIESCE_TIMEOUT = 1.0  # how long one relay may take to flush its write buffers before it is left alone
MAX_PASSES = 3


# Probing a received connection --------------------------------------------------------------------------------------


def _norm(addr: object) -> migrate.Addr | None:
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


# The old instance -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Exported:
    """A paused relay ready to go: its header (without id) and duplicates of both legs' fds (the giver closes them)."""

    uid: str
    kind: str
    down: Ends | None  # None (and no fd): an HBONE leg, which stays (migrate.LEGS_OF)
    up: Ends | None
    elapsed: float
    context: dict[str, object]
    down_fd: int | None
    up_fd: int | None


def _prepared(task: asyncio.Task[Exported | None]) -> Exported | None:
    """A finished prepare's export; one that failed (a bug: prepare must not raise) exports nothing."""
    if task.cancelled():
        return None
    if (exc := task.exception()) is not None:
        _log.error("preparing a connection for migration failed", extra={"fields": {"error": repr(exc)}})
        return None
    return task.result()


def _close_exported(exported: Exported) -> None:
    unixfd.close_fds([fd for fd in (exported.down_fd, exported.up_fd) if fd is not None])


class Exportable(Protocol):
    async def prepare(self, within: float) -> Exported | None:
        """Pause both legs and wait until nothing of ours is buffered; None (and resumed) if it cannot be moved."""

    def release(self) -> None:
        """The new instance owns it: forget it without a FIN or RST (drop our fds, never shutdown or linger)."""

    def resume(self) -> None:
        """It stays ours: read again."""


class ConnectionSource(Protocol):
    def migration_pods(self) -> Mapping[str, Netns]:
        """uid → netns of every pod this instance serves."""

    def migration_candidates(self, uids: set[str]) -> Sequence[Exportable]:
        """The relays of these pods that could move and were not listed by an earlier call."""

    def migration_relist(self) -> None:
        """A new taker: list again, from the next call on, what earlier calls listed and still runs here."""


@dataclasses.dataclass
class _Registration:
    conn: socket.socket
    giver: migrate.Giver
    finished: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    watch: asyncio.Task[None] | None = None  # until migrate() claims the connection: its EOF ends the registration
    gone: bool = False


class GiveService:
    """The old instance's side: takers register through `handle`; `migrate()` moves connections to the newest one."""

    def __init__(
        self,
        source: ConnectionSource,
        key: bytes,
        answer_timeout: float = migrate.ANSWER_TIMEOUT,
        quiesce_timeout: float = QUIESCE_TIMEOUT,
    ) -> None:
        self.source = source
        self._key = key
        self.answer_timeout = answer_timeout
        self.quiesce_timeout = quiesce_timeout
        self._takers: list[_Registration] = []
        self._next_id = 0
        self.migrated = 0
        self.kept = 0
        self.registered = asyncio.Event()
        self._draining = False
        self._rounds: set[asyncio.Task[int]] = set()
        self._lock = asyncio.Lock()  # one migration round at a time: each claims the exchange of its taker

    async def handle(self, conn: socket.socket, first: bytes) -> None:
        """One connections-phase exchange (its first message already read). Returns when migration is over with this
        taker, or the taker failed to register."""
        giver = migrate.Giver(self._key)
        data = first
        try:
            for _ in range(2):  # hello, then take
                step = giver.receive(data, self.source.migration_pods())
                for out in step.send:
                    await send_msg(conn, out)
                if step.close:
                    return
                if step.registered is not None:
                    break
                async with asyncio.timeout(REGISTER_TIMEOUT):
                    data, fds = await recv_msg(conn, max_fds=1)
                unixfd.close_fds(fds)
            else:
                return
        except (TimeoutError, OSError, PeerGone, ProtocolError) as exc:
            _log.info("connection migration registration failed", extra={"fields": {"reason": str(exc) or "timeout"}})
            return
        registration = _Registration(conn, giver)
        self._takers.append(registration)
        self.registered.set()
        if giver.pods:
            _log.info("a new instance will take established connections", extra={"fields": {"pods": len(giver.pods)}})
        else:
            _log.info("a new instance registered as our successor (it takes no connections)")
        registration.watch = spawn(self._watch(registration), "migrate-watch-taker")
        if self._draining:
            # We drain already (the taker that was there died, and this is its restart): give it what we still hold.
            _log.info("a new instance registered during our drain; it takes what we still hold")
            round_task = spawn(self.migrate(), "migrate-again")
            self._rounds.add(round_task)
            round_task.add_done_callback(self._rounds.discard)
        try:
            await registration.finished.wait()
        finally:
            with contextlib.suppress(ValueError):
                self._takers.remove(registration)
            await cancel_and_wait(registration.watch)

    async def _watch(self, registration: _Registration) -> None:
        """Nothing comes from a registered taker until we ping it: EOF (it died) or anything else ends it."""
        try:
            _, fds = await recv_msg(registration.conn, max_fds=1)
            unixfd.close_fds(fds)
            reason = "it sent a message out of turn"
        except (OSError, PeerGone, ProtocolError) as exc:
            reason = str(exc) or type(exc).__name__
        registration.gone = True
        with contextlib.suppress(ValueError):
            self._takers.remove(registration)
        _log.warning(
            "the new instance that registered to take connections went away", extra={"fields": {"reason": reason}}
        )
        registration.finished.set()

    async def _claim(self) -> _Registration | None:
        """The newest taker that is still there, its watch stopped: the connection is migrate()'s from here."""
        while self._takers:
            registration = self._takers[-1]
            if registration.watch is not None:
                await cancel_and_wait(registration.watch)  # a cancelled receive has received nothing
            if not registration.gone:
                return registration
        return None

    async def _alive(self, registration: _Registration) -> bool:
        """A ping round trip before anything is paused or stopped (a stopped HBONE stream cannot be taken back)."""
        try:
            await send_msg(registration.conn, registration.giver.ping())
            async with asyncio.timeout(self.answer_timeout):
                data, fds = await recv_msg(registration.conn, max_fds=1)
            unixfd.close_fds(fds)
            registration.giver.pong(data)
        except (TimeoutError, OSError, PeerGone, ProtocolError) as exc:
            _log.warning(
                "the new instance does not answer; every connection stays here",
                extra={"fields": {"error": str(exc) or "no answer"}},
            )
            return False
        return True

    async def migrate(self) -> int:
        """Move every eligible connection to the newest live taker; returns how many moved. Never raises for a bad
        peer: what it did not take stays here and is served (and reset at the deadline) as before, or goes to a taker
        that registers later in our drain (another round)."""
        self._draining = True
        async with self._lock:
            return await self._round()

    async def _round(self) -> int:
        registration = await self._claim()
        if registration is None:
            _log.info("no new instance to take established connections; they stay here")
            return 0
        moved = 0
        try:
            if await self._alive(registration):
                self.source.migration_relist()  # a new taker: what an earlier round kept is offered again
                # Connections set up while a pass ran (an accept or a CONNECT already under way when the drain
                # began) are listed by the next one; the source lists a connection once.
                for _ in range(MAX_PASSES):
                    candidates = list(self.source.migration_candidates(set(registration.giver.pods)))
                    if not candidates:
                        break
                    moved += await self._pass(registration, candidates)
                await send_msg(registration.conn, registration.giver.done())
        except (OSError, PeerGone, ProtocolError) as exc:
            _log.warning(
                "connection migration stopped; the remaining connections stay here",
                extra={"fields": {"error": str(exc)}},
            )
        finally:
            registration.finished.set()
        self.migrated += moved
        _log.info("migrated established connections", extra={"fields": {"connections": moved, "kept": self.kept}})
        return moved

    async def _pass(self, registration: _Registration, candidates: Sequence[Exportable]) -> int:
        """Prepare every candidate at once (an HBONE stream's stop is a round trip with its peer: they overlap) and
        send each batch as soon as some are ready, so that a slow one holds up no other."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        tasks = {spawn(c.prepare(self.quiesce_timeout), "migrate-prepare"): c for c in candidates}
        pending: set[asyncio.Task[Exported | None]] = set(tasks)
        moved = offered = 0
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # In the order they were listed (a set has none): batches and ids stay predictable.
                ready = [(c, e) for t, c in tasks.items() if t in done and (e := _prepared(t)) is not None]
                for start in range(0, len(ready), migrate.MAX_CONNECTIONS_PER_MESSAGE):
                    chunk = ready[start : start + migrate.MAX_CONNECTIONS_PER_MESSAGE]
                    offered += len(chunk)
                    try:
                        moved += await self._batch(registration, chunk)
                    except BaseException:
                        for candidate, exported in ready[start + migrate.MAX_CONNECTIONS_PER_MESSAGE :]:
                            _close_exported(exported)
                            candidate.resume()  # prepared, never offered: ours again
                        raise
        finally:
            if pending:  # the exchange broke: what is still being prepared stays here
                await asyncio.gather(*pending, return_exceptions=True)
                for task in pending:
                    if (leftover := _prepared(task)) is not None:
                        _close_exported(leftover)
                        tasks[task].resume()
        _log.info(
            "migration pass",
            extra={
                "fields": {
                    "candidates": len(candidates),
                    "offered": offered,
                    "moved": moved,
                    "seconds": round(loop.time() - began, 3),
                }
            },
        )
        return moved

    async def _batch(self, registration: _Registration, chunk: Sequence[tuple[Exportable, Exported]]) -> int:
        ready: dict[int, tuple[Exportable, Exported]] = {}
        for candidate, exported in chunk:
            self._next_id += 1
            ready[self._next_id] = (candidate, exported)
        if not ready:
            return 0
        headers = [
            ConnHeader(i, e.uid, e.kind, e.down, e.up, e.elapsed, dict(e.context)) for i, (_, e) in ready.items()
        ]
        fds = [fd for _, e in ready.values() for fd in (e.down_fd, e.up_fd) if fd is not None]
        try:
            await send_msg(registration.conn, registration.giver.batch(headers), fds)
        except BaseException:
            for candidate, _ in ready.values():
                candidate.resume()
            raise
        finally:
            # In flight, the kernel holds its own references; our duplicates go now (the relays keep theirs).
            unixfd.close_fds(fds)
        faults.reached("old-migration-batch")
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(self.answer_timeout):
                data, extra = await recv_msg(registration.conn, max_fds=1)
            unixfd.close_fds(extra)
            decision = registration.giver.answer(data)
        except TimeoutError:
            decision = registration.giver.timeout()
            failure = TimeoutError(f"new instance did not answer within {self.answer_timeout:g}s")
        except (OSError, PeerGone, ProtocolError) as exc:
            decision = registration.giver.timeout()
            failure = exc
        if failure is None and -1 in decision.refused:
            failure = ProtocolError(decision.refused[-1])
        # What the taker took is its own from here: release it (without a FIN; the taker holds its copies) before the
        # commit goes out, so nothing here (a drain deadline while we wait to send) can touch it afterwards.
        for ident in decision.release:
            ready[ident][0].release()
        for ident in decision.keep:
            ready[ident][0].resume()
        with contextlib.suppress(OSError, PeerGone):
            await send_msg(registration.conn, decision.send)
        if decision.release:
            faults.reached("old-committed")
        for ident, reason in decision.refused.items():
            if ident < 0:
                continue
            _log.warning("new instance refused a connection", extra={"fields": {"id": ident, "reason": reason}})
        self.kept += len(decision.keep)
        if failure is not None:
            raise failure  # a peer that broke the exchange gets no further batch: the rest stays here
        return len(decision.release)

    async def close(self) -> None:
        await cancel_and_wait(*self._rounds)
        for registration in self._takers:
            registration.finished.set()


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

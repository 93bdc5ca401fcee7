"""The asyncio shell of connection migration, the old instance's side (protocol and reasoning in migrate.py, design in
docs/migration.md; the new instance's side: migrate_take.py).

`GiveService.handle(conn, first)` serves a connections-phase exchange arriving on the handoff socket
(`handoff_io.HandoffService(connections=…)` routes it here, after the peer's uid check); at drain,
`GiveService.migrate()` pauses, exports and passes every eligible relay of the registered pods to the taker, in
batches of ≤ 100 (two fds each), and releases only what the taker committed to.

A registered taker is watched until the drain: its EOF (it died) ends its registration at once, so `migrate()` never
picks a dead one; and before anything is paused or stopped, a ping must come back. Otherwise an HBONE stream would be
stopped with its peer for a taker that cannot take it, and reset (docs/migration.md, "When the new instance dies").
A taker that registers during our drain (the restart of a dead one) gets another round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol

from pyztunnel import unixfd
from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.lifecycle import faults, migrate
from pyztunnel.lifecycle.handoff import Netns, ProtocolError
from pyztunnel.lifecycle.handoff_io import (
    PeerGone,
    recv_msg,
    send_msg,
)
from pyztunnel.lifecycle.migrate_header import ConnHeader, Ends
from pyztunnel.lifecycle.migrate_pauses import PauseClock

_log = logging.getLogger("pyztunnel.lifecycle.migrate")

REGISTER_TIMEOUT = 2.0
QUIESCE_TIMEOUT = 1.0  # how long one relay may take to flush its write buffers before it is left alone
MAX_PASSES = 3
# Relays paused at once: one batch on its way while the next is being prepared. The node's other relays keep running
# here until their turn, so a hand-over stalls a window of connections at a time, not the whole node (issue 14).
PREPARE_WINDOW = 2 * migrate.MAX_CONNECTIONS_PER_MESSAGE


# The old instance -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Exported:
    """A paused relay ready to go: its header (without id) and duplicates of both legs' fds (the giver closes them)."""

    uid: str
    kind: str
    down: Ends | None  # None (and no fd): an HBONE leg, which stays (migrate_header.LEGS_OF)
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
        prepare_window: int = PREPARE_WINDOW,
    ) -> None:
        self.source = source
        self._key = key
        self.answer_timeout = answer_timeout
        self.quiesce_timeout = quiesce_timeout
        self.prepare_window = prepare_window
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
        """Prepare a window of candidates at once (an HBONE stream's stop is a round trip with its peer: they
        overlap), send each batch as soon as some are ready, and start the next candidates as batches go, so that a
        slow one holds up no other and the relays not yet in the window keep running here meanwhile."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        waiting = iter(candidates)
        tasks: dict[asyncio.Task[Exported | None], Exportable] = {}
        pending: set[asyncio.Task[Exported | None]] = set()
        pauses = PauseClock()

        def refill(in_hand: int) -> None:
            """Start prepares until the window (being prepared + prepared, not yet offered) is full."""
            while len(pending) + in_hand < self.prepare_window and (candidate := next(waiting, None)) is not None:
                pauses.start(candidate, loop.time())
                task = spawn(candidate.prepare(self.quiesce_timeout), "migrate-prepare")
                tasks[task] = candidate
                pending.add(task)

        refill(0)
        moved = offered = 0
        try:
            while pending:
                done, still = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.intersection_update(still)
                # In the order they were listed (a set has none): batches and ids stay predictable.
                ready = [(c, e) for t, c in tasks.items() if t in done and (e := _prepared(t)) is not None]
                for task in done:
                    if task.cancelled() or task.exception() is not None or task.result() is None:
                        pauses.stop(tasks[task], loop.time())  # not movable: it read again at once
                    del tasks[task]
                for start in range(0, len(ready), migrate.MAX_CONNECTIONS_PER_MESSAGE):
                    chunk = ready[start : start + migrate.MAX_CONNECTIONS_PER_MESSAGE]
                    offered += len(chunk)
                    try:
                        moved += await self._batch(registration, chunk, pauses)
                    except BaseException:
                        for candidate, exported in ready[start + migrate.MAX_CONNECTIONS_PER_MESSAGE :]:
                            _close_exported(exported)
                            candidate.resume()  # prepared, never offered: ours again
                            pauses.stop(candidate, loop.time())
                        raise
                    refill(len(ready) - start - len(chunk))
                refill(0)
        finally:
            if pending:  # the exchange broke: what is still being prepared stays here (the rest was never paused)
                await asyncio.gather(*pending, return_exceptions=True)
                for task in pending:
                    if (leftover := _prepared(task)) is not None:
                        _close_exported(leftover)
                        tasks[task].resume()
                    pauses.stop(tasks[task], loop.time())
        _log.info(
            "migration pass",
            extra={
                "fields": {
                    "candidates": len(candidates),
                    "offered": offered,
                    "moved": moved,
                    "seconds": round(loop.time() - began, 3),
                    **pauses.summary(),
                }
            },
        )
        return moved

    async def _batch(
        self, registration: _Registration, chunk: Sequence[tuple[Exportable, Exported]], pauses: PauseClock
    ) -> int:
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
            now = asyncio.get_running_loop().time()
            for candidate, _ in ready.values():
                candidate.resume()
                pauses.stop(candidate, now)
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
        now = asyncio.get_running_loop().time()
        for ident in decision.release:
            ready[ident][0].release()
            pauses.stop(ready[ident][0], now)
        for ident in decision.keep:
            ready[ident][0].resume()
            pauses.stop(ready[ident][0], now)
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

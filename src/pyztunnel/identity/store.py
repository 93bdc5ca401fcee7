"""The certificate manager the proxy uses: one certificate per workload identity, fetched, rotated, retried.

    store = CertificateStore(CaClient(settings).fetch)     # any `async (Identity) -> WorkloadCert`
    store.start()
    store.prefetch(identity)                 # Warmup: a workload of this node appeared
    cert = await store.get(identity)         # RealTime: the data path needs it now (raises CertificateUnavailable)
    cert = store.current(identity)           # a valid certificate or None, without waiting (handshake callbacks)
    store.retain(identities)                 # forget every other identity (workloads went away)
    store.dump()                             # `certificates` of /config_dump
    await store.close()

Decisions (when to fetch, rotate, back off) live in `schedule.Schedule`; this is the asyncio shell around it. `get`
follows ztunnel's `fetch_certificate`: it waits while the first fetch is pending, returns a still-valid certificate
(also while its refresh fails), and raises at once while the identity is Unavailable (retries continue in the
background). `wait_available` waits through failures instead (readiness). `clock` and `rand` are injectable: with a
fake clock, advance it and call `poke()`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.identity.schedule import MAX_IN_FLIGHT, Backoff, Priority, Schedule
from pyztunnel.identity.spiffe import Identity

log = logging.getLogger(__name__)

Fetch = Callable[[Identity], Awaitable[WorkloadCert]]


class CertificateUnavailable(Exception):
    """No valid certificate for an identity: the last fetch failed (the message says why), or it was forgotten."""


class CertificateStore:
    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        max_in_flight: int = MAX_IN_FLIGHT,
        backoff: Backoff = Backoff(),  # noqa: B008 - frozen
        on_update: Callable[[Identity], None] | None = None,
    ) -> None:
        """`on_update(identity)` is called after every fetch outcome (success or failure) of a tracked identity."""
        self._fetch = fetch
        self._on_update = on_update
        self._clock = clock
        self._schedule = Schedule(max_in_flight=max_in_flight, backoff=backoff, rand=rand)
        self._tasks: dict[Identity, asyncio.Task[None]] = {}
        self._waiters: dict[Identity, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        self.fetches_started = 0

    # ------------------------------------------------------------------ API

    def start(self) -> None:
        if self._driver is None:
            self._driver = spawn(self._drive(), name="identity.store")

    def prefetch(self, identity: Identity) -> None:
        """Fetch `identity` soon (Warmup priority) and keep it rotated until forgotten."""
        self._schedule.want(identity, Priority.WARMUP, self._clock())
        self._wake.set()

    async def get(self, identity: Identity) -> WorkloadCert:
        """The identity's certificate (RealTime priority). Raises CertificateUnavailable (see the module doc)."""
        while True:
            entry = self._schedule.want(identity, Priority.REAL_TIME, self._clock())
            self._wake.set()
            now = self._clock()
            cert = entry.valid_cert(now)
            if cert is not None:
                return cert
            if entry.error is not None and not entry.in_flight:
                raise CertificateUnavailable(f"{identity}: {entry.error}")
            await self._next_outcome(identity)
            if identity not in self._schedule.entries:
                raise CertificateUnavailable(f"{identity}: forgotten")
            entry = self._schedule.entries[identity]
            cert = entry.valid_cert(self._clock())
            if cert is not None:
                return cert
            if entry.error is not None:
                raise CertificateUnavailable(f"{identity}: {entry.error}")

    async def wait_available(self, identity: Identity) -> WorkloadCert:
        """Wait until the identity has a valid certificate, through failures and retries (use with a timeout)."""
        while True:
            entry = self._schedule.want(identity, Priority.WARMUP, self._clock())
            self._wake.set()
            cert = entry.valid_cert(self._clock())
            if cert is not None:
                return cert
            await self._next_outcome(identity)

    def current(self, identity: Identity) -> WorkloadCert | None:
        """A valid certificate now, or None. Never waits, never requests a fetch."""
        entry = self._schedule.entries.get(identity)
        return None if entry is None else entry.valid_cert(self._clock())

    def state(self, identity: Identity) -> str | None:
        entry = self._schedule.entries.get(identity)
        return None if entry is None else entry.state(self._clock())

    def identities(self) -> list[Identity]:
        return sorted(self._schedule.entries)

    def forget(self, identity: Identity) -> None:
        """Stop tracking `identity`: its running fetch is cancelled and its waiters fail."""
        self._schedule.forget(identity)
        task = self._tasks.pop(identity, None)
        if task is not None:
            task.cancel()
        self._notify(identity)

    def retain(self, identities: Iterable[Identity]) -> None:
        """Forget every identity not in `identities` (ztunnel forgets certificates of workloads that left)."""
        keep = set(identities)
        for identity in list(self._schedule.entries):
            if identity not in keep:
                self.forget(identity)

    def dump(self) -> list[dict[str, object]]:
        """`certificates` of /config_dump: identity, state, certChain and rootCerts (reference §6.2)."""
        now = self._clock()
        out: list[dict[str, object]] = []
        for identity in sorted(self._schedule.entries):
            entry = self._schedule.entries[identity]
            item: dict[str, object] = {"identity": str(identity), "state": entry.state(now)}
            cert = entry.valid_cert(now)
            item.update(cert.dump() if cert is not None else {"certChain": [], "rootCerts": []})
            out.append(item)
        return out

    def poke(self) -> None:
        """Re-evaluate what is due now (after the injected clock moved)."""
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        tasks = list(self._tasks.values())
        if self._driver is not None:
            tasks.append(self._driver)
        await cancel_and_wait(*tasks)
        self._tasks.clear()
        for identity in list(self._waiters):
            self._notify(identity)

    # ------------------------------------------------------------------ shell

    async def _next_outcome(self, identity: Identity) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(identity, []).append(future)
        try:
            await future
        finally:
            waiters = self._waiters.get(identity)
            if waiters and future in waiters:
                waiters.remove(future)
        if self._closed:
            raise CertificateUnavailable(f"{identity}: certificate store closed")

    def _notify(self, identity: Identity) -> None:
        for future in self._waiters.pop(identity, []):
            if not future.done():
                future.set_result(None)

    async def _drive(self) -> None:
        while not self._closed:
            self._wake.clear()
            for identity in self._schedule.start_due(self._clock()):
                self.fetches_started += 1
                self._tasks[identity] = spawn(self._run_fetch(identity), name=f"identity.fetch {identity}")
            due = self._schedule.next_due()
            timeout = None if due is None else max(0.0, due - self._clock())
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation that races with the event
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _run_fetch(self, identity: Identity) -> None:
        try:
            cert = await self._fetch(identity)
            if cert.identity != identity:
                raise ValueError(f"fetched a certificate for {cert.identity}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._closed:
                return  # e.g. a gRPC call failing because the store is shutting down
            reason = str(exc) or type(exc).__name__
            delay = self._schedule.failed(identity, reason, self._clock())
            if delay is not None:
                log.warning(
                    "failed to fetch certificate",
                    extra={"fields": {"identity": str(identity), "error": reason, "retry_in": f"{delay:.2f}s"}},
                )
        else:
            self._schedule.succeeded(identity, cert, self._clock())
            log.info(
                "fetched certificate",
                extra={"fields": {"identity": str(identity), "expiration": cert.not_after.isoformat()}},
            )
        finally:
            if self._tasks.get(identity) is asyncio.current_task():
                del self._tasks[identity]
        self._notify(identity)
        self._wake.set()
        if self._on_update is not None and identity in self._schedule.entries:
            self._on_update(identity)

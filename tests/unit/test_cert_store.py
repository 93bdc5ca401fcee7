"""Certificate rotation, backoff, expiry and priorities, with a fake clock: the schedule and the store around it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.certs import WorkloadCert
from pyztunnel.identity.schedule import Backoff, Priority, Schedule
from pyztunnel.identity.spiffe import Identity
from pyztunnel.identity.store import CertificateStore, CertificateUnavailable

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = Identity("cluster.local", "ns", "a")
B = Identity("cluster.local", "ns", "b")
BOUND = 5.0


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster.local", now=T0 - timedelta(days=1))


def cert_at(ca: CertificateAuthority, identity: Identity, start: float, hours: float = 24) -> WorkloadCert:
    return ca.issue(identity, timedelta(hours=hours), now=datetime.fromtimestamp(start, UTC))


# ------------------------------------------------------------------------------------ schedule (pure)

START = T0.timestamp()


def test_backoff_delays() -> None:
    b = Backoff()
    assert [b.delay(n, 0.5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert b.delay(1, 0.0) == pytest.approx(0.4)
    assert b.delay(1, 0.999999) == pytest.approx(0.6, abs=1e-5)
    assert b.delay(20, 0.5) == 150.0
    assert b.delay(20, 0.999) == 150.0  # jitter never exceeds the maximum


def test_first_fetch_then_rotation_at_half_life(ca: CertificateAuthority) -> None:
    s = Schedule(rand=lambda: 0.5)
    s.want(A, Priority.WARMUP, START)
    assert s.start_due(START) == [A]
    assert s.start_due(START) == []  # already in flight
    cert = cert_at(ca, A, START)
    s.succeeded(A, cert, START + 1)
    assert s.entries[A].state(START + 1) == "Available"
    assert s.next_due() == START + 12 * 3600
    assert s.start_due(START + 12 * 3600 - 1) == []
    assert s.start_due(START + 12 * 3600) == [A]
    assert s.entries[A].priority == Priority.BACKGROUND


def test_failure_backs_off_and_keeps_valid_old_cert(ca: CertificateAuthority) -> None:
    s = Schedule(rand=lambda: 0.5)
    s.want(A, Priority.REAL_TIME, START)
    s.start_due(START)
    s.succeeded(A, cert_at(ca, A, START, hours=2), START)
    now = START + 3600
    delays = []
    for _ in range(4):
        assert s.start_due(now) == [A]
        delay = s.failed(A, "CA down", now)
        assert delay is not None
        delays.append(delay)
        assert s.entries[A].state(now) == "Available"  # the old certificate is still valid
        assert s.start_due(now + delay - 0.001) == []
        now += delay
    assert delays == [0.5, 1.0, 2.0, 4.0]
    # Past expiry, the next failure leaves nothing to serve.
    after_expiry = START + 2 * 3600 + 1
    assert s.entries[A].state(after_expiry) == "Unavailable: CA down"
    s.start_due(after_expiry)
    s.failed(A, "still down", after_expiry)
    assert s.entries[A].cert is None
    assert s.entries[A].state(after_expiry) == "Unavailable: still down"
    # A success resets the backoff.
    s.start_due(after_expiry + 10)
    s.succeeded(A, cert_at(ca, A, after_expiry), after_expiry + 10)
    assert s.entries[A].failures == 0
    assert s.entries[A].state(after_expiry + 10) == "Available"


def test_expired_without_failure_is_unavailable(ca: CertificateAuthority) -> None:
    s = Schedule(rand=lambda: 0.5)
    s.want(A, Priority.WARMUP, START)
    s.start_due(START)
    s.succeeded(A, cert_at(ca, A, START, hours=1), START)
    assert s.entries[A].state(START + 3601) == "Unavailable: certificate expired"


def test_at_most_eight_in_flight_in_priority_order() -> None:
    s = Schedule(rand=lambda: 0.5)
    ids = [Identity("cluster.local", "ns", f"sa{i}") for i in range(12)]
    for i, identity in enumerate(ids):
        s.want(identity, Priority.BACKGROUND if i < 4 else Priority.WARMUP, START + i * 0.001)
    s.want(ids[11], Priority.REAL_TIME, START + 1)  # moved up while pending
    started = s.start_due(START + 1)
    assert len(started) == 8
    assert started[0] == ids[11]
    assert set(started[1:]) == set(ids[4:11])
    assert s.start_due(START + 1) == []
    s.failed(ids[11], "x", START + 1)
    assert s.start_due(START + 1) == [ids[0]]  # room for one more, the oldest background


def test_forgotten_identity_ignores_late_result(ca: CertificateAuthority) -> None:
    s = Schedule(rand=lambda: 0.5)
    s.want(A, Priority.WARMUP, START)
    s.start_due(START)
    s.forget(A)
    s.succeeded(A, cert_at(ca, A, START), START)
    assert s.failed(A, "x", START) is None
    assert A not in s.entries


# ------------------------------------------------------------------------------------ store (asyncio shell)


class FakeCa:
    """A fetch function the test drives: each call waits for the test's answer."""

    def __init__(self, ca: CertificateAuthority, clock: list[float]) -> None:
        self.ca, self.clock = ca, clock
        self.calls: list[Identity] = []
        self.called = asyncio.Event()
        self.failing: set[Identity] = set()
        self.hold = False
        self.release = asyncio.Event()
        self.running = 0
        self.max_running = 0

    async def fetch(self, identity: Identity) -> WorkloadCert:
        self.calls.append(identity)
        self.called.set()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.hold:
                await self.release.wait()
            if identity in self.failing:
                raise ConnectionError("CA unreachable")
            return cert_at(self.ca, identity, self.clock[0], hours=24)
        finally:
            self.running -= 1

    async def wait_calls(self, n: int) -> None:
        async def reached() -> None:
            while len(self.calls) < n:
                self.called.clear()
                await self.called.wait()

        await asyncio.wait_for(reached(), BOUND)


@pytest.fixture
async def fake(ca: CertificateAuthority) -> AsyncIterator[tuple[CertificateStore, FakeCa, list[float]]]:
    clock = [START]
    fake_ca = FakeCa(ca, clock)
    store = CertificateStore(fake_ca.fetch, clock=lambda: clock[0], rand=lambda: 0.5)
    store.start()
    try:
        yield store, fake_ca, clock
    finally:
        await store.close()


async def test_get_fetches_once_and_caches(fake: tuple[CertificateStore, FakeCa, list[float]]) -> None:
    store, ca, _clock = fake
    first = await asyncio.wait_for(store.get(A), BOUND)
    assert first.identity == A
    assert await asyncio.wait_for(store.get(A), BOUND) is first
    assert ca.calls == [A]
    assert store.state(A) == "Available"


async def test_rotation_at_half_life(ca: CertificateAuthority) -> None:
    clock = [START]
    fake_ca = FakeCa(ca, clock)
    updated = asyncio.Event()
    store = CertificateStore(
        fake_ca.fetch, clock=lambda: clock[0], rand=lambda: 0.5, on_update=lambda _i: updated.set()
    )
    store.start()
    try:
        first = await asyncio.wait_for(store.get(A), BOUND)
        updated.clear()
        clock[0] = first.refresh_at.timestamp() - 1
        store.poke()
        clock[0] += 1
        store.poke()
        await asyncio.wait_for(updated.wait(), BOUND)
        second = store.current(A)
        assert second is not None
        assert second.serial != first.serial
        assert fake_ca.calls == [A, A]
    finally:
        await store.close()


async def test_failure_raises_then_retries_after_backoff(
    fake: tuple[CertificateStore, FakeCa, list[float]],
) -> None:
    store, ca, clock = fake
    ca.failing.add(A)
    with pytest.raises(CertificateUnavailable, match="CA unreachable"):
        await asyncio.wait_for(store.get(A), BOUND)
    assert store.state(A) == "Unavailable: CA unreachable"
    with pytest.raises(CertificateUnavailable):  # fails fast while Unavailable, no new fetch
        await asyncio.wait_for(store.get(A), BOUND)
    assert len(ca.calls) == 1
    ca.failing.clear()
    clock[0] += 0.5  # the first backoff delay (jitter neutral)
    store.poke()
    await ca.wait_calls(2)
    assert (await asyncio.wait_for(store.wait_available(A), BOUND)).identity == A


async def test_old_cert_served_while_refresh_fails_until_expiry(
    fake: tuple[CertificateStore, FakeCa, list[float]],
) -> None:
    store, ca, clock = fake
    first = await asyncio.wait_for(store.get(A), BOUND)
    ca.failing.add(A)
    clock[0] = first.refresh_at.timestamp()
    store.poke()
    await ca.wait_calls(2)
    assert await asyncio.wait_for(store.get(A), BOUND) is first
    clock[0] = first.not_after.timestamp()
    assert store.current(A) is None
    with pytest.raises(CertificateUnavailable):
        await asyncio.wait_for(store.get(A), BOUND)


async def test_retain_forgets_and_wakes_waiters(fake: tuple[CertificateStore, FakeCa, list[float]]) -> None:
    store, ca, _clock = fake
    ca.hold = True
    waiter = asyncio.ensure_future(store.get(B))
    await ca.wait_calls(1)
    store.retain([A])
    with pytest.raises(CertificateUnavailable, match="forgotten"):
        await asyncio.wait_for(waiter, BOUND)
    assert store.identities() == []


async def test_at_most_eight_fetches_at_once(fake: tuple[CertificateStore, FakeCa, list[float]]) -> None:
    store, ca, _clock = fake
    ca.hold = True
    ids = [Identity("cluster.local", "ns", f"sa{i}") for i in range(20)]
    for identity in ids:
        store.prefetch(identity)
    await ca.wait_calls(8)
    assert ca.running == 8
    ca.release.set()
    for identity in ids:
        await asyncio.wait_for(store.wait_available(identity), BOUND)
    assert ca.max_running == 8
    assert sorted(ca.calls) == sorted(ids)


async def test_dump_format(fake: tuple[CertificateStore, FakeCa, list[float]]) -> None:
    store, ca, _clock = fake
    ca.failing.add(B)
    cert = await asyncio.wait_for(store.get(A), BOUND)
    with pytest.raises(CertificateUnavailable):
        await asyncio.wait_for(store.get(B), BOUND)
    dump = store.dump()
    assert [d["identity"] for d in dump] == [str(A), str(B)]
    assert dump[1] == {"identity": str(B), "state": "Unavailable: CA unreachable", "certChain": [], "rootCerts": []}
    assert dump[0]["state"] == "Available"
    chain = dump[0]["certChain"]
    assert isinstance(chain, list)
    assert chain[0]["serialNumber"] == str(cert.serial)
    assert chain[0]["validFrom"] == "2026-01-01T00:00:00Z"
    assert chain[0]["expirationTime"] == "2026-01-02T00:00:00Z"
    assert base64.b64decode(chain[0]["pem"]).decode() == cert.chain[0]
    assert len(dump[0]["rootCerts"]) == 1  # type: ignore[arg-type]

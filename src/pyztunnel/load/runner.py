"""The asyncio shell of `pyztunnel load`: connections, pacing, timeouts, warmup, and one worker's results.

Each of the worker's connections is a `Caller` (fortio's "thread"): it makes one call at a time on its socket and
reconnects when the socket is gone. The hot path is callbacks only (no coroutine per call): `data_received` feeds the
sans-IO exchange, a finished call is recorded and the next request is written at once (or when pacing says so).
Request timeouts use one lazily re-armed timer per connection instead of a timer per request.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, cast

from pyztunnel import __version__
from pyztunnel.aio import TaskGroup
from pyztunnel.load.exchange import EchoExchange, Exchange, ExchangeError, HttpExchange, Outcome
from pyztunnel.load.histogram import Histogram
from pyztunnel.load.http1 import build_request, parse_url
from pyztunnel.load.options import LoadOptions, tcp_address
from pyztunnel.load.stats import SOCKET_ERROR, RunStats, code_is_ok, error_kind
from pyztunnel.load.stream import StreamCaller

_now = time.monotonic

USER_AGENT = f"pyztunnel-load/{__version__} (fortio-compatible)"


class _Proto(asyncio.Protocol):
    """One socket. Forwards everything to its Caller, which ignores sockets it has already given up."""

    __slots__ = ("caller", "transport")

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.caller.on_data(self, data)

    def eof_received(self) -> bool | None:
        return False  # close; connection_lost(None) follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.caller.on_lost(self, exc)


class Worker:
    """The connections one process owns, and what they measured."""

    def __init__(self, options: LoadOptions, connection_ids: list[int], calls_per_connection: dict[int, int]) -> None:
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.stats = RunStats(options.resolution)
        self.stopping = False
        self.tasks = TaskGroup("load")  # the callers' connects
        self.timing = False  # False during warmup
        self.end_time = float("inf")
        self.host, self.port = ("", 0)
        self.request = b""
        if options.tcp:
            self.host, self.port = tcp_address(options)
        else:
            target = parse_url(options.url)
            self.host, self.port = target.host, target.port
            self.request = build_request(
                target, list(options.headers), keep_alive=options.keepalive, user_agent=USER_AGENT
            )
        self.callers: list[Caller | StreamCaller] = [
            StreamCaller(self, cid) if options.stream else Caller(self, cid, calls_per_connection.get(cid, 0))
            for cid in connection_ids
        ]
        self._active = 0
        self._all_done: asyncio.Future[None] | None = None
        self.address: tuple[Any, ...] = (self.host, self.port)

    async def resolve(self) -> None:
        try:
            infos = await self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ExchangeError(f"cannot resolve {self.host}: {exc}") from None
        self.address = infos[0][4]

    def exchange_for(self, connection: int) -> Exchange:
        if self.options.tcp:
            return EchoExchange(connection)
        return HttpExchange(self.request)

    async def warmup(self) -> str | None:
        """One call per connection before timing starts (fortio; none with -n). Returns an abort reason or None."""
        await self.resolve()
        if self.options.exactly or self.options.stream:
            return None
        results = await asyncio.gather(*(caller.warmup() for caller in self.callers))
        for outcome in results:
            if outcome is not None and not self.options.allow_initial_errors:
                return outcome
        return None

    async def run(self, start: float) -> RunStats:
        """Timed phase: every caller runs until its calls, the duration or a stop end it."""
        self.stats.start = start
        self.timing = True
        duration = self.options.duration
        if not self.options.exactly and duration > 0:
            self.end_time = start + duration
        self._all_done = self.loop.create_future()
        self._active = len(self.callers)
        if not self.callers:
            self._all_done.set_result(None)
        for caller in self.callers:
            caller.start()
        stop_timer = None
        if self.end_time != float("inf"):
            # Idle paced callers and streams notice the end from this timer, not only after their next call.
            stop_timer = self.loop.call_at(self.loop.time() + (self.end_time - _now()), self._end_reached)
        try:
            await self._all_done
        finally:
            if stop_timer is not None:
                stop_timer.cancel()
        # fortio: the run ends when the last call in flight has ended, and no earlier than the requested duration
        ended = _now()
        finite = self.end_time != float("inf")
        self.stats.end = max(ended, self.end_time) if finite and not self.stats.interrupted else ended
        for caller in self.callers:
            caller.close()
            self.stats.conn_ids.append(caller.id)
            self.stats.sockets.append(caller.sockets)
            self.stats.conn_ips.append(caller.peer)
            self.stats.conn_connect.append(caller.connect_times)
            if caller.peer:
                self.stats.ip_counts[caller.peer] = self.stats.ip_counts.get(caller.peer, 0) + 1
        await self.tasks.close()  # a connect still under way belongs to no call any more
        return self.stats

    def _end_reached(self) -> None:
        for caller in self.callers:
            caller.wake()

    def stop(self) -> None:
        """Interrupted (SIGINT, or the parent says so): no new calls; calls in flight finish or time out."""
        if self.stopping:
            return
        self.stopping = True
        self.stats.interrupted = True
        for caller in self.callers:
            caller.wake()

    def caller_done(self) -> None:
        self._active -= 1
        if self._active == 0 and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)


class Caller:
    """One connection slot (fortio's thread): one call at a time, reconnecting when its socket is gone."""

    def __init__(self, worker: Worker, connection: int, exactly: int) -> None:
        self.worker = worker
        self.id = connection
        self.limit: int | None = exactly if worker.options.exactly else None  # -n: this connection's share (may be 0)
        self.exchange = worker.exchange_for(connection)
        self.proto: _Proto | None = None
        self.sockets = 0
        self.socket_calls = 0  # calls finished on the current socket
        self.peer = ""
        self.connect_times = Histogram(worker.options.resolution)
        self.calls = 0
        self.in_flight = False
        self.call_start = 0.0
        self.deadline = 0.0
        self.retried = False
        self.timer: asyncio.TimerHandle | None = None
        self.paced: asyncio.TimerHandle | None = None
        self.done = False
        self.connecting = False
        self.gen = 0  # bumped per call: a connect finishing for an earlier call is discarded
        self._warmup_result: asyncio.Future[str | None] | None = None
        options = worker.options
        per_connection_qps = options.qps / options.connections if not options.max_qps else 0.0
        self.interval = 1.0 / per_connection_qps if per_connection_qps > 0 else 0.0

    # -- phases ------------------------------------------------------------------------------------------------
    async def warmup(self) -> str | None:
        self._warmup_result = self.worker.loop.create_future()
        self.begin_call()
        return await self._warmup_result

    def start(self) -> None:
        self.calls = 0
        self.next_call()

    def wake(self) -> None:
        """The run ended or was stopped: an idle caller (waiting for its pacing slot) finishes now."""
        if not self.in_flight and not self.connecting and not self.done:
            if self.paced is not None:
                self.paced.cancel()
                self.paced = None
            self.next_call()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.paced is not None:
            self.paced.cancel()
            self.paced = None
        self._drop_socket(abort=False)

    # -- one call ----------------------------------------------------------------------------------------------
    def next_call(self) -> None:
        worker = self.worker
        if worker.stopping or (self.limit is not None and self.calls >= self.limit):
            return self._finish()
        now = _now()
        if self.limit is None and now >= worker.end_time:
            return self._finish()
        if self.interval:
            target = worker.stats.start + self.calls * self.interval  # fortio: catch up when behind
            if target > now:
                if target >= worker.end_time:
                    return self._finish()
                worker.stats.sleeps.record(round(target - now, 9))
                self.paced = worker.loop.call_later(target - now, self._paced_call)
                return None
            worker.stats.sleeps.record(round(target - now, 9))
        self.begin_call()
        return None

    def _paced_call(self) -> None:
        self.paced = None
        self.begin_call()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.worker.caller_done()

    def begin_call(self) -> None:
        self.gen += 1
        self.in_flight = True
        self.retried = False
        self.call_start = _now()
        self.deadline = self.call_start + self.worker.options.timeout
        self._arm_timer()
        self._send_or_connect()

    def _send_or_connect(self) -> None:
        if self.proto is None or self.proto.transport is None or self.proto.transport.is_closing():
            self.proto = None
            self.connecting = True
            self.worker.tasks.spawn(self._connect(self.gen), name=f"load-connect-{self.id}")
            return
        self._write(self.proto.transport)

    async def _connect(self, gen: int) -> None:
        worker = self.worker
        started = _now()
        try:
            remaining = max(self.deadline - started, 0.001)
            async with asyncio.timeout(remaining):
                transport, proto = await worker.loop.create_connection(
                    lambda: _Proto(self), worker.address[0], worker.address[1]
                )
        except (TimeoutError, OSError) as exc:
            if gen == self.gen and self.in_flight:
                self.connecting = False
                kind = "timeout" if isinstance(exc, TimeoutError) else error_kind(exc)
                self._failed(f"connect: {kind}")
            return None
        if gen != self.gen or not self.in_flight:  # the call timed out meanwhile
            transport.close()
            return None
        self.connecting = False
        self.sockets += 1
        self.socket_calls = 0
        took = round(_now() - started, 9)
        self.connect_times.record(took)
        self.worker.stats.connect_times.record(took)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.proto = proto
        self._write(transport)
        return None

    def _write(self, transport: asyncio.Transport) -> None:
        payload = self.exchange.begin(self.calls)
        self.worker.stats.bytes_sent += len(payload)
        transport.write(payload)

    def on_data(self, proto: _Proto, data: bytes) -> None:
        self.worker.stats.bytes_received += len(data)
        if proto is not self.proto or not self.in_flight:
            if proto is self.proto:  # bytes nobody asked for: the next call would parse them as its answer
                self._drop_socket(abort=True)
            return
        try:
            outcome = self.exchange.feed(data)
        except ExchangeError as exc:
            return self._failed(exc.kind)
        if outcome is not None:
            self._completed(outcome)
        return None

    def on_lost(self, proto: _Proto, exc: Exception | None) -> None:
        if proto is not self.proto:
            return None
        self.proto = None
        if not self.in_flight:
            self.worker.stats.idle_closed += 1
            return None
        if self.exchange.in_progress:
            try:
                outcome = self.exchange.eof()
            except ExchangeError as err:
                return self._failed(err.kind)
            if outcome is not None:
                return self._completed(outcome)
        kind = error_kind(exc)
        # fortio retries once, silently, when a reused keep-alive socket fails before any byte of the answer.
        # We retry too (unless -no-retry) but count it.
        if self.socket_calls > 0 and not self.retried and self.worker.options.retry and not self.worker.stopping:
            self.retried = True
            if self.worker.timing:
                self.worker.stats.record_retry(kind, _now())
            self._send_or_connect()
            return None
        return self._failed(kind)

    def _on_timer(self) -> None:
        self.timer = None
        if not self.in_flight:
            return
        now = _now()
        if now >= self.deadline:
            self._failed("connect: timeout" if self.connecting else "timeout")
        else:
            self._arm_timer()

    def _arm_timer(self) -> None:
        if self.timer is None:
            delay = max(self.deadline - _now(), 0.0)
            self.timer = self.worker.loop.call_later(delay, self._on_timer)

    # -- endings -----------------------------------------------------------------------------------------------
    def _completed(self, outcome: Outcome) -> None:
        now = _now()
        self.in_flight = False
        self.socket_calls += 1
        if not outcome.keep_alive or not self.worker.options.keepalive:
            self._drop_socket(abort=False)
        self._account(outcome.code, now, None, outcome)

    def _failed(self, kind: str) -> None:
        now = _now()
        self.in_flight = False
        self.connecting = False
        self._drop_socket(abort=True)
        code: int | str = kind if self.worker.options.tcp else SOCKET_ERROR
        self._account(code, now, kind, None)

    def _account(self, code: int | str, now: float, kind: str | None, outcome: Outcome | None) -> None:
        worker = self.worker
        if self._warmup_result is not None:  # the warmup call: not recorded, but may abort the run
            result, self._warmup_result = self._warmup_result, None
            worker.stats.warmup += 1
            ok = code_is_ok(code) or worker.options.tcp  # fortio's TCP runner ignores warmup errors
            why = None if ok else f"error {code} for {worker.options.url}" + (f": {kind}" if kind else "")
            result.set_result(why)
            return
        stats = worker.stats
        stats.record(code, round(now - self.call_start, 9), now, kind)  # whole ns, as Go's durations
        if outcome is not None:
            stats.header_sizes.record(outcome.header_size)
            stats.sizes.record(outcome.header_size + outcome.body_size)
        self.calls += 1
        self.next_call()

    def _drop_socket(self, *, abort: bool) -> None:
        proto, self.proto = self.proto, None
        if proto is not None and proto.transport is not None:
            if abort:
                proto.transport.abort()
            else:
                proto.transport.close()


def split_calls(exactly: int, connections: int) -> dict[int, int]:
    """fortio splits -n over the threads: n // c each, the remainder to the first ones."""
    if not exactly:
        return {}
    base, extra = divmod(exactly, connections)
    return {i: base + (1 if i < extra else 0) for i in range(connections)}


def connection_ids(options: LoadOptions, worker: int, workers: int) -> list[int]:
    return list(range(worker, options.connections, workers))

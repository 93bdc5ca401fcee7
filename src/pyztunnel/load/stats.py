"""What one run measured, mergeable across worker processes (sans-IO).

Every call lands in the duration histogram (fortio's `DurationHistogram`, errors included), failed calls also in the
errors histogram, the status code in `codes` (`-1` for a socket error, fortio's `SocketError`) and socket errors in
`error_kinds` by kind. The per-second `timeline` is ours: calls, codes, errors and latency per second of the run.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import Any

from pyztunnel.load.histogram import Histogram

SOCKET_ERROR = -1


def code_is_ok(code: int | str) -> bool:
    """fortio's `codeIsOK`: 2xx or 418 (so an echo server set to 418 counts as success); TCP: "OK"."""
    if isinstance(code, str):
        return code == "OK"
    return 200 <= code <= 299 or code == 418


def error_kind(exc: BaseException | None) -> str:
    """A short, stable name for a socket failure (the `-1` breakdown line)."""
    if exc is None:
        return "closed by peer"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno {exc.errno}").lower()
    return type(exc).__name__


@dataclasses.dataclass
class Second:
    calls: int = 0
    errors: int = 0
    codes: dict[str, int] = dataclasses.field(default_factory=dict)
    latency: Histogram = dataclasses.field(default_factory=Histogram)
    retried: int = 0
    broken: int = 0  # -stream: connections broken in this second
    echoed: int = 0  # -stream: bytes echoed back in this second
    lost: int = 0  # -stream: bytes sent but never echoed by the connections broken in this second


@dataclasses.dataclass
class StreamStats:
    connections: int = 0
    broken: int = 0
    bytes_sent: int = 0
    bytes_echoed: int = 0
    bytes_lost: int = 0
    bytes_corrupted: int = 0
    corrupted_connections: int = 0


class RunStats:
    def __init__(self, resolution: float = 0.001) -> None:
        self.resolution = resolution
        self.durations = Histogram(resolution)
        self.errors = Histogram(resolution)
        self.codes: dict[int | str, int] = {}
        self.error_kinds: dict[str, int] = {}
        self.retried = 0
        self.retry_kinds: dict[str, int] = {}
        self.idle_closed = 0  # keep-alive connections the server closed between requests
        self.conn_ids: list[int] = []  # per connection: its number (fortio's thread id)
        self.sockets: list[int] = []  # per connection: sockets opened
        self.conn_ips: list[str] = []  # per connection: the peer address it last used
        self.conn_connect: list[Histogram] = []  # per connection: connect times
        self.warmup = 0
        self.header_sizes = Histogram(5)
        self.sizes = Histogram(100)
        self.connect_times = Histogram(resolution)
        # qps pacing: time slept before each call, negative when behind schedule. fortio's buckets for it are offset by
        # -1 ms, so bucket 0 holds the sleeps of -1 ms or less ("falling behind").
        self.sleeps = Histogram(0.001, offset=-0.001)
        self.ip_counts: dict[str, int] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.timeline: dict[int, Second] = {}
        self.stream = StreamStats()
        self.start = 0.0  # time.monotonic() when timing started
        self.end = 0.0
        self.aborted: str | None = None
        self.interrupted = False

    # -- hot path ----------------------------------------------------------------------------------------------
    def record(self, code: int | str, duration: float, now: float, kind: str | None = None) -> None:
        """One finished call: its code, how long it took, when it ended (monotonic), the socket error kind."""
        self.durations.record(duration)
        second = self.second(now)
        second.calls += 1
        second.latency.record(duration)
        key = str(code)
        second.codes[key] = second.codes.get(key, 0) + 1
        self.codes[code] = self.codes.get(code, 0) + 1
        if not code_is_ok(code):
            self.errors.record(duration)
            second.errors += 1
            if kind is not None:
                self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def second(self, now: float) -> Second:
        index = int(now - self.start)
        second = self.timeline.get(index)
        if second is None:
            second = self.timeline[index] = Second(latency=Histogram(self.resolution))
        return second

    def record_retry(self, kind: str, now: float) -> None:
        self.retried += 1
        self.retry_kinds[kind] = self.retry_kinds.get(kind, 0) + 1
        self.second(now).retried += 1

    # -- merging -----------------------------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        return self.durations.count

    @property
    def socket_count(self) -> int:
        return sum(self.sockets)

    def to_state(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "durations": self.durations.to_state(),
            "errors": self.errors.to_state(),
            "codes": dict(self.codes),
            "error_kinds": dict(self.error_kinds),
            "retried": self.retried,
            "retry_kinds": dict(self.retry_kinds),
            "idle_closed": self.idle_closed,
            "conn_ids": list(self.conn_ids),
            "sockets": list(self.sockets),
            "conn_ips": list(self.conn_ips),
            "conn_connect": [h.to_state() for h in self.conn_connect],
            "warmup": self.warmup,
            "header_sizes": self.header_sizes.to_state(),
            "sizes": self.sizes.to_state(),
            "connect_times": self.connect_times.to_state(),
            "sleeps": self.sleeps.to_state(),
            "ip_counts": dict(self.ip_counts),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "timeline": {
                index: {**dataclasses.asdict(sec), "latency": sec.latency.to_state()}
                for index, sec in self.timeline.items()
            },
            "stream": dataclasses.asdict(self.stream),
            "start": self.start,
            "end": self.end,
            "aborted": self.aborted,
            "interrupted": self.interrupted,
        }

    def order_connections(self) -> None:
        """Per-connection lists in connection order (worker k owns every k-th connection, so merging interleaves)."""
        order = sorted(range(len(self.conn_ids)), key=self.conn_ids.__getitem__)
        self.conn_ids = [self.conn_ids[i] for i in order]
        self.sockets = [self.sockets[i] for i in order]
        self.conn_ips = [self.conn_ips[i] for i in order]
        self.conn_connect = [self.conn_connect[i] for i in order]

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunStats:
        stats = cls(state["resolution"])
        stats.merge_state(state, first=True)
        return stats

    def merge_state(self, state: dict[str, Any], *, first: bool = False) -> None:
        """Add another worker's results (exact: counts and buckets add)."""
        self.durations.merge(Histogram.from_state(state["durations"]))
        self.errors.merge(Histogram.from_state(state["errors"]))
        for code, n in state["codes"].items():
            self.codes[code] = self.codes.get(code, 0) + n
        _add(self.error_kinds, state["error_kinds"])
        _add(self.retry_kinds, state["retry_kinds"])
        _add(self.ip_counts, state["ip_counts"])
        self.retried += state["retried"]
        self.idle_closed += state["idle_closed"]
        self.conn_ids.extend(state["conn_ids"])
        self.sockets.extend(state["sockets"])
        self.conn_ips.extend(state["conn_ips"])
        self.conn_connect.extend(Histogram.from_state(h) for h in state["conn_connect"])
        self.warmup += state["warmup"]
        self.header_sizes.merge(Histogram.from_state(state["header_sizes"]))
        self.sizes.merge(Histogram.from_state(state["sizes"]))
        self.connect_times.merge(Histogram.from_state(state["connect_times"]))
        self.sleeps.merge(Histogram.from_state(state["sleeps"]))
        self.bytes_sent += state["bytes_sent"]
        self.bytes_received += state["bytes_received"]
        for index, sec_state in state["timeline"].items():
            sec = self.timeline.get(int(index))
            if sec is None:
                sec = self.timeline[int(index)] = Second(latency=Histogram(self.resolution))
            sec.calls += sec_state["calls"]
            sec.errors += sec_state["errors"]
            sec.retried += sec_state["retried"]
            sec.broken += sec_state["broken"]
            sec.echoed += sec_state["echoed"]
            sec.lost += sec_state.get("lost", 0)
            _add(sec.codes, sec_state["codes"])
            sec.latency.merge(Histogram.from_state(sec_state["latency"]))
        for field in dataclasses.fields(StreamStats):
            setattr(self.stream, field.name, getattr(self.stream, field.name) + state["stream"][field.name])
        if first:
            self.start, self.end = state["start"], state["end"]
        else:
            self.start = min(self.start, state["start"])
            self.end = max(self.end, state["end"])
        self.aborted = self.aborted or state["aborted"]
        self.interrupted = self.interrupted or state["interrupted"]


def _add(into: dict[Any, int], other: dict[Any, int]) -> None:
    for key, n in other.items():
        into[key] = into.get(key, 0) + n

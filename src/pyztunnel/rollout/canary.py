"""The canary's decision rule, pure: samples of the canary proxies in (their own metrics text, readiness, restarts),
a verdict out. The canary proxies are new processes, so their counters count from zero (`from_zero`; otherwise from
each proxy's first sample); a counter that goes down (the process restarted) counts from zero again.

Halt when, summed over the canary proxies during the bake:
- connection failures (`istio_tcp_connections_failed_total`) exceed `max_failed`;
- connections closed with an error flag (`istio_tcp_connections_closed_total{response_flags!="-"}`) exceed
  `max_error_closes`;
- container restarts exceed `max_restarts`;
- readiness flaps (Ready → not Ready) exceed `max_flaps`;
- consecutive failed scrapes of one proxy reach `max_scrape_failures`.
"""

from __future__ import annotations

import dataclasses
import re

FAILED = "istio_tcp_connections_failed"
CLOSED = "istio_tcp_connections_closed"
NO_FLAGS = "-"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    max_failed: int = 0
    max_error_closes: int = 0
    max_restarts: int = 0
    max_flaps: int = 0
    max_scrape_failures: int = 3


@dataclasses.dataclass(frozen=True)
class Sample:
    proxy: str
    ready: bool
    restarts: int
    metrics: str | None  # None: the scrape failed


@dataclasses.dataclass(frozen=True)
class Verdict:
    halt: bool
    reasons: tuple[str, ...]
    counts: dict[str, int]

    def describe(self) -> str:
        if self.reasons:
            return "; ".join(self.reasons)
        return ", ".join(f"{k} {v}" for k, v in self.counts.items())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition (comments skipped); ValueError if a line is not one."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"not a metric sample: {line[:80]!r}")
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m.group(3) or "")}
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def error_counts(text: str) -> tuple[int, int]:
    """(connection failures, connections closed with an error flag) in one exposition."""
    failed = closed_with_error = 0.0
    for name, labels, value in samples(text):
        if name == f"{FAILED}_total":
            failed += value
        elif name == f"{CLOSED}_total" and labels.get("response_flags", NO_FLAGS) != NO_FLAGS:
            closed_with_error += value
    return int(failed), int(closed_with_error)


@dataclasses.dataclass
class _Track:
    failed_last: int = -1
    errors_last: int = -1
    failed: int = 0
    errors: int = 0
    restarts_first: int = -1
    restarts: int = 0
    was_ready: bool | None = None
    flaps: int = 0
    scrape_failures_in_row: int = 0
    worst_scrape_run: int = 0


class CanaryJudge:
    def __init__(self, thresholds: Thresholds, *, from_zero: bool = True) -> None:
        self.thresholds = thresholds
        self.from_zero = from_zero
        self._tracks: dict[str, _Track] = {}

    def feed(self, sample: Sample) -> None:
        t = self._tracks.get(sample.proxy)
        if t is None:
            t = self._tracks[sample.proxy] = _Track(0, 0, restarts_first=0) if self.from_zero else _Track()
        if t.restarts_first < 0:
            t.restarts_first = sample.restarts
        t.restarts = max(t.restarts, sample.restarts - t.restarts_first)
        if t.was_ready and not sample.ready:
            t.flaps += 1
        t.was_ready = sample.ready
        if sample.metrics is None:
            t.scrape_failures_in_row += 1
            t.worst_scrape_run = max(t.worst_scrape_run, t.scrape_failures_in_row)
            return
        try:
            failed, errors = error_counts(sample.metrics)
        except ValueError:  # not an exposition: as good as unreachable
            t.scrape_failures_in_row += 1
            t.worst_scrape_run = max(t.worst_scrape_run, t.scrape_failures_in_row)
            return
        t.scrape_failures_in_row = 0
        t.failed += _delta(t.failed_last, failed)
        t.errors += _delta(t.errors_last, errors)
        t.failed_last, t.errors_last = failed, errors

    def verdict(self) -> Verdict:
        th = self.thresholds
        tracks = self._tracks.values()
        counts = {
            "connection failures": sum(t.failed for t in tracks),
            "error closes": sum(t.errors for t in tracks),
            "restarts": sum(t.restarts for t in tracks),
            "readiness flaps": sum(t.flaps for t in tracks),
            "failed scrapes in a row": max((t.worst_scrape_run for t in tracks), default=0),
        }
        limits = {
            "connection failures": (th.max_failed, "istio_tcp_connections_failed_total"),
            "error closes": (th.max_error_closes, 'istio_tcp_connections_closed_total with response_flags != "-"'),
            "restarts": (th.max_restarts, "container restarts"),
            "readiness flaps": (th.max_flaps, "Ready → not Ready"),
        }
        reasons = [
            f"{what} {counts[what]} > {limit} ({source})"
            for what, (limit, source) in limits.items()
            if counts[what] > limit
        ]
        if counts["failed scrapes in a row"] >= th.max_scrape_failures:
            reasons.append(f"metrics unreachable {counts['failed scrapes in a row']} times in a row")
        return Verdict(bool(reasons), tuple(reasons), counts)


def _delta(last: int, now: int) -> int:
    if last < 0:
        return 0  # the first sample is the baseline
    return now - last if now >= last else now  # a reset counter: the process restarted

"""fortio's `stats` package: Counter and Histogram, bucket for bucket (sans-IO).

Buckets are the same as fortio's: values are divided by the resolution (`-r`, default 1 ms) and counted in the
intervals ]prev, cur] of `BUCKET_VALUES`, with one special bucket for values <= 0 and one for values > 100000.
Percentiles interpolate linearly inside a bucket exactly as fortio's `CalcPercentile` does. Merging histograms of the
same resolution adds bucket counts, so a result merged from several worker processes is the same as one histogram
that saw every value (up to float rounding of the sums).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any

BUCKET_VALUES: tuple[int, ...] = (
    *(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
    *(12, 14, 16, 18, 20),
    *(25, 30, 35, 40, 45, 50),
    *(60, 70, 80, 90, 100),
    *(120, 140, 160, 180, 200),
    *(250, 300, 350, 400, 450, 500),
    *(600, 700, 800, 900, 1000),
    *(2000, 3000, 4000, 5000, 7500, 10000),
    *(20000, 30000, 40000, 50000, 75000, 100000),
)
NUM_VALUES = len(BUCKET_VALUES)
NUM_BUCKETS = NUM_VALUES + 1  # bucket 0: <= 0; bucket i: ]v[i-1], v[i]]; last: > 100000
_FIRST = float(BUCKET_VALUES[0])
_LAST = float(BUCKET_VALUES[-1])


def bucket_index(scaled: float) -> int:
    """The bucket of a value already divided by the resolution (fortio's `record`, with its 1e-12 edge rule)."""
    if scaled <= _FIRST:
        return 0
    if scaled > _LAST:
        return NUM_BUCKETS - 1
    whole = int(scaled)
    if scaled - whole < 1e-12:  # exactly on a boundary: intervals are open on the left
        whole -= 1
    return bisect.bisect_right(BUCKET_VALUES, max(whole, 0))


@dataclasses.dataclass
class Bucket:
    start: float
    end: float
    percent: float  # cumulative
    count: int


@dataclasses.dataclass
class HistogramData:
    """fortio's exported `HistogramData`."""

    count: int
    min: float
    max: float
    sum: float
    avg: float
    stddev: float
    data: list[Bucket]
    percentiles: list[tuple[float, float]]

    def percentile(self, percentile: float) -> float:
        """fortio's `CalcPercentile`: linear interpolation inside the bucket that holds the percentile."""
        if not self.data:
            return 0.0
        if percentile >= 100:
            return self.max
        previous = 100.0 / self.count  # the min is at least one point, so it covers 1/count
        if percentile <= previous:
            return self.min
        for bucket in self.data:
            if percentile <= bucket.percent:
                return bucket.start + (percentile - previous) / (bucket.percent - previous) * (
                    bucket.end - bucket.start
                )
            previous = bucket.percent
        return self.max

    def with_percentiles(self, percentiles: list[float]) -> HistogramData:
        if self.count:
            self.percentiles = [(p, self.percentile(p)) for p in percentiles]
        return self


class Histogram:
    """Counter (count, min, max, sum, sum of squares) plus fortio's buckets. `record` is on the hot path."""

    __slots__ = ("buckets", "count", "divider", "max", "min", "offset", "sum", "sum_sq")

    def __init__(self, divider: float = 0.001, offset: float = 0.0) -> None:
        if divider <= 0:
            raise ValueError("histogram resolution must be > 0")
        self.divider = divider
        self.offset = offset
        self.buckets = [0] * NUM_BUCKETS
        self.count = 0
        self.min = 0.0
        self.max = 0.0
        self.sum = 0.0
        self.sum_sq = 0.0

    def record(self, value: float) -> None:
        if self.count == 0:
            self.min = self.max = value
        elif value < self.min:
            self.min = value
        elif value > self.max:
            self.max = value
        self.count += 1
        self.sum += value
        self.sum_sq += value * value
        self.buckets[bucket_index((value - self.offset) / self.divider)] += 1

    def merge(self, other: Histogram) -> None:
        """Add another histogram of the same resolution (exact: bucket counts add)."""
        if (other.divider, other.offset) != (self.divider, self.offset):
            raise ValueError("cannot merge histograms of different resolutions")
        if other.count == 0:
            return
        if self.count == 0:
            self.min, self.max = other.min, other.max
        else:
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        if not self.count:
            return 0.0
        sigma = (self.sum_sq - self.sum * self.sum / self.count) / self.count
        return math.sqrt(sigma) if sigma > 0 else 0.0

    def export(self, percentiles: list[float] | None = None) -> HistogramData:
        """fortio's `Export` (+ `CalcPercentiles`): non-empty buckets, first starting at min, last ending at max."""
        data: list[Bucket] = []
        last = max((i for i, n in enumerate(self.buckets) if n), default=-1)
        previous = BUCKET_VALUES[0]
        total = 0
        for i in range(last + 1):
            n = self.buckets[i]
            if n == 0:
                if i < NUM_VALUES:
                    previous = BUCKET_VALUES[i]
                continue
            total += n
            start = self.min if not data else self.divider * previous + self.offset
            if i < NUM_VALUES:
                end = self.divider * BUCKET_VALUES[i] + self.offset
                previous = BUCKET_VALUES[i]
            else:
                start = self.divider * previous + self.offset
                end = self.max
            data.append(Bucket(start, end, 100.0 * total / self.count, n))
        if data:
            data[-1].end = self.max
        exported = HistogramData(self.count, self.min, self.max, self.sum, self.avg, self.stddev, data, [])
        return exported.with_percentiles(percentiles or [])

    def to_state(self) -> dict[str, Any]:
        """Plain data, to send a worker process's histogram to the parent."""
        return {
            "divider": self.divider,
            "offset": self.offset,
            "buckets": list(self.buckets),
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "sum_sq": self.sum_sq,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Histogram:
        hist = cls(state["divider"], state["offset"])
        hist.buckets = list(state["buckets"])
        hist.count = state["count"]
        hist.min = state["min"]
        hist.max = state["max"]
        hist.sum = state["sum"]
        hist.sum_sq = state["sum_sq"]
        return hist

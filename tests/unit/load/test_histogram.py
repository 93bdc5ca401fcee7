"""fortio's histogram: bucket boundaries, export, percentile interpolation, exact merging (hand-computed fixtures)."""

from __future__ import annotations

import random

import pytest

from pyztunnel.load.histogram import BUCKET_VALUES, NUM_BUCKETS, Histogram, bucket_index

SAMPLE = [0.0005, 0.001, 0.0015, 0.0105, 0.05, 0.2]


def test_bucket_values_are_fortios() -> None:
    assert len(BUCKET_VALUES) == 56
    assert BUCKET_VALUES[:13] == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    assert BUCKET_VALUES[-7:] == (10000, 20000, 30000, 40000, 50000, 75000, 100000)
    assert NUM_BUCKETS == 57


@pytest.mark.parametrize(
    ("scaled", "index"),
    [
        (-5.0, 0),  # <= 0: the special first bucket
        (0.0, 0),
        (0.5, 1),  # ]0, 1]
        (1.0, 1),  # exactly on a boundary: intervals are open on the left
        (1.0000001, 2),
        (11.0, 11),
        (11.5, 12),  # ]11, 12]
        (13.0, 13),  # ]12, 14]
        (999.0, 43),  # ]900, 1000]
        (1000.0, 43),
        (1000.5, 44),  # ]1000, 2000]
        (99999.0, 55),  # ]75000, 100000]
        (100000.0, 55),
        (100000.5, 56),  # > 100000: the special last bucket
    ],
)
def test_bucket_index(scaled: float, index: int) -> None:
    assert bucket_index(scaled) == index


def test_export_hand_computed() -> None:
    hist = Histogram(0.001)
    for value in SAMPLE:
        hist.record(value)
    data = hist.export([10, 50, 75, 90, 100])
    assert data.count == 6
    assert data.min == 0.0005
    assert data.max == 0.2
    assert data.sum == pytest.approx(0.2635)
    rows = [(b.start, b.end, round(b.percent, 2), b.count) for b in data.data]
    assert rows == [
        (0.0005, 0.001, 33.33, 2),  # first bucket starts at min
        (0.001, 0.002, 50.0, 1),
        (0.01, 0.011, 66.67, 1),
        (0.045, 0.05, 83.33, 1),
        (0.18, 0.2, 100.0, 1),  # last bucket ends at max
    ]
    values = dict(data.percentiles)
    assert values[10] == 0.0005  # below 1/count: the min
    assert values[50] == pytest.approx(0.002)  # 0.001 + (50-33.33)/(50-33.33) * 0.001
    assert values[75] == pytest.approx(0.0475)  # 0.045 + (75-66.67)/(83.33-66.67) * 0.005
    assert values[90] == pytest.approx(0.188)  # 0.18 + (90-83.33)/(100-83.33) * 0.02
    assert values[100] == 0.2


def test_last_bucket_above_100000_resolutions() -> None:
    hist = Histogram(0.001)
    hist.record(150.0)  # 150000 ms: beyond the last boundary
    hist.record(0.5)
    data = hist.export()
    assert [(b.start, b.end, b.count) for b in data.data] == [(0.5, 0.5, 1), (100.0, 150.0, 1)]


def test_empty_histogram() -> None:
    data = Histogram().export([50])
    assert data.count == 0
    assert data.data == []
    assert data.percentiles == []
    assert data.percentile(50) == 0.0


def test_stddev_and_avg() -> None:
    hist = Histogram()
    for value in (1.0, 2.0, 3.0, 4.0):
        hist.record(value)
    assert hist.avg == 2.5
    assert hist.stddev == pytest.approx(1.118033988749895)


def test_merge_is_exact() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(50) for _ in range(5000)]
    whole = Histogram()
    parts = [Histogram() for _ in range(3)]
    for i, value in enumerate(values):
        whole.record(value)
        parts[i % 3].record(value)
    merged = Histogram()
    for part in parts:
        merged.merge(Histogram.from_state(part.to_state()))  # through the worker-to-parent wire format
    assert merged.buckets == whole.buckets
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert merged.sum == pytest.approx(whole.sum)
    assert merged.export([50, 99]).percentiles == whole.export([50, 99]).percentiles


def test_merge_refuses_other_resolution() -> None:
    with pytest.raises(ValueError, match="resolutions"):
        Histogram(0.001).merge(Histogram(0.01))

"""The recommendation math: ztunnel's drain formula, its inverse, quantiles, exposure and rollout time."""

from __future__ import annotations

import pytest

from pyztunnel.advise.recommend import (
    drain_for_grace,
    exposure,
    grace_for_drain,
    quantile,
    recommend,
    rollout_seconds,
)


@pytest.mark.parametrize(
    ("grace", "drain"), [(0, 1), (1, 1), (2, 1), (5, 4), (10, 9), (11, 6), (15, 10), (30, 25), (120, 115)]
)
def test_drain_for_grace_is_ztunnels_formula(grace: int, drain: int) -> None:
    assert drain_for_grace(grace) == drain


@pytest.mark.parametrize(
    ("drain", "grace"), [(0, 1), (1, 1), (2, 3), (6, 7), (9, 10), (9.2, 15), (10, 15), (25, 30), (144, 149)]
)
def test_grace_for_drain(drain: float, grace: int) -> None:
    assert grace_for_drain(drain) == grace


def test_grace_for_drain_is_the_smallest_that_covers() -> None:
    for need in range(1, 400):
        grace = grace_for_drain(need)
        assert drain_for_grace(grace) >= need
        assert all(drain_for_grace(smaller) < need for smaller in range(1, grace))


def test_nearest_rank_quantile() -> None:
    values = [float(i) for i in range(1, 1001)]  # 1..1000
    assert quantile(values, 50) == 500
    assert quantile(values, 99.9) == 999
    assert quantile(values, 100) == 1000
    assert quantile([7.0], 99.9) == 7.0
    with pytest.raises(ValueError):
        quantile([], 50)


def test_recommend_long_connections() -> None:
    values = sorted([0.01] * 990 + [100.0] * 9 + [130.2])  # p99.9 (rank 999) = 100 s
    rec = recommend(values, 99.9, 10)
    assert rec.quantile_value == 100.0
    assert rec.needed_drain == pytest.approx(110.0)
    assert rec.drain_seconds == 110
    assert rec.grace == 115  # drain 110 = grace − 5
    assert rec.resulting_drain == 110
    assert rec.explain()[-1] == "ztunnel drains for grace − 5 s when grace > 10 s, so grace = 110 + 5 = 115 s"


def test_recommend_short_connections_uses_the_small_grace_branch() -> None:
    rec = recommend([0.5, 1.0, 3.0], 99.9, 10)  # 3 s + 10 % = 3.3 → drain 4 s
    assert (rec.drain_seconds, rec.grace, rec.resulting_drain) == (4, 5, 4)


def test_exposure() -> None:
    values = sorted([10.0, 20.0, 30.0, 40.0])  # total 100 s of connection time
    current = exposure(values, 30)  # drain 25 s
    assert current.drain == 25
    assert current.longer_than_drain == 2
    assert current.share_longer == 0.5
    assert current.share_reset_random == pytest.approx((5 + 15) / 100)
    assert exposure(values, 45).longer_than_drain == 0


def test_rollout() -> None:
    assert rollout_seconds(30, 10, 10) == 400
    assert rollout_seconds(149, 3, 0) == 447

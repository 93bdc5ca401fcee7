from __future__ import annotations

import pytest

from pyztunnel.load.gofmt import go_duration, go_g, go_json_float, parse_go_duration


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (50.0, "50"),
        (99.9, "99.9"),
        (0.0605556, "0.0605556"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1.5e7, "1.5e+07"),
        (0.0001, "0.0001"),
        (1e-05, "1e-05"),
        (5.2729e-05, "5.2729e-05"),
        (-2.5, "-2.5"),
    ],
)
def test_go_g(value: float, text: str) -> None:
    assert go_g(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(5.0, "5"), (0.001, "0.001"), (1e-7, "1e-7"), (1e21, "1e+21"), (123.25, "123.25")]
)
def test_go_json_float(value: float, text: str) -> None:
    assert go_json_float(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (5, "5s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (0.25, "250ms"),
        (5.001234567, "5.001234567s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("1m30s", 90), ("250ms", 0.25), ("0", 0), ("1.5h", 5400)])
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5x", "-3s", "s", "1m30"])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)

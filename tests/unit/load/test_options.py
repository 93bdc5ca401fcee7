"""fortio's flag syntax: single-dash long flags, -flag=value, booleans, repeatable -H, and clear errors."""

from __future__ import annotations

import pytest

from pyztunnel.load.options import FlagError, LoadOptions, parse_args


def test_seed_command_line() -> None:
    options = parse_args(["-qps", "0", "-c", "1000", "-t", "60s", "-timeout", "10s", "http://gw.test/status/418"])
    assert options == LoadOptions(url="http://gw.test/status/418", qps=0, connections=1000, duration=60, timeout=10)
    assert options.max_qps


def test_forms_and_repeatable_headers() -> None:
    options = parse_args(
        [
            "-qps=5",
            "--c",
            "3",
            "-keepalive=false",
            "-H",
            "Host: a",
            "-H",
            "X-B: c",
            "-json=-",
            "-p",
            "50,99.9",
            "-no-retry",
            "u:1",
        ]
    )
    assert options is not None
    assert (options.qps, options.connections, options.keepalive, options.json_path) == (5, 3, False, "-")
    assert options.headers == (("Host", "a"), ("X-B", "c"))
    assert options.retry is False
    assert list(options.percentiles) == [50, 99.9]


def test_defaults_are_fortios() -> None:
    options = parse_args(["http://h/"])
    assert options is not None
    assert (options.qps, options.connections, options.duration, options.timeout, options.resolution) == (
        8,
        4,
        5,
        3,
        0.001,
    )
    assert options.percentiles == (50, 75, 90, 99, 99.9)


def test_help() -> None:
    assert parse_args(["-h"]) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-bogus", "http://h/"], "flag provided but not defined: -bogus"),
        (["-c", "x", "http://h/"], "invalid value 'x' for -c"),
        (["-c"], "flag needs an argument: -c"),
        ([], "missing URL"),
        (["http://a/", "http://b/"], "expected one URL"),
        (["-p", "100", "http://h/"], "must be > 0 and < 100"),
        (["-t", "5x", "http://h/"], "invalid value '5x' for -t"),
        (["-keepalive=maybe", "http://h/"], "invalid boolean"),
        (["-H", "novalue", "http://h/"], "Name: value"),
        (["-c", "0", "http://h/"], "-c must be at least 1"),
        (["-stream", "http://h/"], "-stream needs a tcp://"),
        (["tcp://nohost"], "bad tcp:// address"),
        (["https://h/"], "unsupported URL scheme"),
    ],
)
def test_bad_flags(args: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=message.replace("(", r"\(")):
        parse_args(args)

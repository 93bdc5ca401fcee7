"""Access-log parsing: every format ztunnel (and pyztunnel) writes, and every kind of bad line, counted not raised."""

from __future__ import annotations

import json
import logging

import pytest

from pyztunnel.advise import parse
from pyztunnel.advise.parse import AccessLogParser, BadLine, parse_entry, parse_fields, parse_line
from pyztunnel.observe.logging import ZtunnelFormatter

QUOTED = (
    '2026-01-01T00:00:00.000000Z\tinfo\taccess\tconnection complete\tsrc.addr=10.1.0.5:40000 src.workload="web-1" '
    'src.namespace="shop" src.identity="spiffe://cluster.local/ns/shop/sa/web" dst.addr=10.1.0.7:15008 '
    'dst.hbone_addr=10.1.0.7:8080 dst.service="cart.shop.svc.cluster.local" dst.workload="cart-0" '
    'dst.namespace="shop" dst.identity="spiffe://cluster.local/ns/shop/sa/cart" direction="outbound" '
    'bytes_sent=84 bytes_recv=158 duration="12ms"'
)
UNQUOTED = (
    "2024-03-01T10:00:00.123456Z  INFO  access  connection complete  src.addr=10.1.0.5:40000 src.workload=web-1 "
    "dst.service=cart.shop.svc.cluster.local direction=inbound bytes_sent=1 bytes_recv=2 duration=1500ms"
)
JSON = json.dumps(
    {
        "level": "info",
        "time": "2026-01-01T00:00:00.000000Z",
        "scope": "access",
        "message": "connection complete",
        "src.addr": "10.1.0.5:40000",
        "dst.service": "cart.shop.svc.cluster.local",
        "direction": "outbound",
        "bytes_sent": 84,
        "duration": "250ms",
    }
)


def test_plain_quoted() -> None:
    record = parse_line(QUOTED)
    assert record.duration == 0.012
    assert record.service == "cart.shop.svc.cluster.local"
    assert record.direction == "outbound"
    assert parse_entry(QUOTED)[1]["src.identity"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert record.error is None


def test_plain_unquoted_older_versions_and_spaces_for_tabs() -> None:
    record = parse_line(UNQUOTED)
    assert record.duration == 1.5
    assert record.service == "cart.shop.svc.cluster.local"
    assert record.direction == "inbound"


def test_json_format() -> None:
    record = parse_line(JSON)
    assert record.duration == 0.25
    assert record.service == "cart.shop.svc.cluster.local"


def test_json_numeric_duration_is_milliseconds() -> None:
    doc = json.loads(JSON)
    doc["duration"] = 42
    assert parse_line(json.dumps(doc)).duration == 0.042


def test_kubectl_prefix_and_failed_connection() -> None:
    line = "[pod/ztunnel-x/istio-proxy] " + QUOTED.replace('duration="12ms"', 'error="connection reset" duration="7ms"')
    record = parse_line(line)
    assert record.duration == 0.007
    assert record.error == "connection reset"


def test_escaped_quotes_in_values() -> None:
    line = QUOTED.replace('src.workload="web-1"', 'src.workload="we \\"b\\" 1"')
    assert parse_entry(line)[1]["src.workload"] == 'we "b" 1'


def test_no_service_falls_back_to_workload() -> None:
    line = QUOTED.replace(' dst.service="cart.shop.svc.cluster.local"', "")
    assert parse_line(line).service == "(no service: cart-0)"


@pytest.mark.parametrize("level", ["info", "error"])
def test_pyztunnel_own_logs_parse(level: str) -> None:
    """pyztunnel's formatter (observe/logging.py) writes what this parser reads, plain and JSON."""
    record = logging.LogRecord(
        "access", logging.INFO if level == "info" else logging.ERROR, "x", 1, "connection complete", None, None
    )
    record.fields = {
        "src.addr": "10.0.0.1:1",
        "dst.service": "svc.ns.svc.cluster.local",
        "direction": "inbound",
        "bytes_sent": 3,
        "duration": "99ms",
    }
    for json_format in (False, True):
        parsed = parse_line(ZtunnelFormatter(json_format=json_format).format(record))
        assert parsed.duration == 0.099
        assert parsed.service == "svc.ns.svc.cluster.local"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("2026-01-01T00:00:00.000000Z\tinfo\tztunnel::proxy\tready", parse.OTHER_LOG),
        ("2026-01-01T00:00:00.000000Z\tinfo\txds::client:xds{id=1}\treceived response\ttype_url=x", parse.OTHER_LOG),
        ("2026-01-01T00:00:00.000000Z\tdebug\taccess\tconnection opened\tsrc.addr=1.2.3.4:5", parse.OTHER_ACCESS),
        ('2026-01-01T00:00:00.000000Z\twarn\taccess\tconnection failed\terror="x"', parse.OTHER_ACCESS),
        (QUOTED.replace(' duration="12ms"', ""), parse.NO_DURATION),
        (QUOTED.replace('duration="12ms"', 'duration="soon"'), parse.BAD_DURATION),
        (QUOTED[: QUOTED.index("cart-0")], parse.TRUNCATED),  # cut inside a quoted value
        ("2026-01-01T00:00:00.0", parse.TRUNCATED),
        (JSON[:40], parse.TRUNCATED),
        ('{"level": "info", oops}', parse.BAD_JSON),
        ('{"just": "json"}', parse.UNKNOWN),
        ("[1, 2, 3]", parse.UNKNOWN),
        ("hello world", parse.UNKNOWN),
        ("GET / HTTP/1.1", parse.UNKNOWN),
        ("\x00\x01\x02binary", parse.BINARY),
    ],
)
def test_bad_lines_have_reasons(line: str, reason: str) -> None:
    with pytest.raises(BadLine) as info:
        parse_line(line)
    assert info.value.reason == reason


def test_parser_counts_and_never_raises() -> None:
    parser = AccessLogParser()
    lines: list[bytes | str] = [
        QUOTED,
        UNQUOTED.encode(),
        JSON,
        b"\xff\xfe\xfa not utf-8",
        "",
        "\n",
        "garbage",
        QUOTED[:50],
    ]
    for line in lines:
        parser.feed_line(line)
    result = parser.result
    assert [c.duration for c in result.connections] == [0.012, 1.5, 0.25]
    assert result.lines == 8
    assert result.blank == 2
    assert dict(result.skipped) == {parse.BINARY: 1, parse.UNKNOWN: 1, parse.TRUNCATED: 1}


def test_parse_fields() -> None:
    assert parse_fields('a=1 b="x y" c=z') == {"a": "1", "b": "x y", "c": "z"}
    with pytest.raises(BadLine):
        parse_fields('a=1 b="unterminated')

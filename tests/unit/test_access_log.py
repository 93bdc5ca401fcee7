"""The access log, line for line: ztunnel's keys, order, quoting and levels, plain and LOG_FORMAT=json."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyztunnel.observe import access
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.observe.logging import ZtunnelFormatter

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1767225600.0  # 2026-01-01T00:00:00Z: every captured line carries this timestamp


def _fixed_time(record: logging.LogRecord) -> bool:
    record.created = T0
    return True


Capture = Callable[[bool], list[str]]


@pytest.fixture
def capture() -> Iterator[Callable[[bool], io.StringIO]]:
    """Route the `access` logger to a buffer in the given format, at DEBUG, with a fixed clock."""
    logger = logging.getLogger("access")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    handlers: list[logging.Handler] = []

    def start(json_format: bool) -> io.StringIO:
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        handler.setFormatter(ZtunnelFormatter(json_format=json_format))
        handler.addFilter(_fixed_time)
        logger.handlers[:] = [handler]
        handlers.append(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        return buf

    try:
        yield start
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def outbound_mtls() -> ConnectionRecord:
    return ConnectionRecord(
        src_addr="10.1.0.5:40000",
        dst_addr="10.1.0.7:15008",
        direction="outbound",
        start=100.0,
        src_workload="web-1",
        src_namespace="shop",
        src_identity="spiffe://cluster.local/ns/shop/sa/web",
        dst_hbone_addr="10.1.0.7:8080",
        dst_service="cart.shop.svc.cluster.local",
        dst_workload="cart-0",
        dst_namespace="shop",
        dst_identity="spiffe://cluster.local/ns/shop/sa/cart",
        mtls=True,
        bytes_recv=84,  # request bytes: the local app sent them
        bytes_sent=158,
    )


def test_complete_line_matches_ztunnel_example(capture: Callable[[bool], io.StringIO]) -> None:
    buf = capture(False)
    access.log_complete(outbound_mtls(), now=100.0129)  # 12.9 ms → "12ms", truncated
    # The example line of reference/ztunnel.md §6.3, byte for byte.
    expected = (
        "2026-01-01T00:00:00.000000Z\tinfo\taccess\tconnection complete\t"
        'src.addr=10.1.0.5:40000 src.workload="web-1" src.namespace="shop" '
        'src.identity="spiffe://cluster.local/ns/shop/sa/web" dst.addr=10.1.0.7:15008 dst.hbone_addr=10.1.0.7:8080 '
        'dst.service="cart.shop.svc.cluster.local" dst.workload="cart-0" dst.namespace="shop" '
        'dst.identity="spiffe://cluster.local/ns/shop/sa/cart" direction="outbound" bytes_sent=84 bytes_recv=158 '
        'duration="12ms"\n'
    )
    assert buf.getvalue() == expected


def _records() -> dict[str, Callable[[], None]]:
    """Every event shape, written by one call each; the fixtures hold the expected lines."""
    plain_inbound = ConnectionRecord(
        src_addr="10.244.2.3:51234",
        dst_addr="10.244.1.4:8080",
        direction="inbound",
        start=5.0,
        src_workload="client-7d9f",
        src_namespace="default",
        src_cluster="Kubernetes",
        dst_workload="httpbin-0",
        dst_namespace="default",
        dst_identity="spiffe://cluster.local/ns/default/sa/httpbin",  # not printed: no mTLS
        dst_cluster="Kubernetes",
        bytes_recv=10,
        bytes_sent=2000,
    )
    failed = ConnectionRecord(
        src_addr="10.244.1.4:40001",
        dst_addr="10.244.2.9:15008",
        direction="outbound",
        start=7.0,
        src_workload="",
        src_canonical_service="client",  # the log falls back to the canonical service name
        dst_service="httpbin.default.svc.cluster.local",
        response_flags="CONNECT",
        error="connection refused (os error 111)",
    )
    v6 = ConnectionRecord(src_addr=access.format_addr("fd00::1", 40000), dst_addr="[fd00::2]:80", direction="outbound")
    v6.start = 1.0
    return {
        "complete_mtls": lambda: access.log_complete(outbound_mtls(), now=100.0129),
        "complete_inbound_plaintext": lambda: access.log_complete(plain_inbound, now=6.9999),
        "complete_error": lambda: access.log_complete(failed, now=7.5),
        "opened": lambda: access.log_opened(outbound_mtls()),
        "failed_early": lambda: access.log_failed(
            "10.244.2.3:51234", "10.244.1.4:15008", "inbound", "unknown source: 10.244.2.3"
        ),
        "complete_ipv6_empty": lambda: access.log_complete(v6, now=1.0),
    }


@pytest.mark.parametrize("json_format", [False, True], ids=["plain", "json"])
def test_lines_match_fixtures(capture: Callable[[bool], io.StringIO], json_format: bool) -> None:
    buf = capture(json_format)
    for write in _records().values():
        write()
    got = buf.getvalue().splitlines()
    fixture = FIXTURES / ("access-log.json.txt" if json_format else "access-log.plain.txt")
    assert got == fixture.read_text().splitlines()


def test_levels_and_keys() -> None:
    records = _records()
    assert list(records)  # the fixture file order is the dict order
    r = outbound_mtls()
    fields = access.complete_fields(r, now=100.0)
    assert list(fields)[-1] == "duration" and fields["duration"] == "0ms"
    r.error = "boom"
    fields = access.complete_fields(r, now=100.0)
    assert list(fields)[-2:] == ["duration", "error"]
    assert list(access.failed_fields("a:1", "b:2", "inbound", "e")) == ["src.addr", "dst.addr", "direction", "error"]


def test_json_values_have_types(capture: Callable[[bool], io.StringIO]) -> None:
    buf = capture(True)
    access.log_complete(outbound_mtls(), now=100.5)
    doc = json.loads(buf.getvalue())
    assert doc["level"] == "info" and doc["scope"] == "access" and doc["message"] == "connection complete"
    assert doc["src.addr"] == "10.1.0.5:40000" and doc["bytes_sent"] == 84 and doc["duration"] == "500ms"


def test_duration_truncates_and_never_negative() -> None:
    r = ConnectionRecord("a:1", "b:2", "inbound", start=10.0)
    assert access.duration_ms(r, now=10.9999) == 999
    assert access.duration_ms(r, now=9.0) == 0


def test_disabled_levels_build_nothing(capture: Callable[[bool], io.StringIO]) -> None:
    buf = capture(False)
    logging.getLogger("access").setLevel(logging.ERROR)
    access.log_opened(outbound_mtls())
    access.log_complete(outbound_mtls(), now=101)
    access.log_failed("a:1", "b:2", "inbound", "x")
    assert buf.getvalue() == ""

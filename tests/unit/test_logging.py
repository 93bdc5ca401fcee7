from __future__ import annotations

import io
import json
import logging

from pyztunnel.observe import logging as zlog


def test_plain_line_matches_ztunnel_shape() -> None:
    buf = io.StringIO()
    zlog.setup(level="info", json_format=False, stream=buf)
    logging.getLogger("access").info(
        "connection complete", extra={"fields": {"src.addr": "10.0.0.1:5", "bytes_sent": 3}}
    )
    ts, level, target, message, fields = buf.getvalue().rstrip("\n").split("\t")
    assert ts.endswith("Z") and len(ts) == len("2026-01-01T00:00:00.000000Z")
    assert (level, target, message) == ("info", "access", "connection complete")
    assert fields == 'src.addr="10.0.0.1:5" bytes_sent=3'


def test_json_line() -> None:
    buf = io.StringIO()
    zlog.setup(level="info", json_format=True, stream=buf)
    logging.getLogger("pyztunnel.proxy.outbound").warning("x", extra={"fields": {"k": 1}})
    doc = json.loads(buf.getvalue())
    assert doc["level"] == "warn" and doc["scope"] == "proxy::outbound" and doc["message"] == "x" and doc["k"] == 1


def test_display_values_are_bare_in_plain_and_strings_in_json() -> None:
    assert zlog.format_value(zlog.Display("10.0.0.1:5")) == "10.0.0.1:5"
    assert zlog.format_value("10.0.0.1:5") == '"10.0.0.1:5"'
    buf = io.StringIO()
    zlog.setup(level="info", json_format=True, stream=buf)
    logging.getLogger("access").info("x", extra={"fields": {"src.addr": zlog.Display("10.0.0.1:5")}})
    assert json.loads(buf.getvalue())["src.addr"] == "10.0.0.1:5"

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


def test_fast_value_formatting_is_the_json_quoting() -> None:
    from pyztunnel.observe.logging import format_value

    for value in (
        "10.0.0.1:80",
        "spiffe://cluster.local/ns/a/sa/b",
        "",
        'say "hi"',
        "back\\slash",
        "tab\t",
        "é",
        "\x7f",
    ):
        assert format_value(value) == json.dumps(value), value
    assert format_value(True) == "true" and format_value(12) == "12"


def test_cached_timestamp_is_datetimes_to_the_microsecond() -> None:
    import random
    from datetime import UTC, datetime

    from pyztunnel.observe.logging import timestamp

    rng = random.Random(1)
    samples = [1796587351.8760595, 1796587351.9999996, 1.0000005, 0.5]
    samples += [rng.uniform(1.7e9, 1.9e9) for _ in range(20000)] + [1.8e9 + i * 1e-7 for i in range(20000)]
    for created in samples:
        assert timestamp(created) == datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), created


def _without_time(text: str, json_format: bool) -> object:
    if json_format:
        doc = json.loads(text)
        doc.pop("time")
        return doc
    return text.split("\t", 1)[1]


def test_log_fields_writes_the_line_logging_would() -> None:
    fields = {"src.addr": zlog.Display("10.0.0.1:5"), "dst.workload": "a b", "bytes_sent": 3, "ok": True}
    factory = logging.getLogRecordFactory()
    made: list[logging.LogRecord] = []

    def counting(*args: object, **kwargs: object) -> logging.LogRecord:
        made.append(factory(*args, **kwargs))
        return made[-1]

    for json_format in (False, True):
        buf = io.StringIO()
        zlog.setup(level="info", json_format=json_format, stream=buf)
        logger = logging.getLogger("pyztunnel.proxy.x")
        logging.setLogRecordFactory(counting)
        try:
            zlog.log_fields(logger, logging.ERROR, "connection complete", fields)
        finally:
            logging.setLogRecordFactory(factory)
        assert made == []  # the direct path: no record
        direct = buf.getvalue()
        buf.seek(0), buf.truncate()
        logger.error("connection complete", extra={"fields": fields})
        assert _without_time(direct, json_format) == _without_time(buf.getvalue(), json_format)


def test_log_fields_goes_through_logging_when_anything_else_listens() -> None:
    buf = io.StringIO()
    zlog.setup(level="info", stream=buf)
    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        zlog.log_fields(logging.getLogger("access"), logging.INFO, "connection complete", {"k": 1})
    finally:
        root.removeHandler(capture)
    assert [r.fields for r in seen] == [{"k": 1}]  # type: ignore[attr-defined]
    assert "connection complete" in buf.getvalue()
    dropped = logging.getLogger("access.filtered")
    dropped.addFilter(lambda record: False)
    zlog.log_fields(dropped, logging.INFO, "never", {})
    assert "never" not in buf.getvalue()

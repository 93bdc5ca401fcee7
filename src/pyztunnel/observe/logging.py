"""Logs in ztunnel's format (reference/ztunnel.md §6.3), for every pyztunnel process.

Plain: `<RFC3339 µs UTC>\\t<level>\\t<target>\\t<message>\\t<k=v …>`; string values Debug-quoted, numbers bare.
`LOG_FORMAT=json`: `{"level","time","scope","message",…fields}`. Structured fields are passed as
`log.info("msg", extra={"fields": {...}})` and keep their order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "error"}


class Display(str):
    """A string field ztunnel records with Display (`%`), such as `src.addr`: bare in plain logs, a string in JSON."""

    __slots__ = ()


_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}  # quoted as is by Debug and JSON alike


def format_value(value: Any) -> str:
    """A field value as ztunnel prints it: strings Debug-quoted, numbers, bools and Display values bare."""
    kind = type(value)
    if kind is str and _PLAIN.issuperset(value):  # the common case (addresses, names, identities): no escaping
        return f'"{value}"'
    if kind is bool:
        return "true" if value else "false"
    if isinstance(value, int | float | Display):
        return str(value)
    return json.dumps(str(value))


_second: tuple[int, str] = (-1, "")  # the last whole second formatted: lines of one second share it


def timestamp(created: float) -> str:
    global _second
    fraction, seconds = math.modf(created)  # datetime's own rounding: the fraction, half to even, in µs
    whole, micros = int(seconds), round(fraction * 1e6)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    if whole != _second[0]:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{micros:06d}Z"


def target_of(record: logging.LogRecord | logging.Logger) -> str:
    """ztunnel's target: `access` for access logs, the module path otherwise (pyztunnel.proxy.x → proxy::x)."""
    name = record.name
    if name.startswith("pyztunnel."):
        name = name[len("pyztunnel.") :]
    return name.replace(".", "::")


class ZtunnelFormatter(logging.Formatter):
    def __init__(self, json_format: bool = False) -> None:
        super().__init__()
        self.json_format = json_format

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
        if record.exc_info:
            fields.setdefault("error", self.formatException(record.exc_info).splitlines()[-1])
        level = _LEVELS.get(record.levelname, record.levelname.lower())
        return self.line(record.created, level, target_of(record), record.getMessage(), fields)

    def line(self, created: float, level: str, target: str, message: str, fields: dict[str, Any]) -> str:
        if self.json_format:
            doc: dict[str, Any] = {"level": level, "time": timestamp(created), "scope": target}
            doc["message"] = message
            doc.update(fields)
            return json.dumps(doc)
        line = f"{timestamp(created)}\t{level}\t{target}\t{message}"
        if fields:
            line += "\t" + " ".join(f"{k}={format_value(v)}" for k, v in fields.items())
        return line


class ZtunnelHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `setup` installs; `log_fields` writes through it directly."""

    def write_line(self, line: str) -> None:
        with self.lock or contextlib.nullcontext():
            self.stream.write(line + self.terminator)
            self.flush()


def _direct_handler(logger: logging.Logger, level: int) -> ZtunnelHandler | None:
    """Our handler, if a record of `logger` at `level` would reach it alone and unfiltered (no test's capture
    handler, no filter anywhere on the way); None otherwise."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.handlers:
            handlers = node.handlers
            if len(handlers) != 1 or type(handlers[0]) is not ZtunnelHandler or (node.propagate and node.parent):
                return None
            handler: ZtunnelHandler = handlers[0]
            return handler if not handler.filters and level >= handler.level else None
        if not node.propagate:
            return None
        node = node.parent
    return None


def log_fields(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """`logger.log(level, message, extra={"fields": fields})`, the same line, for lines written per connection: the
    record machinery (LogRecord, handler and filter calls) was half an access-log line's cost. The caller has checked
    `logger.isEnabledFor(level)`."""
    handler = _direct_handler(logger, level)
    formatter = handler.formatter if handler is not None else None
    if handler is None or type(formatter) is not ZtunnelFormatter:
        logger.log(level, message, extra={"fields": fields})
        return
    name = logging.getLevelName(level)
    line = formatter.line(time.time(), _LEVELS.get(name, name.lower()), target_of(logger), message, fields)
    try:
        handler.write_line(line)
    except Exception:  # what logging does with a failed write: report it, never raise into the caller
        handler.handleError(logging.makeLogRecord({"msg": line}))


def setup(level: str | None = None, json_format: bool | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger once per process. Level from RUST_LOG-style `LOG_LEVEL`/`RUST_LOG` if not given."""
    if json_format is None:
        json_format = os.environ.get("LOG_FORMAT", "plain").lower() == "json"
    level_name = (level or os.environ.get("LOG_LEVEL") or _rust_log_level() or "info").upper()
    level_name = {"WARN": "WARNING", "TRACE": "DEBUG", "OFF": "CRITICAL"}.get(level_name, level_name)
    # What our formatter never prints, logging need not find out for every record (the caller's frame walk,
    # thread and process names): a third of an access-log line's cost.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = ZtunnelHandler(stream or sys.stderr)
    handler.setFormatter(ZtunnelFormatter(json_format=json_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)


def _rust_log_level() -> str | None:
    """The default level of a RUST_LOG filter (`hickory_server::server=off,info` → info)."""
    spec = os.environ.get("RUST_LOG")
    if not spec:
        return None
    for part in spec.split(","):
        if "=" not in part and part.strip():
            return part.strip()
    return None

"""Logs in ztunnel's format (reference/ztunnel.md §6.3), for every pyztunnel process.

Plain: `<RFC3339 µs UTC>\\t<level>\\t<target>\\t<message>\\t<k=v …>`; string values Debug-quoted, numbers bare.
`LOG_FORMAT=json`: `{"level","time","scope","message",…fields}`. Structured fields are passed as
`log.info("msg", extra={"fields": {...}})` and keep their order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
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


def target_of(record: logging.LogRecord) -> str:
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
        message = record.getMessage()
        if record.exc_info:
            fields.setdefault("error", self.formatException(record.exc_info).splitlines()[-1])
        level = _LEVELS.get(record.levelname, record.levelname.lower())
        if self.json_format:
            doc: dict[str, Any] = {"level": level, "time": timestamp(record.created), "scope": target_of(record)}
            doc["message"] = message
            doc.update(fields)
            return json.dumps(doc)
        line = f"{timestamp(record.created)}\t{level}\t{target_of(record)}\t{message}"
        if fields:
            line += "\t" + " ".join(f"{k}={format_value(v)}" for k, v in fields.items())
        return line


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
    handler = logging.StreamHandler(stream or sys.stderr)
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

"""ztunnel access logs → connection records, sans-IO: lines in, records and skip reasons out.

Formats (reference/ztunnel.md §6.3), all from ztunnel and from pyztunnel (which writes the same):
- plain: `<RFC3339>\\t<level>\\t<target>\\t<message>\\t<k=v …>`, string values Debug-quoted (`dst.service="a.b"`) or,
  in older ztunnel versions (2024), unquoted (`dst.service=a.b`); tabs may have become spaces on the way;
- `LOG_FORMAT=json`: `{"level","time","scope","message",…fields}`.
A line may carry a prefix (`kubectl logs --prefix`'s `[pod/…] `). Only `connection complete` lines from the `access`
target make records; every other line is counted under the reason it was skipped, never raised.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

# Skip reasons (stable strings: they are printed and in --json)
OTHER_LOG = "other log line (not an access log)"
OTHER_ACCESS = "access log, not 'connection complete'"
NO_DURATION = "connection complete without a duration (truncated?)"
BAD_DURATION = "unparseable duration"
TRUNCATED = "truncated line"
BAD_JSON = "invalid JSON"
BINARY = "binary or undecodable"
UNKNOWN = "unknown format"

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?")
_HEAD = re.compile(
    r"(?P<ts>" + _TIMESTAMP.pattern + r")\s+(?P<level>[A-Za-z]+)\s+(?P<target>\S+)\s+(?P<rest>.*)$", re.S
)
_FIELD_START = re.compile(r"(?:^|\s)([A-Za-z_][\w.]*)=")
_FIELD = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|"[^\s]*|\S*)')
_FIELDS_OK = re.compile(r'(?:[A-Za-z_][\w.]*=(?:"(?:[^"\\]|\\.)*"|[^\s"]\S*|)(?:\s+|$))*')
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|us|µs|ns|m)?\s*$")
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "m": 60.0, None: 1e-3}


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    duration: float  # seconds (ztunnel logs whole milliseconds)
    service: str  # dst.service, or a stand-in when the destination had none
    direction: str
    error: str | None


class BadLine(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_duration(text: str) -> float:
    """`12ms` → 0.012. A bare number is milliseconds (ztunnel's unit)."""
    match = _DURATION.match(text)
    if match is None:
        raise BadLine(BAD_DURATION)
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _unquote(raw: str) -> str:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"') or (raw.endswith('\\"') and not raw.endswith('\\\\"')):
            raise BadLine(TRUNCATED)
        if "\\" not in raw:  # the common case: nothing to unescape
            return raw[1:-1]
        try:
            value = json.loads(raw)
        except ValueError:
            return raw[1:-1]
        return value if isinstance(value, str) else raw[1:-1]
    return raw


def parse_fields(text: str) -> dict[str, str]:
    """`k=v k2="quoted value"` → dict. An unterminated quote means the line was cut: BadLine(TRUNCATED)."""
    text = text.strip()
    if _FIELDS_OK.fullmatch(text):  # fast path: the whole line is well-formed, extract in one pass
        return {key: _unquote(raw) for key, raw in _FIELD.findall(text)}
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _FIELD.match(text, pos)
        if match is None:
            raise BadLine(TRUNCATED if pos else UNKNOWN)
        fields[match.group(1)] = _unquote(match.group(2))
        pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
    return fields


def _record(message: str, target: str, fields: dict[str, str]) -> tuple[Connection, dict[str, str]]:
    if target != "access":
        raise BadLine(OTHER_LOG)
    if message != "connection complete":
        cut = not fields and message and "connection complete".startswith(message)
        raise BadLine(TRUNCATED if cut else OTHER_ACCESS)
    raw = fields.get("duration")
    if raw is None or raw == "":
        raise BadLine(NO_DURATION)
    duration = parse_duration(raw)
    service = (
        fields.get("dst.service") or f"(no service: {fields.get('dst.workload') or fields.get('dst.addr') or '?'})"
    )
    return Connection(duration, service, fields.get("direction", ""), fields.get("error")), fields


def parse_line(line: str) -> Connection:
    """One log line → a Connection (only what the advice needs: logs can hold millions), or BadLine(reason)."""
    return parse_entry(line)[0]


def parse_entry(line: str) -> tuple[Connection, dict[str, str]]:
    """One log line → its Connection and all its fields, or BadLine(reason)."""
    if "\x00" in line or "\ufffd" in line:
        raise BadLine(BINARY)
    brace = line.find("{")
    stamp = _TIMESTAMP.search(line)
    if brace >= 0 and (stamp is None or brace < stamp.start()):
        return _parse_json(line[brace:])
    if stamp is None:
        raise BadLine(UNKNOWN)
    head = _HEAD.match(line, stamp.start())
    if head is None:
        raise BadLine(TRUNCATED if len(line) - stamp.end() < 12 else UNKNOWN)
    target = head.group("target").split(":", 1)[0]  # drop a `target:span{…}` suffix
    rest = head.group("rest")
    split = _FIELD_START.search(rest)
    if split is None:
        message, field_text = rest.strip(), ""
    else:
        message, field_text = rest[: split.start()].strip(), rest[split.start() :]
    if target != "access":
        raise BadLine(OTHER_LOG)
    return _record(message, target, parse_fields(field_text))


def _parse_json(text: str) -> tuple[Connection, dict[str, str]]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise BadLine(TRUNCATED if not text.rstrip().endswith("}") else BAD_JSON) from None
    if not isinstance(doc, dict):
        raise BadLine(BAD_JSON)
    fields = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
    target = str(doc.get("scope") or doc.get("target") or "")
    if not target or "message" not in doc:
        raise BadLine(UNKNOWN)
    return _record(str(doc["message"]), target, fields)


@dataclasses.dataclass
class ParseResult:
    connections: list[Connection] = dataclasses.field(default_factory=list)
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    lines: int = 0
    blank: int = 0


class AccessLogParser:
    """Feed lines (bytes or str); collect connections and why other lines were skipped."""

    def __init__(self) -> None:
        self.result = ParseResult()

    def feed_line(self, line: bytes | str) -> Connection | None:
        self.result.lines += 1
        if isinstance(line, bytes):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self.result.skipped[BINARY] += 1
                return None
        else:
            text = line
        text = text.rstrip("\r\n")
        if not text.strip():
            self.result.blank += 1
            return None
        try:
            connection = parse_line(text)
        except BadLine as exc:
            self.result.skipped[exc.reason] += 1
            return None
        self.result.connections.append(connection)
        return connection

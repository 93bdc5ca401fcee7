"""Go's number and duration formatting, as fortio prints them (sans-IO, pure functions).

Python's `%.6g` matches Go's, but Go's bare `%g` prints the *shortest* round-trip digits, Go's JSON writes floats
without a trailing `.0`, and Go durations print as `1m30s`. fortio's text and JSON use all three.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal


def go_g(value: float) -> str:
    """Go's `%g` with no precision: shortest round-trip digits; exponent form when exp < -4 or exp >= 6 (strconv
    decides with precision 6 for the shortest format), e.g. `0.0605556`, `99.9`, `1e+06`, `1e-05`."""
    return _shortest(value, low=-4, high=6, compact_exp=False)


def go_json_float(value: float) -> str:
    """Go's encoding/json float64: shortest digits, plain unless < 1e-6 or >= 1e21, exponent without padding."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"JSON has no representation for {value}")
    return _shortest(value, low=-6, high=21, compact_exp=True)


def _shortest(value: float, *, low: int, high: int, compact_exp: bool) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # position of the decimal point relative to the digits
    exp = point - 1
    neg = "-" if sign else ""
    if exp < low or exp >= high:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        width = "" if compact_exp else "02"
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):{width}d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{neg}{text}{'0' * (point - len(text))}"
    return f"{neg}{text[:point]}.{text[point:]}"


_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go duration (`5s`, `1m30s`, `250ms`, `0`) into seconds. Raises ValueError with a clear message."""
    raw = text.strip()
    if raw in ("0", "+0", "-0"):
        return 0.0
    body = raw.lstrip("+")
    if body.startswith("-"):
        raise ValueError(f"negative duration {text!r}")
    pos, total_ns = 0, 0.0
    while pos < len(body):
        match = _PART.match(body, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (write e.g. 5s, 1m30s, 250ms)")
        total_ns += float(match.group(1)) * _UNITS_NS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r} (write e.g. 5s, 1m30s, 250ms)")
    return total_ns / 1e9


def go_duration(seconds: float) -> str:
    """Go's `time.Duration.String()`: `0s`, `250ms`, `1.5s`, `1m0s`, `2h3m4.5s`."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    neg = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 10**9:
        for unit, size in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= size or unit == "ns":
                return neg + _trim(Decimal(ns) / Decimal(size)) + unit
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    secs = _trim(Decimal(rest) / Decimal(10**9)) + "s"
    if hours:
        return f"{neg}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{neg}{minutes}m{secs}"
    return neg + secs


def _trim(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text

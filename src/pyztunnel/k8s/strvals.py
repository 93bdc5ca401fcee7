"""Helm's `--set` syntax (helm.sh/helm pkg/strvals), the common cases, pure.

`a.b=1,c=x` sets nested keys; `a\\.b` is a key with a dot; `a[0].b=x` indexes a list (growing it with nulls);
`a={x,y}` is a list; `\\,` is a literal comma. Values are typed as Helm types them: `true`/`false` → bool, `null` →
None, a decimal integer not starting with 0 (or `0` itself) → int, anything else (floats included) → the string.
`--set-string` keeps every value a string. A malformed expression raises `ValueError` with Helm's wording.
"""

from __future__ import annotations

import re
from typing import Any

_INT = re.compile(r"^[+-]?\d+$")


def typed(text: str) -> Any:
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered == "null":
        return None
    if text == "0":
        return 0
    if text and text[0] != "0" and _INT.match(text):
        number = int(text)
        if -(2**63) <= number < 2**63:  # Go's ParseInt(…, 64); larger stays a string
            return number
    return text


class _Parser:
    def __init__(self, text: str, as_string: bool) -> None:
        self.text = text
        self.pos = 0
        self.as_string = as_string

    def _value(self, raw: str) -> Any:
        return raw if self.as_string else typed(raw)

    def _read_until(self, stops: str) -> tuple[str, str | None]:
        """Characters up to one of `stops` (backslash escapes any character); the stop found, or None at the end."""
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif char in stops:
                return "".join(out), char
            else:
                out.append(char)
        return "".join(out), None

    def parse_into(self, target: dict[str, Any]) -> None:
        while self.pos < len(self.text):
            self._key(target)

    def _key(self, target: dict[str, Any]) -> None:
        key, stop = self._read_until("=.[,")
        if stop is None:
            raise ValueError(f"key {key!r} has no value")
        if not key:
            raise ValueError(f"key with no name in {self.text!r}")
        if stop == ",":
            raise ValueError(f"key {key!r} has no value (cannot end with ,)")
        if stop == ".":
            child = target.get(key)
            if not isinstance(child, dict):
                child = {}
                target[key] = child
            self._key(child)
            return
        if stop == "[":
            current = target.get(key)
            target[key] = self._index(current if isinstance(current, list) else [])
            return
        target[key] = self._assigned()

    def _assigned(self) -> Any:
        if self.text.startswith("{", self.pos):
            self.pos += 1
            items, stop = self._read_until("}")
            if stop is None:
                raise ValueError(f"list value not closed with }} in {self.text!r}")
            if self.pos < len(self.text):
                if self.text[self.pos] != ",":
                    raise ValueError(f"unexpected data after a list in {self.text!r}")
                self.pos += 1
            return [self._value(item) for item in items.split(",")] if items else []
        raw, _stop = self._read_until(",")
        return self._value(raw)

    def _index(self, items: list[Any]) -> list[Any]:
        digits, stop = self._read_until("]")
        if stop is None or not digits.isdigit():
            raise ValueError(f"bad list index {digits!r} in {self.text!r}")
        index = int(digits)
        if index > 65536:
            raise ValueError(f"list index {index} is too large (Helm's limit is 65536)")
        items.extend([None] * (index + 1 - len(items)))
        if self.pos >= len(self.text):
            raise ValueError(f"list index {index} has no value")
        char = self.text[self.pos]
        self.pos += 1
        if char == "=":
            items[index] = self._assigned()
        elif char == ".":
            child = items[index] if isinstance(items[index], dict) else {}
            items[index] = child
            self._key(child)
        elif char == "[":
            nested = items[index] if isinstance(items[index], list) else []
            items[index] = self._index(nested)
        else:
            raise ValueError(f"unexpected {char!r} after list index {index}")
        return items


def parse_into(expression: str, target: dict[str, Any], as_string: bool = False) -> None:
    """Apply one `--set` expression (it may hold several comma-separated assignments) to `target`."""
    _Parser(expression, as_string).parse_into(target)

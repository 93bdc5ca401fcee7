"""Label and field selectors as the API server parses them (`app=ztunnel,tier!=web`, `env in (a,b)`, `!key`;
fields: `metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`, with `=`, `==`, `!=`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pyztunnel.kubeapi.errors import ApiError

Matcher = Callable[[dict[str, Any]], bool]

_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_CMP = re.compile(r"^\s*([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")
FIELDS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "spec.nodeName": ("spec", "nodeName"),
    "status.phase": ("status", "phase"),
}


def _split_terms(text: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur)
    return [t for t in terms if t.strip()]


def _label_check(term: str) -> Callable[[dict[str, str]], bool]:
    if m := _SET.match(term):
        key, op = m.group(1), m.group(2)
        values = {v.strip() for v in m.group(3).split(",") if v.strip()}
        negate = op == "notin"
        return lambda labels: (labels.get(key) in values) != negate
    if m := _CMP.match(term):
        key, op, value = m.group(1), m.group(2), m.group(3)
        negate = op == "!="
        return lambda labels: (labels.get(key) == value) != negate
    if m := _EXISTS.match(term):
        neg, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != neg
    raise ApiError(400, "BadRequest", f"unable to parse requirement: {term.strip()!r}")


def label_matcher(text: str | None) -> Matcher:
    if not text:
        return lambda _o: True
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(text):
        checks.append(_label_check(term))

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return match


def selector_matcher(selector: dict[str, Any] | None) -> Matcher:
    """A LabelSelector object (matchLabels, matchExpressions)."""
    if not selector:
        return lambda _o: False  # an empty PDB/DS selector selects nothing here
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op = expr.get("operator")
        values = ",".join(expr.get("values") or [])
        if op == "In":
            terms.append(f"{expr['key']} in ({values})")
        elif op == "NotIn":
            terms.append(f"{expr['key']} notin ({values})")
        elif op == "Exists":
            terms.append(expr["key"])
        elif op == "DoesNotExist":
            terms.append(f"!{expr['key']}")
    return label_matcher(",".join(terms))


def field_matcher(text: str | None, plural: str) -> Matcher:
    if not text:
        return lambda _o: True
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_terms(text):
        m = _CMP.match(term)
        if m is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term.strip()!r}")
        field, op, value = m.group(1), m.group(2), m.group(3)
        path = FIELDS.get(field)
        if path is None or (plural != "pods" and path[0] in ("spec", "status")):
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")

        def check(obj: dict[str, Any], p: tuple[str, str] = path, v: str = value, neg: bool = op == "!=") -> bool:
            got = (obj.get(p[0]) or {}).get(p[1]) or ""
            return (got == v) != neg

        checks.append(check)
    return lambda obj: all(c(obj) for c in checks)

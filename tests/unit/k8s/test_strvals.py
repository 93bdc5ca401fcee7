"""Helm's --set syntax (pkg/strvals), the cases the docs use; `helm template` agrees on them (test_helm_parity)."""

from __future__ import annotations

from typing import Any

import pytest

from pyztunnel.k8s import strvals


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("a=b", {"a": "b"}),
        ("a.b.c=1", {"a": {"b": {"c": 1}}}),
        (
            "a=1,b=true,c=False,d=null,e=0,f=007,g=1.5,h=",
            {"a": 1, "b": True, "c": False, "d": None, "e": 0, "f": "007", "g": "1.5", "h": ""},
        ),
        (r"podAnnotations.prometheus\.io/scrape=false", {"podAnnotations": {"prometheus.io/scrape": False}}),
        (r"a=x\,y", {"a": "x,y"}),
        ("list={a,2,true}", {"list": ["a", 2, True]}),
        ("list={}", {"list": []}),
        ("t[0].key=k,t[0].operator=Exists", {"t": [{"key": "k", "operator": "Exists"}]}),
        ("t[1]=x", {"t": [None, "x"]}),
        ("m[0][1]=x", {"m": [[None, "x"]]}),
        ("a.b=1,a.c=2", {"a": {"b": 1, "c": 2}}),
        ("big=99999999999999999999", {"big": "99999999999999999999"}),
    ],
)
def test_parse(expression: str, expected: dict[str, Any]) -> None:
    target: dict[str, Any] = {}
    strvals.parse_into(expression, target)
    assert target == expected


def test_set_string_keeps_strings() -> None:
    target: dict[str, Any] = {}
    strvals.parse_into("a=1,b=true,c={1,2}", target, as_string=True)
    assert target == {"a": "1", "b": "true", "c": ["1", "2"]}


def test_a_later_set_overwrites_and_replaces_a_map() -> None:
    target: dict[str, Any] = {"a": {"b": 1}, "keep": 1}
    strvals.parse_into("a.c=2", target)
    strvals.parse_into("keep.x=1", target)
    assert target == {"a": {"b": 1, "c": 2}, "keep": {"x": 1}}


@pytest.mark.parametrize(
    "expression", ["a", "a.b", "a,b=1", "=1", "t[x]=1", "t[0", "t[0]", "l={a,b", "l={a}x", "t[99999]=1"]
)
def test_malformed_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        strvals.parse_into(expression, {})

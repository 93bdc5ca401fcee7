"""`--key=value` flags of a benchmark over its defaults (and over its `--quick` ones); a bare `--flag` is "true"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def parse(
    args: list[str], name: str, defaults: Mapping[str, str], quick: Mapping[str, str], known: Sequence[str], usage: str
) -> dict[str, str]:
    chosen = {**defaults, **(quick if "--quick" in args else {})}
    for arg in args:
        key, _, value = arg.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if key not in known:
            raise SystemExit(f"error: unknown flag {arg!r}; bench_{name} takes {usage}")
        chosen[key] = value or "true"
    return chosen

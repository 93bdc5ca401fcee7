"""The LOCAL_XDS_PATH source: ztunnel's local YAML config, validated, errors as `FILE:LINE: what`.

The YAML is parsed twice from the same text: once into nodes, to know the line of every path, and once into Python
values (with `!Exact`/`!Prefix`/`!Suffix`/`!Presence` tags turned into single-key maps). A validation error's path is
then looked up to report the line the user has to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pyztunnel.workloads.model import LocalConfig

_TAGS = ("Exact", "Prefix", "Suffix", "Presence")


class ConfigError(Exception):
    """A config file that cannot be used; the message is `FILE:LINE: what is wrong`."""


class _Loader(yaml.SafeLoader):
    pass


def _tagged(tag: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        value: Any = loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None
        return {tag: value}

    return construct


for _tag in _TAGS:
    _Loader.add_constructor(f"!{_tag}", _tagged(_tag))


def _lines(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """Map every path (keys and list indices as strings) to the 1-based line where it starts."""
    out.setdefault(path, node.start_mark.line + 1)
    children: list[tuple[str, yaml.Node, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        children = [(str(k.value), k, v) for k, v in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = [(str(i), item, item) for i, item in enumerate(node.value)]
    for name, at, value in children:
        child = (*path, name)
        out[child] = at.start_mark.line + 1
        _lines(value, child, out)


def _line_of(loc: tuple[Any, ...], lines: dict[tuple[str, ...], int]) -> int:
    """The line of the longest prefix of a pydantic error location that the YAML has."""
    path = tuple(str(p) for p in loc)
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def parse(text: str, source: str) -> LocalConfig:
    """Parse and validate config text; `source` names it in errors. Raises ConfigError."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{line}: invalid YAML: {problem}") from None
    if data is None:
        return LocalConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping with workloads, services, policies")
    lines: dict[tuple[str, ...], int] = {}
    if root is not None:
        _lines(root, (), lines)
    try:
        return LocalConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = _line_of(loc, lines)
        where = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            what = f"unknown field {loc[-1]!r}" + (f" in {'.'.join(str(p) for p in loc[:-1])}" if len(loc) > 1 else "")
        else:
            what = f"{where}: {err['msg']}"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}:{line}: {what}{more}") from None


def load(path: Path) -> LocalConfig:
    """Read and validate a LOCAL_XDS_PATH file. Raises ConfigError (also for an unreadable file)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}:0: cannot read: {exc.strerror}") from None
    return parse(text, str(path))

"""The LOCAL_XDS_PATH source: ztunnel's local YAML config, validated, errors as `FILE:LINE: what`.

The YAML is read by the project's one bounded loader (`yamlfile`: size, depth, alias expansion), which also records the
line of every path; `!Exact`/`!Prefix`/`!Suffix`/`!Presence` tags become single-key maps. A validation error's path is
then looked up to report the line the user has to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pyztunnel import yamlfile
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


def parse(text: str, source: str) -> LocalConfig:
    """Parse and validate config text; `source` names it in errors. Raises ConfigError."""
    try:
        data, lines = yamlfile.load_with_lines(text, _Loader)
    except yamlfile.YamlError as exc:
        raise ConfigError(f"{source}:{exc.line}: {exc.message}") from None
    if data is None:
        return LocalConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping with workloads, services, policies")
    try:
        return LocalConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = yamlfile.line_of(lines, loc)
        where = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            what = f"unknown field {loc[-1]!r}" + (f" in {'.'.join(str(p) for p in loc[:-1])}" if len(loc) > 1 else "")
        else:
            what = f"{where}: {err['msg']}"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}:{line}: {what}{more}") from None


def load(path: Path, max_bytes: int = yamlfile.MAX_BYTES) -> LocalConfig:
    """Read and validate a LOCAL_XDS_PATH file. Raises ConfigError (also for an unreadable file)."""
    return parse(read(path, max_bytes), str(path))


def read(path: Path, max_bytes: int = yamlfile.MAX_BYTES) -> str:
    """A LOCAL_XDS_PATH file's text (bounded, strict UTF-8). Raises ConfigError."""
    return decode(read_bytes(path, max_bytes), path)


def read_bytes(path: Path, max_bytes: int = yamlfile.MAX_BYTES) -> bytes:
    try:
        return yamlfile.read_bytes(path, max_bytes)
    except OSError as exc:
        raise ConfigError(f"{path}:0: cannot read: {exc.strerror}") from None
    except yamlfile.YamlError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}") from None


def decode(data: bytes, path: Path) -> str:
    try:
        return yamlfile.decode(data)
    except yamlfile.YamlError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}") from None

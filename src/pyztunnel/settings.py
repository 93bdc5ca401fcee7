"""Every setting is declared once: name, type, default, environment variable, help.

A component declares its settings as a frozen dataclass whose fields are made with `setting(...)`. From that one
declaration come the component's CLI flags (`cli_options`), its environment variables and its YAML config keys
(`load`), and the documentation (`pyztunnel settings`). Precedence: command line > environment > YAML file > default.

A setting also declares what values it takes: its type (int, float, a `Duration`, bool, a path, a list), `choices`,
and for numbers their bounds (`ge`, `gt`, `le`). Every source is checked against that one declaration — a flag while
the command line is parsed (before the command runs), the environment and the file in `load` — and a bad value is one
line naming its source, exit 2. A path given as an empty string is unset where the setting is optional, refused
where it is not.
Where ztunnel has a name for a setting, the environment variable is ztunnel's name (reference/ztunnel.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from pyztunnel import yamlfile
from pyztunnel.errors import UserError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_META_KEY = "pyztunnel.setting"
_GROUPS: dict[str, type[Any]] = {}


class Duration(float):
    """Seconds. Written as ztunnel writes durations: `25s`, `100ms`, `5m`, `1h`, or a bare number of seconds."""

    _UNITS: typing.ClassVar[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    _PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")

    @classmethod
    def parse(cls, text: str | float | int) -> Duration:
        if isinstance(text, int | float):
            return cls(float(text))
        match = cls._PATTERN.match(text)
        if match is None:
            raise ValueError(f"not a duration: {text!r} (write e.g. 25s, 100ms, 5m)")
        return cls(float(match.group(1)) * cls._UNITS[match.group(2) or "s"])

    def __str__(self) -> str:
        return f"{float(self):g}s"


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    help: str
    env: str | None = None
    choices: tuple[str, ...] | None = None
    empty_is_set: bool = False  # an empty environment value is a value (ztunnel's XDS_ADDRESS="": off), not "unset"
    ge: float | None = None  # numbers: at least
    gt: float | None = None  # numbers: more than
    le: float | None = None  # numbers: at most

    def bounds(self) -> str:
        """The bounds in words, for the help ("", "≥ 0", "> 0, ≤ 10")."""
        parts = [f"{sign} {v:g}" for sign, v in (("≥", self.ge), (">", self.gt), ("≤", self.le)) if v is not None]
        return ", ".join(parts)

    def check_bounds(self, value: float) -> None:
        if self.ge is not None and value < self.ge:
            raise ValueError(f"must be at least {self.ge:g}, not {value:g}")
        if self.gt is not None and value <= self.gt:
            raise ValueError(f"must be more than {self.gt:g}, not {value:g}")
        if self.le is not None and value > self.le:
            raise ValueError(f"must be at most {self.le:g}, not {value:g}")


def setting(
    default: T,
    help: str,
    *,
    env: str | None = None,
    choices: tuple[str, ...] | None = None,
    empty_is_set: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> T:
    """Declare one setting (a dataclass field). `env` is the environment variable that sets it; `choices` the values
    it takes; `ge`/`gt`/`le` the bounds of a number."""
    info = SettingInfo(help=help, env=env, choices=choices, empty_is_set=empty_is_set, ge=ge, gt=gt, le=le)
    if isinstance(default, list | dict):
        factory: Any = lambda: type(default)(default)  # noqa: E731 - mutable defaults need a factory
        field: Any = dataclasses.field(default_factory=factory, metadata={_META_KEY: info})
        return typing.cast(T, field)
    plain: Any = dataclasses.field(default=default, metadata={_META_KEY: info})
    return typing.cast(T, plain)


def group(name: str) -> Callable[[type[T]], type[T]]:
    """Register a settings dataclass under a name, so `pyztunnel settings` can list it."""

    def register(cls: type[T]) -> type[T]:
        _GROUPS[name] = cls
        return cls

    return register


@dataclasses.dataclass(frozen=True)
class Declared:
    name: str
    type: Any
    default: Any
    info: SettingInfo

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def yaml_key(self) -> str:
        head, *rest = self.name.split("_")
        return head + "".join(part.capitalize() for part in rest)


def declared(cls: type[Any]) -> list[Declared]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get(_META_KEY)
        if info is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        out.append(Declared(f.name, hints[f.name], default, info))
    return out


def _base_type(tp: Any) -> Any:
    """The non-None member of `X | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members[0]
    return tp


def optional(decl: Declared) -> bool:
    return typing.get_origin(decl.type) in (typing.Union, types.UnionType) and type(None) in typing.get_args(decl.type)


def numeric(decl: Declared) -> bool:
    return _base_type(decl.type) in (int, float, Duration)


def convert(decl: Declared, value: Any) -> Any:
    """Turn a raw value (a string from the environment, a YAML scalar, a CLI value) into the declared type, checked
    against the declaration (choices, bounds). ValueError says what is wrong."""
    if value is None:
        return None
    converted = _convert(decl, value)
    if numeric(decl) and converted is not None:
        decl.info.check_bounds(converted)
    return converted


def _convert(decl: Declared, value: Any) -> Any:
    tp = _base_type(decl.type)
    if decl.info.choices is not None and str(value) not in decl.info.choices:
        raise ValueError(f"must be one of {', '.join(decl.info.choices)}, not {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r} (write true or false)")
    if tp is Duration:
        if isinstance(value, bool):
            raise ValueError(f"not a duration: {value!r} (write e.g. 25s, 100ms, 5m)")
        return Duration.parse(value)
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"not an integer: {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"not an integer: {value!r}") from None
    if tp is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"not a number: {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"not a finite number: {value!r}")
        return number
    if tp is Path:
        if str(value) == "":
            if optional(decl):
                return None
            raise ValueError("must not be empty (give a path)")
        return Path(value)
    if tp is str:
        return str(value)
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            return [v for v in (p.strip() for p in value.split(",")) if v]
        return list(value)
    return value


def load(
    cls: type[T],
    cli: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build a settings object: command line > environment > YAML file > default. Bad values raise UserError."""
    environ = os.environ if environ is None else environ
    cli = cli or {}
    from_file: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yamlfile.load(yamlfile.read_text(config_file)) or {}
        except OSError as exc:
            raise UserError(f"{config_file}: cannot read settings: {exc.strerror or exc}") from None
        except yamlfile.YamlError as exc:
            raise UserError(f"{config_file}:{exc.line}: {exc.message}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{config_file}: settings must be a mapping of name: value")
        from_file = loaded
    decls = declared(cls)
    known = {d.yaml_key for d in decls} | {d.name for d in decls}
    unknown = sorted(set(from_file) - known)
    if unknown:
        raise UserError(f"{config_file}: unknown setting {unknown[0]!r} (see 'pyztunnel settings')")
    values: dict[str, Any] = {}
    for decl in decls:
        source, raw = "default", decl.default
        file_value = from_file.get(decl.yaml_key, from_file.get(decl.name))
        if file_value is not None:
            source, raw = f"{config_file}: {decl.yaml_key}", file_value
        env_value = environ.get(decl.info.env) if decl.info.env else None
        if env_value is not None and (env_value != "" or decl.info.empty_is_set):
            source, raw = f"environment {decl.info.env}", env_value
        if cli.get(decl.name) is not None:
            source, raw = decl.flag, cli[decl.name]
        try:
            values[decl.name] = convert(decl, raw)
        except ValueError as exc:
            raise UserError(f"{source}: {exc}") from None
    return cls(**values)


class SettingType(click.ParamType[Any]):
    """A flag's value, converted and checked by its declaration while the command line is parsed: a bad value stops
    the command before it runs, in one line (`Invalid value for '--grace': must be at least 0, not -5`)."""

    def __init__(self, decl: Declared) -> None:
        self.decl = decl
        tp = _base_type(decl.type)
        self.name = "duration" if tp is Duration else getattr(tp, "__name__", "value").lower()

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        if self.decl.info.choices:
            return "[" + "|".join(self.decl.info.choices) + "]"
        return self.name.upper()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return convert(self.decl, value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def cli_options(cls: type[Any]) -> Callable[[F], F]:
    """Click options for every setting of `cls`; their values arrive as keyword arguments (None when not given),
    already converted and checked (see `SettingType`)."""

    def decorate(func: F) -> F:
        for decl in reversed(declared(cls)):
            tp = _base_type(decl.type)
            env_note = f" [env {decl.info.env}]" if decl.info.env else ""
            bounds = f"; {decl.info.bounds()}" if decl.info.bounds() else ""
            help_text = f"{decl.info.help} (default: {_show(decl.default)}{bounds}){env_note}"
            if tp is bool:
                flag = decl.flag
                option = click.option(f"{flag}/--no-{flag[2:]}", decl.name, default=None, help=help_text)
            else:
                option = click.option(decl.flag, decl.name, type=SettingType(decl), default=None, help=help_text)
            func = option(func)
        return func

    return decorate


def _show(value: Any) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def groups() -> Mapping[str, type[Any]]:
    return dict(_GROUPS)


def describe(cls: type[Any]) -> list[tuple[str, str, str, str]]:
    """(flag, env, default, help) rows for documentation."""
    return [
        (d.flag, d.info.env or "", _show(d.default) + (f"; {d.info.bounds()}" if d.info.bounds() else ""), d.info.help)
        for d in declared(cls)
    ]

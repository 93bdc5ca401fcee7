"""Every flag and argument of every command, and every setting's environment variable, given bad values (issue 11,
item 13: `upgrade --grace -5` gave a traceback): one line, exit 2, and the command never runs.

The values are generated from the declarations — the click command tree as `pyztunnel` builds it and the settings'
types and bounds (`settings.setting(..., ge=, gt=, le=, choices=)`) — so a flag added later is covered without
touching this file. A number must declare its lower bound: one without it is a failure here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from pyztunnel import cli, settings
from pyztunnel.errors import UserError

NUMBERS = (click.types.IntParamType, click.types.FloatParamType)


def commands(
    group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from commands(command, ctx, (*path, name))
        else:
            yield (*path, name), command


ROOT_CTX = click.Context(cli.cli)
COMMANDS = dict(commands(cli.cli, ROOT_CTX))


def bad_values(param: click.Parameter) -> list[str]:
    """Values this parameter must refuse, from what it declares."""
    kind = param.type
    if isinstance(kind, settings.SettingType):
        decl = kind.decl
        info = decl.info
        if info.choices:
            return ["bogus", ""]
        if settings.numeric(decl):
            assert info.ge is not None or info.gt is not None, f"{decl.flag}: a number must declare its lower bound"
            out = ["abc", "", "-5"]
            if info.ge is not None:
                out.append(f"{info.ge - 1:g}")
            if info.gt is not None:
                out.append(f"{info.gt:g}")
            if info.le is not None:
                out.append(f"{info.le + 1:g}")
            return list(dict.fromkeys(out))
        if settings._base_type(decl.type) is Path and not settings.optional(decl):
            return [""]
        return []
    if isinstance(kind, click.Choice):
        return ["bogus"]
    if isinstance(kind, click.types._NumberRangeBase):
        assert kind.min is not None, f"{param.name}: a number must declare its lower bound"
        return ["abc", "", str(kind.min - 1 if not kind.min_open else kind.min)]
    if isinstance(kind, NUMBERS):
        raise AssertionError(f"{param.name}: a number without bounds (use click.IntRange/FloatRange or a setting)")
    return []


def good_value(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, click.types._NumberRangeBase):
        return str(kind.min if kind.min is not None and not kind.min_open else 1)
    return "x"


@dataclass(frozen=True)
class Case:
    command: tuple[str, ...]
    param: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(self.argv)


def cases() -> list[Case]:
    out = []
    for path, command in COMMANDS.items():
        if command.hidden:
            continue
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        for param in command.params:
            if isinstance(param, click.Option) and param.is_flag:
                continue
            for value in bad_values(param):
                argv: list[str] = [*path]
                if isinstance(param, click.Option):
                    argv += [param.opts[0], value]
                for arg in arguments:
                    if arg.nargs == -1 and arg.type == click.UNPROCESSED:
                        continue
                    argv.append(value if arg is param else good_value(arg))
                out.append(Case(path, str(param.name), tuple(argv)))
    return out


CASES = cases()


def test_the_walk_covers_the_commands_of_the_issue() -> None:
    walked = {c.command[0] for c in CASES}
    assert {"upgrade", "cluster", "proxy"} <= walked
    assert any(c.argv[:3] == ("upgrade", "--grace", "-5") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_bad_flag_is_one_line_and_exit_2(
    case: Case, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[Any] = []
    for command in COMMANDS.values():  # no command may run: the value must be refused while parsing
        monkeypatch.setattr(command, "callback", lambda *a, **kw: ran.append(kw))
    with pytest.raises(SystemExit) as exited:
        cli.main(list(case.argv))
    err = capsys.readouterr().err
    assert not ran, f"{case} ran the command"
    assert exited.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


def env_cases() -> list[tuple[str, str, str]]:
    out = []
    for group_name, cls in sorted(settings.groups().items()):
        for decl in settings.declared(cls):
            if decl.info.env is None:
                continue
            option = click.Option([decl.flag], type=settings.SettingType(decl))
            kind = settings._base_type(decl.type)
            values = [v for v in bad_values(option) if v != ""]  # an empty variable is an unset one
            if kind is bool:
                values = ["maybe"]
            out += [(group_name, decl.info.env, v) for v in values]
    return out


ENV_CASES = env_cases()


def test_the_environment_walk_covers_the_proxy() -> None:
    assert {"TERMINATION_GRACE_PERIOD_SECONDS", "PYZTUNNEL_CONFIG_POLL", "LOCAL_XDS_PATH"} & {
        e for _, e, _ in ENV_CASES
    }


@pytest.mark.parametrize(("group", "env", "value"), ENV_CASES)
def test_a_bad_environment_variable_is_one_line(group: str, env: str, value: str) -> None:
    with pytest.raises(UserError) as info:
        settings.load(settings.groups()[group], environ={env: value})
    assert str(info.value).startswith(f"environment {env}: ") and "\n" not in str(info.value)


def test_as_a_user_runs_them() -> None:
    """The issue's commands, as processes: one line on stderr, exit 2."""
    for argv, env in (
        (["upgrade", "--version", "2", "--grace", "-5"], {}),
        (["proxy"], {"TERMINATION_GRACE_PERIOD_SECONDS": "-5"}),
        (["proxy"], {"PYZTUNNEL_CONFIG_POLL": "0s"}),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "pyztunnel", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (argv, env, out.stderr)

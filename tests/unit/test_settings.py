from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pyztunnel import settings
from pyztunnel.errors import UserError
from pyztunnel.settings import Duration, setting


@dataclasses.dataclass(frozen=True)
class Example:
    grace: int = setting(30, "grace period", env="TERMINATION_GRACE_PERIOD_SECONDS")
    deadline: Duration | None = setting(None, "drain deadline", env="CONNECTION_TERMINATION_DEADLINE")
    handoff: bool = setting(True, "listener handoff", env="PYZTUNNEL_LISTENER_HANDOFF")
    mode: str = setting("plain", "log format", env="LOG_FORMAT", choices=("plain", "json"))


def test_defaults() -> None:
    assert settings.load(Example, environ={}) == Example(30, None, True, "plain")


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("grace: 40\nhandoff: false\n")
    env = {"TERMINATION_GRACE_PERIOD_SECONDS": "50"}
    assert settings.load(Example, config_file=f, environ={}).grace == 40
    assert settings.load(Example, config_file=f, environ=env).grace == 50
    assert settings.load(Example, cli={"grace": 60}, config_file=f, environ=env).grace == 60
    assert settings.load(Example, config_file=f, environ={}).handoff is False


def test_durations() -> None:
    assert Duration.parse("25s") == 25.0
    assert Duration.parse("100ms") == pytest.approx(0.1)
    assert Duration.parse("2m") == 120.0
    with pytest.raises(ValueError):
        Duration.parse("soon")
    s = settings.load(Example, environ={"CONNECTION_TERMINATION_DEADLINE": "7s"})
    assert s.deadline == 7.0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"TERMINATION_GRACE_PERIOD_SECONDS": "thirty"},
            "environment TERMINATION_GRACE_PERIOD_SECONDS: not an integer",
        ),
        ({"PYZTUNNEL_LISTENER_HANDOFF": "maybe"}, "not a boolean"),
        ({"LOG_FORMAT": "xml"}, "must be one of plain, json"),
    ],
)
def test_bad_values_name_their_source(environ: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        settings.load(Example, environ=environ)


def test_unknown_yaml_key(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("gracePeriod: 3\n")
    with pytest.raises(UserError, match="unknown setting 'gracePeriod'"):
        settings.load(Example, config_file=f, environ={})


def test_cli_options_are_generated() -> None:
    seen: dict[str, object] = {}

    @click.command()
    @settings.cli_options(Example)
    def cmd(**kwargs: object) -> None:
        seen.update(kwargs)

    result = CliRunner().invoke(cmd, ["--grace", "9", "--no-handoff"])
    assert result.exit_code == 0, result.output
    assert seen == {"grace": 9, "deadline": None, "handoff": False, "mode": None}
    assert settings.load(Example, cli=seen, environ={}).handoff is False
    help_text = CliRunner().invoke(cmd, ["--help"]).output
    assert "TERMINATION_GRACE_PERIOD_SECONDS" in help_text

"""The `pyztunnel` command: one click group. Subcommands are thin and live next to the code they drive.

Subcommands are imported only when used, so `pyztunnel load` does not pay for grpc or matplotlib, and one broken
component cannot stop the others' commands from starting.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from pyztunnel import __version__, settings
from pyztunnel.commands import SUBCOMMANDS
from pyztunnel.errors import UserError


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module_name, attr, purpose = SUBCOMMANDS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("pyztunnel"):
                return _unavailable(cmd_name, purpose, str(exc))
            raise
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, purpose: str, why: str) -> click.Command:
    def run() -> None:
        raise UserError(f"'pyztunnel {name}' is not available in this build ({why})")

    return click.Command(name, callback=run, help=purpose)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyztunnel")
def cli() -> None:
    """pyztunnel: a ztunnel-compatible node proxy for ambient meshes whose upgrades lose nothing."""


@click.command("settings")
def show_settings() -> None:
    """List every setting: flag, environment variable, default, help."""
    for module_name, _attr, _purpose in SUBCOMMANDS.values():
        try:
            importlib.import_module(module_name)  # importing registers the module's settings groups
        except ModuleNotFoundError:
            continue
    for name, cls in sorted(settings.groups().items()):
        click.echo(f"[{name}]")
        for flag, env, default, help_text in settings.describe(cls):
            env_text = f"  env {env}" if env else ""
            click.echo(f"  {flag}  (default {default}){env_text}\n      {help_text}")


def one_line(exc: click.ClickException) -> str:
    """Click's message for a bad command line in one line (not its usage block), with where to read more."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{message} (see '{ctx.command_path} --help')"
    return message


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="pyztunnel", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException:
        logging.getLogger("pyztunnel").exception("unexpected error")
        sys.exit(1)

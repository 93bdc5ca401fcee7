"""`pyztunnel load`: fortio's `load` command line, output and JSON."""

from __future__ import annotations

import datetime
import os
import sys

import click

from pyztunnel.errors import UserError
from pyztunnel.load import render
from pyztunnel.load.options import FlagError, LoadOptions, parse_args, usage
from pyztunnel.load.run import RunAborted, run_load


@click.command(
    "load",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def load(args: tuple[str, ...]) -> None:
    """fortio-compatible load generator (HTTP/1.1 and TCP echo). Flags as fortio: -qps -c -t -n -timeout -H -json …"""
    try:
        options = parse_args(list(args))
    except FlagError as exc:
        raise UserError(str(exc)) from None
    if options is None:
        click.echo(usage())
        return
    sys.exit(execute(options))


def execute(options: LoadOptions) -> int:
    out = sys.stdout
    json_to_stdout = options.json_path == "-"
    text = sys.stderr if json_to_stdout else out  # keep stdout pure JSON
    started_at = datetime.datetime.now(datetime.UTC)
    procs = options.worker_count()
    if not options.quiet:
        for line in render.header_lines(options, procs, os.cpu_count() or 1):
            print(line, file=text, flush=True)
    try:
        stats = run_load(options)
    except RunAborted as exc:
        print(f"Aborting because of {exc}", file=sys.stderr)
        return 1
    for line in render.text_report(options, stats):
        print(line, file=text)
    if options.json_path:
        document = render.go_json(render.result_json(options, stats, started_at)) + "\n"
        if json_to_stdout:
            out.write(document)
        else:
            try:
                with open(options.json_path, "w") as f:
                    f.write(document)
            except OSError as exc:
                raise UserError(f"cannot write the JSON result to {options.json_path}: {exc.strerror}") from None
            print(f"Successfully wrote {len(document)} bytes of Json data to {options.json_path}", file=text)
    text.flush()
    return 0

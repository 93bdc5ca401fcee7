"""`pyztunnel k8s …`: Kubernetes. `manifests` renders the chart's objects (deploy/chart) without Helm."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pyztunnel import yamlfile
from pyztunnel.errors import UserError
from pyztunnel.k8s import manifests, strvals
from pyztunnel.k8s.values import effective, merge_overwrite

MAX_VALUES_BYTES = 4 * 1024 * 1024  # a values file is a few KiB; a bound, so a wrong file cannot eat the memory


def read_values_file(name: str) -> dict[str, Any]:
    """One `-f` file (`-` is standard input), as Helm reads it: a YAML mapping (empty = nothing)."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_VALUES_BYTES + 1)
            if len(data) > MAX_VALUES_BYTES:
                raise yamlfile.YamlError(1, f"larger than {MAX_VALUES_BYTES // (1024 * 1024)} MiB")
            text = yamlfile.decode(data)
        else:
            text = yamlfile.read_text(Path(name), MAX_VALUES_BYTES)
        loaded = yamlfile.load(text)  # bounded: depth, alias expansion; errors at their line
    except OSError as exc:
        raise UserError(f"{name}: cannot read values: {exc.strerror or exc}") from None
    except yamlfile.YamlError as exc:
        raise UserError(f"{name}:{exc.line}: {exc.message}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{name}: values must be a mapping of name: value, not {type(loaded).__name__}")
    return loaded


def user_values(files: tuple[str, ...], sets: tuple[str, ...], set_strings: tuple[str, ...]) -> dict[str, Any]:
    """Helm's order: the -f files in turn, then every --set, then every --set-string (later wins)."""
    merged: dict[str, Any] = {}
    for name in files:
        merge_overwrite(merged, read_values_file(name))
    for expressions, as_string in ((sets, False), (set_strings, True)):
        for expression in expressions:
            try:
                strvals.parse_into(expression, merged, as_string=as_string)
            except ValueError as exc:
                raise UserError(f"--set {expression}: {exc}") from None
    return merged


@click.group("k8s")
def k8s() -> None:
    """Kubernetes: pyztunnel as Istio's ztunnel DaemonSet (docs/kubernetes.md)."""


@k8s.command("manifests")
@click.option("-f", "--values", "files", multiple=True, metavar="FILE", help="values file (Helm's -f; - = stdin)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="a value, Helm's --set syntax (a.b=1,c=x)")
@click.option("--set-string", "set_strings", multiple=True, metavar="KEY=VALUE", help="as --set, values as strings")
@click.option("-n", "--namespace", default="istio-system", show_default=True, help="namespace of the objects")
def manifests_command(
    files: tuple[str, ...], sets: tuple[str, ...], set_strings: tuple[str, ...], namespace: str
) -> None:
    """Print the chart's objects (ServiceAccount, DaemonSet) as `helm template ztunnel deploy/chart` would.

    The values are Istio's ztunnel chart's (a Sail ZTunnel CR's values.ztunnel and values.global apply unchanged);
    pipe into `kubectl apply -f -`.
    """
    values = effective(user_values(files, sets, set_strings))
    click.echo(manifests.dump(manifests.render(values, namespace)), nl=False)

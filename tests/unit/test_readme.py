"""The README's examples stay true: its spec example is a valid cluster spec, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from pyztunnel.cluster import spec
from pyztunnel.commands import SUBCOMMANDS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join(README.read_text().splitlines()[:8])
    assert "make demo" in head and "make test" in head


def test_readme_spec_example_is_a_valid_spec() -> None:
    block = re.search(r"```yaml\n(nodes:.*?)```", README.read_text(), re.S)
    assert block is not None
    loaded = spec.parse(block.group(1), "README.md example")
    assert {d.name for d in loaded.spec.deployments} == {"web", "client"}
    assert loaded.spec.policies and loaded.spec.policies[0]["action"] == "Deny"


def test_every_command_in_the_readme_table_exists() -> None:
    named = set(re.findall(r"^\| `pyztunnel ([a-z0-9-]+)", README.read_text(), re.M))
    assert named, "the commands table lists pyztunnel subcommands"
    assert named <= set(SUBCOMMANDS), named - set(SUBCOMMANDS)

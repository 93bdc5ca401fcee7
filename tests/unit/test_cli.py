from __future__ import annotations

import subprocess
import sys

from pyztunnel import __version__
from pyztunnel.commands import SUBCOMMANDS


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyztunnel", *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_subcommand_with_its_purpose() -> None:
    out = run("--help")
    assert out.returncode == 0
    for name, (_module, _attr, purpose) in SUBCOMMANDS.items():
        assert name in out.stdout
        assert purpose[:30] in " ".join(out.stdout.split())


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert __version__ in out.stdout


def test_bad_flag_is_one_line_and_exit_2() -> None:
    out = run("--no-such-flag")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr

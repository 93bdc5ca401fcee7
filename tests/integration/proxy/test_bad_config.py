"""A LOCAL_XDS_PATH file the proxy cannot use at start (issue 11, item 12): one line naming FILE:LINE, exit 2 — not
"unexpected error RecursionError", exit 1. (While it runs, a bad file keeps the last good config: test_bad_yaml.py.)"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.integration.proxy.harness import loopback_ips
from tests.unit.test_bad_yaml import BAD, write

TOO_BIG = (b"workloads: []\n" + b"#" * (1 << 20) + b"\n", 1, "larger than 1 MiB")  # over --local-xds-max-bytes


@pytest.mark.parametrize(
    "case", ["recursive alias", "deep flow nesting", "nesting libyaml cannot compose", "not UTF-8"]
)
async def test_the_proxy_refuses_to_start_in_one_line(tmp_path: Path, case: str) -> None:
    await refused(tmp_path, *BAD[case])


async def test_a_file_over_the_declared_bound_is_refused(tmp_path: Path) -> None:
    await refused(tmp_path, *TOO_BIG, "--local-xds-max-bytes", str(1 << 20))


async def refused(tmp_path: Path, data: bytes, line: int, words: str, *flags: str) -> None:
    path = write(tmp_path / "workloads.yaml", data)
    _, b_ip = loopback_ips()
    off = ["--readiness-addr", "", "--stats-addr", "", "--admin-addr", ""]
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "pyztunnel", "proxy", "--local-xds-path", str(path), *off, "--direct-inbound", b_ip),
        *flags,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert (proc.returncode, len(lines)) == (2, 1), err.decode()
    assert lines[0].startswith(f"error: {path}:{line}: ") and words in lines[0], lines[0]

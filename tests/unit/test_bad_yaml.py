"""Hostile YAML (issue 11, item 12): a recursive alias, 5 000-deep nesting, a billion laughs, bytes that are not UTF-8,
a NUL, a value no constructor takes. Each is one line naming FILE:LINE wherever the project reads YAML — the cluster
spec (`cluster up -f`, exit 2), LOCAL_XDS_PATH (at the proxy's start and while it watches the file: the last good
config stays in force and a later good file is loaded), the CA's view of the workloads, settings files — never a
traceback, a RecursionError or a dead task."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyztunnel import settings, yamlfile
from pyztunnel.aio import cancel_and_wait, poll_until, spawn
from pyztunnel.cluster import spec
from pyztunnel.cluster.cli import ClusterSettings
from pyztunnel.errors import UserError
from pyztunnel.identity.node_authz import WorkloadsError, identities_by_node
from pyztunnel.k8s.cli import read_values_file
from pyztunnel.workloads import local
from pyztunnel.workloads.model import LocalConfig
from pyztunnel.workloads.watch import ConfigWatch

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
# name -> (file bytes, the line the error names, words of the error)
BAD: dict[str, tuple[bytes, int, str]] = {
    "recursive alias": (b"nodes:\n  - &n {name: node-1, labels: *n}\n", 2, "recursive"),
    "deep flow nesting": (b"nodes:\n  - " + b"[" * 5000 + b"]" * 5000 + b"\n", 2, "nested deeper than 64"),
    "deep block nesting": (b"nodes:\n" + b"- " * 5000 + b"x\n", 2, "nested deeper than 64"),
    # libyaml's own composer recurses in C: this crashes a process that lets it compose (yaml.CSafeLoader)
    "nesting libyaml cannot compose": (b"nodes:\n  - " + b"[" * 1_000_000 + b"\n", 2, "nested deeper than 64"),
    "billion laughs": (LAUGHS.encode(), 6, "expands to more than"),  # f: the first to expand to 10**6 values
    "not UTF-8": (b"nodes:\n  - name: node-\xff\n", 2, "not UTF-8"),
    "a NUL": (b"nodes:\n  - name: a\x00b\n", 2, "character #x0000"),
    # libyaml counts bytes, not characters, to the NUL: the line must still be the NUL's
    "a NUL after multibyte text": (b"nodes:\n" + "  - é\n".encode() * 5000 + b"  - a\x00b\n", 5002, "character #x0000"),
    "an unconstructible value": (b"nodes:\n  - name: !!int abc\n", 2, "invalid literal"),
}
CASES = pytest.mark.parametrize("case", sorted(BAD))
GOOD = "workloads: [{name: a, namespace: n, workloadIps: ['10.0.0.1']}]\n"
GOOD2 = "workloads: [{name: b, namespace: n, workloadIps: ['10.0.0.2']}]\n"


def write(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # as the controller writes workloads.yaml: a reader sees old or new
    return path


@CASES
def test_the_loader_names_the_line(case: str) -> None:
    data, line, words = BAD[case]
    with pytest.raises(yamlfile.YamlError) as info:
        yamlfile.load_with_lines(yamlfile.decode(data))
    assert (info.value.line, words in info.value.message) == (line, True), info.value


def test_the_loader_keeps_ordinary_anchors() -> None:
    assert yamlfile.load("a: &x {b: 1}\nc: *x\n") == {"a": {"b": 1}, "c": {"b": 1}}


def test_size_is_bounded(tmp_path: Path) -> None:
    path = write(tmp_path / "big.yaml", b"a: " + b"x" * 100 + b"\n")
    with pytest.raises(yamlfile.YamlError, match="larger than"):
        yamlfile.read_bytes(path, limit=64)


@CASES
def test_cluster_up_says_one_line_and_exits_2(tmp_path: Path, case: str) -> None:
    data, line, words = BAD[case]
    path = write(tmp_path / "spec.yaml", data)
    out = subprocess.run(
        [sys.executable, "-m", "pyztunnel", "cluster", "up", "-f", str(path), "--name", "tbad"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stderr.strip().splitlines()
    assert (out.returncode, len(lines)) == (2, 1), out.stderr
    assert lines[0].startswith(f"error: {path}:{line}: ") and words in lines[0], lines[0]


@CASES
def test_the_spec_loader_raises_spec_error(tmp_path: Path, case: str) -> None:
    data, line, _ = BAD[case]
    with pytest.raises(spec.SpecError, match=rf"^{tmp_path}/s.yaml:{line}: "):
        spec.load(write(tmp_path / "s.yaml", data))


@CASES
async def test_local_xds_file_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    data, line, words = BAD[case]
    path = write(tmp_path / "workloads.yaml", data)
    with pytest.raises(local.ConfigError) as info:
        local.load(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and words in str(info.value), info.value
    watch = ConfigWatch(path)
    assert await watch.check() is False
    assert watch.last_error == str(info.value)


@CASES
async def test_the_watch_keeps_the_last_good_config_and_goes_on(tmp_path: Path, case: str) -> None:
    path = write(tmp_path / "workloads.yaml", GOOD.encode())
    watch = ConfigWatch(path)
    assert await watch.check()
    task = spawn(watch.run(0.01), "test-config-watch")
    try:
        write(path, BAD[case][0])
        assert await poll_until(lambda: watch.last_error is not None, 10), "the bad file was not noticed"
        assert watch.index.workload_by_ip("10.0.0.1") is not None  # the last good config is in force
        changed = watch.changed
        write(path, GOOD2.encode())
        await asyncio.wait_for(changed.wait(), 10)
        assert not task.done()
        assert watch.index.workload_by_ip("10.0.0.2") is not None and watch.last_error is None
    finally:
        await cancel_and_wait(task)


async def test_the_watch_survives_a_check_that_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong in one check (here a bug), the watch logs it and keeps watching."""
    path = write(tmp_path / "workloads.yaml", GOOD.encode())
    watch = ConfigWatch(path)
    calls = 0

    def broken(text: str, source: str) -> LocalConfig:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(local, "parse", broken)
        task = spawn(watch.run(0.01), "test-config-watch")
        assert await poll_until(lambda: calls >= 2, 10), "the watch stopped after the first failure"
    try:
        changed = watch.changed
        write(path, GOOD2.encode())
        await asyncio.wait_for(changed.wait(), 10)
        assert watch.index.workload_by_ip("10.0.0.2") is not None
    finally:
        await cancel_and_wait(task)


@pytest.mark.parametrize("case", sorted(set(BAD) - {"not UTF-8"}))  # the CA reads text (read_text refuses bad UTF-8)
def test_the_ca_view_of_the_workloads(case: str) -> None:
    with pytest.raises(WorkloadsError, match=f"line {BAD[case][1]}: "):
        identities_by_node(BAD[case][0].decode())


@CASES
def test_a_settings_file(tmp_path: Path, case: str) -> None:
    data, line, _ = BAD[case]
    path = write(tmp_path / "settings.yaml", data)
    with pytest.raises(UserError, match=rf"^{path}:{line}: "):
        settings.load(ClusterSettings, config_file=path)


@CASES
def test_a_helm_values_file(tmp_path: Path, case: str) -> None:
    data, line, _ = BAD[case]
    path = write(tmp_path / "values.yaml", data)
    with pytest.raises(UserError, match=rf"^{path}:{line}: "):
        read_values_file(str(path))

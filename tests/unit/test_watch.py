"""Reloading the config file: a change is picked up; a corrupt file keeps the last good config."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pyztunnel.workloads.watch import ConfigWatch, config_version

GOOD = "workloads: [{name: a, namespace: n, workloadIps: ['10.0.0.1']}]\n"
GOOD2 = "workloads: [{name: b, namespace: n, workloadIps: ['10.0.0.2']}]\n"


def replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_reload_and_keep_last_good(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "workloads.yaml"
    replace(path, GOOD)
    seen: list[int] = []
    watch = ConfigWatch(path, on_change=lambda index: seen.append(len(index.by_ip)))
    assert await watch.check() is True
    assert watch.index.workload_by_ip("10.0.0.1") is not None
    assert await watch.check() is False  # unchanged
    with caplog.at_level(logging.ERROR):
        replace(path, "workloads: [{name: a, namespace: n, workloadIps: ['10.0.0.1'], bogus: 1}]\n")
        assert await watch.check() is False
    assert watch.index.workload_by_ip("10.0.0.1") is not None  # last good kept
    assert watch.last_error is not None and f"{path}:1: unknown field 'bogus'" in watch.last_error
    assert any("keeping the last good one" in r.getMessage() for r in caplog.records)
    replace(path, GOOD2)
    assert await watch.check() is True
    assert watch.index.workload_by_ip("10.0.0.1") is None
    assert watch.index.workload_by_ip("10.0.0.2") is not None
    assert seen == [1, 1]


async def test_version_names_the_bytes_in_force(tmp_path: Path) -> None:
    path = tmp_path / "workloads.yaml"
    replace(path, GOOD)
    assert ConfigWatch(path).version is None  # nothing loaded yet
    watch = ConfigWatch(path)
    await watch.check()
    assert watch.version == config_version(GOOD.encode()) and len(GOOD) > 16
    replace(path, "workloads: [{bogus: 1}]\n")
    await watch.check()
    assert watch.version == config_version(GOOD.encode())  # a bad file changes nothing, the version neither
    replace(path, GOOD2)
    await watch.check()
    assert watch.version == config_version(GOOD2.encode()) != config_version(GOOD.encode())

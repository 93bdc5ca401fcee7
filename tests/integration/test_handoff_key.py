"""The node's handoff key file: created once, atomically, root-only; anything others could read is refused."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyztunnel.errors import UserError
from pyztunnel.lifecycle import handoff_key


def test_created_once_0400_whatever_the_umask_and_read_back(tmp_path: Path) -> None:
    path = handoff_key.beside(tmp_path / "node" / "handoff.sock")
    assert path == tmp_path / "node" / "handoff.key"
    previous = os.umask(0)
    try:
        key = handoff_key.load_or_create(path)
    finally:
        os.umask(previous)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o400
    assert handoff_key.load_or_create(path) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["handoff.key"]  # no temporary file left


def test_instances_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "handoff.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: handoff_key.load_or_create(path), range(16)))
    assert len(keys) == 1


@pytest.mark.parametrize(
    ("mode", "content", "why"),
    [
        (0o644, bytes(32), "accessible to others (mode 0644)"),
        (0o440, bytes(32), "accessible to others (mode 0440)"),
        (0o600, bytes(31), "exactly 32 bytes, not 31"),
        (0o600, bytes(33), "exactly 32 bytes, not 33"),
    ],
)
def test_a_key_others_can_read_or_of_the_wrong_size_is_refused(
    tmp_path: Path, mode: int, content: bytes, why: str
) -> None:
    path = tmp_path / "handoff.key"
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(UserError, match=re.escape(why)):
        handoff_key.load_or_create(path)


def test_a_symlink_or_a_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(bytes(32))
    target.chmod(0o400)
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(UserError):
        handoff_key.load_or_create(tmp_path / "link.key")
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(UserError, match="not a regular file"):
        handoff_key.load_or_create(tmp_path / "dir.key")

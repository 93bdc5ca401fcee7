"""Who may take the handoff socket's name (lifecycle/handoff_name.py), with real unix sockets and flock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from pyztunnel.lifecycle import handoff_name
from pyztunnel.localsock import listen_unix


async def test_a_name_unchanged_since_we_looked_or_absent_is_ours(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    async with handoff_name.claim(path, seen=0) as ours:
        assert ours  # no one there, as when we looked
    predecessor = listen_unix(path)
    try:
        async with handoff_name.claim(path, seen=handoff_name.name_inode(path)) as ours:
            assert ours  # the predecessor we registered with, still behind the name (it sent `done`)
    finally:
        predecessor.close()


async def test_a_live_instance_that_took_the_name_since_we_looked_is_our_predecessor(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    seen = handoff_name.name_inode(path)  # nothing, when we looked
    other = listen_unix(path)  # another instance, started at the same moment, renamed first
    try:
        async with handoff_name.claim(path, seen) as ours:
            assert not ours
    finally:
        other.close()
    # The same name left dangling by an instance that died: ours again.
    async with handoff_name.claim(path, seen) as ours:
        assert ours


async def test_a_claim_holds_the_names_lock_until_it_is_done(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    fd = os.open(tmp_path / "handoff.sock.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        async with handoff_name.claim(path, seen=0):
            with pytest.raises(BlockingIOError):  # another instance's claim waits here
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
        async with handoff_name.claim(path, seen=0, within=0.05) as ours:
            assert ours  # a lock held too long (by us, here) is waited for only so long
    finally:
        os.close(fd)

"""Who may take the handoff socket's name (docs/lifecycle.md, "Who holds the name"): an instance takes it only under
an exclusive lock beside it, and only if the name still leads where it led when the instance looked for its
predecessor, or to nobody alive. Two instances that both found no predecessor at the same moment (an old one
restarted by its kubelet while the new one starts) then do not both rename: the second finds the first behind the
name and registers with it as its successor, so the name always leads to an instance that will hand over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from pyztunnel.aio import poll_until
from pyztunnel.lifecycle.handoff_io import connect

_log = logging.getLogger("pyztunnel.lifecycle.handoff")

LOCK_WAIT = 10.0  # the lock is held for a rename; a holder that keeps it longer is stuck, and we go on without it


def name_inode(path: Path) -> int:
    """The inode the name leads to now (0: no name)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


async def _served(path: Path) -> bool:
    """A live instance of our uid accepts behind the name."""
    try:
        conn = await connect(path)
    except OSError:
        return False
    conn.close()
    return True


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


@contextlib.asynccontextmanager
async def claim(path: Path, seen: int, within: float = LOCK_WAIT) -> AsyncIterator[bool]:
    """Under the name's lock: True if the name is ours to take (it leads where it led when we looked, `seen`, or to
    no live instance); False if another instance took it meanwhile (register with it, then claim again)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not await poll_until(lambda: _try_lock(fd), within):
            _log.warning("the handoff socket's lock is held too long; taking the name without it")
        now = name_inode(path)
        yield now in (0, seen) or not await _served(path)
    finally:
        os.close(fd)  # releases the lock

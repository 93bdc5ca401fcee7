"""The node's handoff key file (what it proves: peerauth.py).

`load_or_create(path)`: the first instance on a node creates it (32 random bytes, mode 0400, owned by us) atomically
(written under another name, then hard-linked into place, so a second instance starting at the same moment reads the
first one's key, never a half-written file); later ones read it. A file that is not a regular file of our uid, is
readable or writable by anyone else, or does not hold exactly 32 bytes is refused with one line (`UserError`): a key
others can read proves nothing.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from pyztunnel.errors import UserError
from pyztunnel.lifecycle.peerauth import KEY_BYTES


def beside(socket_path: Path) -> Path:
    """The default key file of a handoff socket: `handoff.sock` → `handoff.key`."""
    return socket_path.with_suffix(".key")


def load_or_create(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o400)
    try:
        os.fchmod(fd, 0o400)  # whatever the umask
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another instance was first: then its key is the node's
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return _read(path)


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UserError(f"handoff key {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"handoff key {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UserError(f"handoff key {path} belongs to uid {st.st_uid}, not to us ({os.geteuid()})")
        if st.st_mode & 0o077:
            raise UserError(
                f"handoff key {path} is accessible to others (mode {st.st_mode & 0o777:04o}); chmod 0400 it"
            )
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise UserError(f"handoff key {path} must hold exactly {KEY_BYTES} bytes, not {len(data)}")
    return data

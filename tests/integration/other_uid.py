"""A client of a unix socket running as another uid (nobody), for the peer checks behind the file modes (root only).

The client is the system's python with the standard library alone (the project's venv is not readable by nobody): it
connects, sends one record, and says whether the server answered (`served`) or closed the connection (`eof`)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, int(sys.argv[2]))
s.settimeout(10)
try:
    s.connect(sys.argv[1])
    s.send(bytes.fromhex(sys.argv[3]))
    print("eof" if s.recv(65536) == b"" else "served")
except ConnectionError:
    print("eof")
except PermissionError:
    print("denied")
"""


@contextmanager
def traversable_dir() -> Iterator[Path]:
    """A directory another uid may enter (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="pzt-peer-") as name:
        os.chmod(name, 0o711)
        yield Path(name)


async def send_as_nobody(path: Path, kind: int, record: bytes) -> str:
    """`served`, `eof` or `denied` (the file mode kept it out)."""
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, "-c", _CLIENT, str(path), str(kind), record.hex(), user=NOBODY, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode().strip()

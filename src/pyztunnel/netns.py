"""Network namespaces from Python 3.11, which has no os.setns.

`setns(2)` changes the namespace of the calling *thread* only, so work that must happen inside another namespace runs
on a short-lived thread that enters it; a socket created there stays in that namespace when the event loop's thread
uses it later (DESIGN §8). Nothing here touches the namespace of the calling thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def run_in_netns(netns: int | str | Path, func: Callable[[], T]) -> T:
    """Run `func` on a fresh thread inside the namespace given by fd, name (/run/netns/NAME) or path."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            if isinstance(netns, int):
                setns(netns)
            else:
                path = Path(netns) if isinstance(netns, Path) or "/" in str(netns) else netns_path(str(netns))
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    setns(fd)
                finally:
                    os.close(fd)
            result.append(func())
        except BaseException as exc:
            error.append(exc)

    # The thread ends right after func, so its changed namespace never leaks into other work.
    thread = threading.Thread(target=target, name="netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def socket_in_netns(
    netns: int | str | Path, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket that lives in the given namespace."""
    return run_in_netns(netns, lambda: socket.socket(family, type))


def netns_inode(fd_or_path: int | str | Path) -> tuple[int, int]:
    """(st_dev, st_ino): the identity of a namespace, as ztunnel keys workloads by it."""
    st = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    return st.st_dev, st.st_ino

"""Give freed heap memory back to the kernel (glibc's malloc_trim). A large XDS response or config file is decoded
into short-lived objects (the serialized bytes, protobuf messages, YAML nodes): once they are freed, glibc keeps the
pages, so the process's RSS would stay at the transient peak. Where there is no glibc, this does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util

_trim = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int
except (OSError, AttributeError):
    _trim = None


def trim() -> bool:
    """Release free heap pages; True if the C library did."""
    return bool(_trim(0)) if _trim is not None else False

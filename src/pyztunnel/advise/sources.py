"""Read log lines from files, gzip files (recognised by their magic bytes, whatever the name) or stdin (`-`)."""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from pyztunnel.advise.parse import AccessLogParser
from pyztunnel.errors import UserError

CORRUPT_GZIP = "corrupt gzip data (rest of the file unread)"
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    head = stream.peek(2)[:2] if hasattr(stream, "peek") else b""
    if head == _GZIP_MAGIC:
        yield from gzip.GzipFile(fileobj=stream)
    else:
        yield from stream


def feed_paths(parser: AccessLogParser, paths: list[str]) -> None:
    """Feed every line of every input to the parser. A file that cannot be opened raises UserError (exit 2)."""
    streams = [(path, _open(path)) for path in paths]  # fail before reading anything if one is unreadable
    for path, stream in streams:
        try:
            for line in _lines(stream):
                parser.feed_line(line)
        except (EOFError, OSError, zlib.error) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
                raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
            parser.result.skipped[CORRUPT_GZIP] += 1
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

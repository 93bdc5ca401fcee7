"""HTTP/1.1 for a hop that forwards messages (the waypoint), sans-IO: parse a request's or a response's head, say how
its body is framed, and follow a body as its bytes pass (Content-Length, chunked with trailers, or up to the end of
the connection) so the hop knows where the next message starts without buffering the body.
"""

from __future__ import annotations

import dataclasses

MAX_HEAD = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


class HttpError(ValueError):
    """Not HTTP/1.x (or more than the hop accepts); the message says why."""


@dataclasses.dataclass
class Head:
    start: str  # the request line or the status line
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @property
    def keep_alive(self) -> bool:
        connection = (self.get("connection") or "").lower()
        if "close" in connection:
            return False
        version = self.start.split(" ", 1)[0] if self.start.startswith("HTTP/") else self.start.rsplit(" ", 1)[-1]
        return "keep-alive" in connection or not version.endswith("/1.0")


def parse_head(raw: bytes) -> Head:
    """A head up to and including its blank line."""
    if len(raw) > MAX_HEAD:
        raise HttpError(f"head larger than {MAX_HEAD} bytes")
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HttpError("undecodable head") from None
    lines = text.split("\r\n")
    start = lines[0]
    if not (start.startswith("HTTP/1.") or " HTTP/1." in start):
        raise HttpError(f"not HTTP/1.x: {start[:80]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return Head(start, headers)


def request_path(head: Head) -> str:
    parts = head.start.split(" ")
    if len(parts) != 3:
        raise HttpError(f"malformed request line {head.start[:80]!r}")
    return parts[1]


def status_of(head: Head) -> int:
    parts = head.start.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError(f"malformed status line {head.start[:80]!r}")
    return int(parts[1])


class Body:
    """Where a message's body ends: `feed(data)` returns how many of these bytes belong to it; `done` once complete.
    `until_close`: the body runs to the end of the connection (a response without length)."""

    def __init__(self, head: Head, *, response: bool, request_method: str = "GET") -> None:
        self.done = False
        self.until_close = False
        self._remaining = 0
        self._chunked = False
        self._chunk_state = "size"  # size | data | data-crlf | trailers
        self._line = bytearray()
        encoding = (head.get("transfer-encoding") or "").lower()
        length = head.get("content-length")
        no_body = response and (
            status_of(head) in _NO_BODY_STATUSES or status_of(head) < 200 or request_method == "HEAD"
        )
        if no_body:
            self.done = True
        elif "chunked" in encoding:
            self._chunked = True
        elif length is not None:
            if not length.isdigit():
                raise HttpError(f"bad Content-Length {length!r}")
            self._remaining = int(length)
            self.done = self._remaining == 0
        elif response:
            self.until_close = True
        else:
            self.done = True  # a request without a length has no body

    def feed(self, data: bytes) -> int:
        if self.done:
            return 0
        if self.until_close:
            return len(data)
        if not self._chunked:
            used = min(self._remaining, len(data))
            self._remaining -= used
            self.done = self._remaining == 0
            return used
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> int:
        i = 0
        while i < len(data) and not self.done:
            if self._chunk_state == "data":
                used = min(self._remaining, len(data) - i)
                self._remaining -= used
                i += used
                if self._remaining == 0:
                    self._chunk_state = "data-crlf"
                continue
            byte = data[i]
            i += 1
            self._line.append(byte)
            if len(self._line) > 4096:
                raise HttpError("chunk line too long")
            if not self._line.endswith(b"\r\n"):
                continue
            line = bytes(self._line[:-2])
            self._line.clear()
            if self._chunk_state == "data-crlf":
                if line:
                    raise HttpError("chunk not followed by CRLF")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpError(f"bad chunk size {line[:20]!r}") from None
                if size == 0:
                    self._chunk_state = "trailers"
                else:
                    self._remaining = size
                    self._chunk_state = "data"
            elif not line:  # the blank line after the trailers
                self.done = True
        return i

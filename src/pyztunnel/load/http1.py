"""HTTP/1.1 client side, sans-IO: build a request, parse responses incrementally.

The parser takes bytes as they arrive and reports a finished `Response` (status, header and body sizes, whether the
connection may be reused). It understands Content-Length, chunked bodies (with trailers), bodies delimited by the
connection closing, 1xx interim responses, `Connection: close`/`keep-alive` and HTTP/1.0 defaults. Anything it cannot
parse raises `HttpParseError`, which the load generator counts as a "garbage" socket error.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset((204, 304))


class HttpParseError(Exception):
    """The peer sent something that is not an HTTP/1.x response."""


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    header_size: int
    body_size: int
    keep_alive: bool


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str  # with query
    authority: str  # Host header value


def parse_url(url: str) -> Target:
    """`http://host[:port]/path?q`; a URL without scheme is taken as http, like fortio does."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r} (use http:// or tcp://)")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"bad port in URL {url!r}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.hostname, port, path, parts.netloc)


def build_request(target: Target, headers: list[tuple[str, str]], *, keep_alive: bool, user_agent: str) -> bytes:
    """One GET request, built once and sent as is for every call (fortio's fast client does the same)."""
    names = {name.lower() for name, _ in headers}
    lines = [f"GET {target.path} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {target.authority}")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {user_agent}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive and "connection" not in names:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# Parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE = range(7)


class ResponseParser:
    """Incremental parser for the responses on one connection (one request at a time, no pipelining)."""

    __slots__ = ("_body", "_buf", "_header_size", "_keep_alive", "_remaining", "_state", "_status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.reset()

    def reset(self) -> None:
        """Forget the response in progress (a new connection, or a new request on this one)."""
        self._buf.clear()
        self._state = _HEAD
        self._status = 0
        self._header_size = 0
        self._body = 0
        self._remaining = 0
        self._keep_alive = True

    @property
    def in_progress(self) -> bool:
        """True once any byte of the current response has arrived."""
        return bool(self._buf) or self._state != _HEAD

    def feed(self, data: bytes) -> Response | None:
        """Add received bytes; return the response once it is complete. Raises HttpParseError on garbage."""
        if data:
            self._buf += data
        while True:
            state = self._state
            if state == _HEAD:
                if not self._parse_head():
                    return None
            elif state == _LENGTH:
                take = min(self._remaining, len(self._buf))
                del self._buf[:take]
                self._remaining -= take
                self._body += take
                if self._remaining:
                    return None
                return self._finish()
            elif state == _CHUNK_SIZE:
                line = self._line()
                if line is None:
                    return None
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise HttpParseError(f"bad chunk size {bytes(size_text[:20])!r}") from None
                if size < 0:
                    raise HttpParseError("negative chunk size")
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_DATA:
                take = min(self._remaining, len(self._buf))
                del self._buf[:take]
                self._remaining -= take
                self._body += take
                if self._remaining:
                    return None
                self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(self._buf) < 2:
                    return None
                if self._buf[:2] != b"\r\n":
                    raise HttpParseError("chunk not followed by CRLF")
                del self._buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                line = self._line()
                if line is None:
                    return None
                if not line:
                    return self._finish()
            else:  # _UNTIL_CLOSE: the body is everything until EOF
                self._body += len(self._buf)
                self._buf.clear()
                return None

    def eof(self) -> Response | None:
        """The peer closed. Completes a close-delimited body; None if nothing was in progress.

        Raises HttpParseError("closed mid-response") when a response had started but was cut short.
        """
        if self._state == _UNTIL_CLOSE:
            return self._finish()
        if self.in_progress:
            raise HttpParseError("connection closed mid-response")
        return None

    def _line(self) -> bytearray | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES:
                raise HttpParseError("line too long")
            return None
        line = self._buf[:end]
        del self._buf[: end + 2]
        return line

    def _parse_head(self) -> bool:
        buf = self._buf
        if len(buf) >= 5 and not buf.startswith(b"HTTP/"):
            raise HttpParseError(f"not an HTTP response: {bytes(buf[:20])!r}")
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise HttpParseError("response headers too large")
            if len(buf) < 5 and buf and not b"HTTP/".startswith(bytes(buf)):
                raise HttpParseError(f"not an HTTP response: {bytes(buf)!r}")
            return False
        head = bytes(buf[:end])
        del buf[: end + 4]
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise HttpParseError(f"bad status line {lines[0][:40]!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise HttpParseError(f"bad status code {status_line[1][:10]!r}") from None
        if not 100 <= status <= 999:
            raise HttpParseError(f"bad status code {status}")
        http10 = status_line[0] == b"HTTP/1.0"
        length: int | None = None
        chunked = False
        connection = b""
        for raw in lines[1:]:
            name, sep, value = raw.partition(b":")
            if not sep:
                raise HttpParseError(f"bad header line {raw[:40]!r}")
            key = name.strip().lower()
            if key == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise HttpParseError(f"bad Content-Length {value.strip()[:20]!r}") from None
                if length < 0:
                    raise HttpParseError("negative Content-Length")
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                connection = value.strip().lower()
        if 100 <= status < 200:  # interim response (100 Continue): the real one follows
            self._header_size += end + 4
            return True
        self._status = status
        self._header_size += end + 4
        self._keep_alive = (b"keep-alive" in connection) if http10 else (b"close" not in connection)
        if status in _NO_BODY_STATUSES:
            self._state, self._remaining = _LENGTH, 0
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._state, self._remaining = _LENGTH, length
        else:
            self._state, self._keep_alive = _UNTIL_CLOSE, False
        return True

    def _finish(self) -> Response:
        response = Response(self._status, self._header_size, self._body, self._keep_alive)
        leftover = bytes(self._buf)
        self.reset()
        if leftover:
            self._buf += leftover
        return response

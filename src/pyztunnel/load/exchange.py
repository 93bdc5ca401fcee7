"""One call's bytes on the wire, sans-IO: what to send, and when the answer is complete.

`HttpExchange` sends a fixed GET and parses the response; `EchoExchange` sends fortio's 24-byte TCP payload
(`Fortio\\n%04d\\n%012d`: connection, message number) and checks that the same bytes come back.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from pyztunnel.load.http1 import HttpParseError, ResponseParser


class ExchangeError(Exception):
    """The reply is not what the protocol allows (garbage, or cut short)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    code: int | str
    header_size: int
    body_size: int
    keep_alive: bool


class Exchange(Protocol):
    def begin(self, call: int) -> bytes: ...
    def feed(self, data: bytes) -> Outcome | None: ...
    def eof(self) -> Outcome | None: ...
    @property
    def in_progress(self) -> bool: ...


class HttpExchange:
    __slots__ = ("_parser", "_request")

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._parser = ResponseParser()

    def begin(self, call: int) -> bytes:
        self._parser.reset()
        return self._request

    @property
    def in_progress(self) -> bool:
        return self._parser.in_progress

    def feed(self, data: bytes) -> Outcome | None:
        try:
            response = self._parser.feed(data)
        except HttpParseError:
            raise ExchangeError("garbage") from None
        if response is None:
            return None
        return Outcome(response.status, response.header_size, response.body_size, response.keep_alive)

    def eof(self) -> Outcome | None:
        try:
            response = self._parser.eof()
        except HttpParseError:
            raise ExchangeError("closed mid-response") from None
        if response is None:
            return None
        return Outcome(response.status, response.header_size, response.body_size, False)


def echo_payload(connection: int, message: int) -> bytes:
    """fortio's TCP runner payload: 24 bytes."""
    return b"Fortio\n%04d\n%012d" % (connection % 10000, message % 10**12)


class EchoExchange:
    __slots__ = ("_connection", "_expected", "_received")

    def __init__(self, connection: int) -> None:
        self._connection = connection
        self._expected = b""
        self._received = bytearray()

    def begin(self, call: int) -> bytes:
        self._expected = echo_payload(self._connection, call)
        self._received.clear()
        return self._expected

    @property
    def in_progress(self) -> bool:
        return bool(self._received)

    def feed(self, data: bytes) -> Outcome | None:
        self._received += data
        if len(self._received) < len(self._expected):
            if not self._expected.startswith(bytes(self._received)):
                return Outcome("read not echoing writes", 0, len(self._received), False)
            return None
        ok = self._received == self._expected
        code = "OK" if ok else "read not echoing writes"
        return Outcome(code, 0, len(self._received), ok and len(self._received) == len(self._expected))

    def eof(self) -> Outcome | None:
        if self._received:
            raise ExchangeError("short read")
        return None

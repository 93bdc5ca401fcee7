"""Resumable HBONE streams between pyztunnel peers, sans-IO: the headers, the quiesce frame and its per-stream state
(docs/migration.md, "HBONE streams").

An HBONE stream lives in one process's TLS and HTTP/2 state, which no other process can continue. What can move is
the app's TCP socket at one end. So a stream is *stopped at a known byte count in both directions*, the app socket
moves (or stays, at the peer), and a new CONNECT continues it:

    client CONNECT          pyztunnel-stream: <token>     I can resume this stream; here is its name
    server 200              pyztunnel-stream: <token>     so can I (anything else: an ordinary stream)
      … the relay runs …
    either side  QUIESCE(sent=N)        frame type 0xb7 on the stream: I have sent N bytes and will send no more
    other side   QUIESCE(sent=M, ACK)   after flushing what it had read: the same, from its side
      (both sides have sent a mark and received one: every byte is at its destination proxy)
    client CONNECT          pyztunnel-resume: <token>     continue that stream here (a new HTTP/2 connection)
    server 200              pyztunnel-stream: <token>     and it may be resumed again later

Only peers that both sent the header ever see the frame, so ztunnel (which ignores unknown headers) is never sent
one; an HTTP/2 peer must ignore unknown frame types anyway (RFC 9113 §5.5). The client always opens the continuing
stream, whichever side moved; a server holds the app socket under the token until it comes (`ResumeRegistry`). A
resume is honoured only from the identity that held the stream and for the same authority.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterable

STREAM_HEADER = b"pyztunnel-stream"
RESUME_HEADER = b"pyztunnel-resume"
QUIESCE_FRAME = 0xB7  # an HTTP/2 extension frame type (unassigned in the IANA registry)
FLAG_ACK = 0x1
GONE_STATUS = 410  # a resume for a token nobody holds (expired, or never ours)
_BODY = struct.Struct("!Q")
_FRAME_HEADER = struct.Struct("!HBBBL")
_TOKEN = re.compile(r"[0-9a-f]{32}")


class ResumeError(Exception):
    """The peer broke the quiesce protocol (a malformed frame, a byte count that does not add up)."""


def new_token(random16: bytes) -> str:
    if len(random16) != 16:
        raise ValueError("a token needs 16 random bytes")
    return random16.hex()


def token_in(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The well-formed token under `name`, if any (a malformed one is ignored: an ordinary stream)."""
    for key, value in headers:
        if key == name:
            text = value.decode("ascii", errors="replace")
            return text if _TOKEN.fullmatch(text) else None
    return None


def quiesce_frame(stream_id: int, sent: int, ack: bool) -> bytes:
    """The whole frame: 9-byte HTTP/2 header + the 8-byte count of payload bytes this side sent on the stream."""
    if not 0 < stream_id < 2**31 or sent < 0:
        raise ValueError("bad stream id or count")
    size = _BODY.size
    header = _FRAME_HEADER.pack(size >> 8, size & 0xFF, QUIESCE_FRAME, FLAG_ACK if ack else 0, stream_id)
    return header + _BODY.pack(sent)


def parse_quiesce(flags: int, body: bytes) -> tuple[int, bool]:
    """(count the peer sent, is it an ACK)."""
    if len(body) != _BODY.size:
        raise ResumeError(f"quiesce frame of {len(body)} bytes, expected {_BODY.size}")
    return _BODY.unpack(body)[0], bool(flags & FLAG_ACK)


@dataclasses.dataclass
class Quiesce:
    """One stream's stop: `ours` is the count we announced, `theirs` the count the peer announced. Stopped in both
    directions once both are known and what we received matches theirs."""

    ours: int | None = None
    theirs: int | None = None

    def begin(self, sent: int) -> None:
        if self.ours is not None:
            raise ResumeError("quiesce already announced")
        self.ours = sent

    def receive(self, sent_by_peer: int, received: int) -> None:
        """The peer's mark arrived after `received` payload bytes: frames are ordered, so they must be equal."""
        if self.theirs is not None:
            raise ResumeError("a second quiesce mark from the peer")
        if sent_by_peer != received:
            raise ResumeError(f"peer says it sent {sent_by_peer} bytes, {received} arrived")
        self.theirs = sent_by_peer

    @property
    def must_answer(self) -> bool:
        """The peer stopped first: flush and announce ours."""
        return self.theirs is not None and self.ours is None

    @property
    def stopped(self) -> bool:
        return self.ours is not None and self.theirs is not None

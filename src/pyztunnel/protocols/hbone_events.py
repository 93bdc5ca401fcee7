"""What an HBONE connection's rules (`protocols.hbone_conn.HboneConn`) tell the shell (proxy/h2conn.py), sans-IO.
h2's DataReceived and StreamEnded pass through as they are, and DATA read over the receive buffer comes out as
`Chunk`s: the hot path, without an object of ours per frame."""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

from h2.events import DataReceived, StreamEnded

from pyztunnel.protocols.h2read import Chunk
from pyztunnel.protocols.hbone import Headers


@dataclasses.dataclass(slots=True)
class StreamRequested:
    """Server: a CONNECT to set up. Answer it (`settled`) or let it go; until then it counts as pending."""

    stream_id: int
    headers: Headers


@dataclasses.dataclass(slots=True)
class Answered:
    """Client: the response to our CONNECT."""

    stream_id: int
    headers: Headers


@dataclasses.dataclass(slots=True)
class StreamGone:
    """The stream is over without an end: reset by the peer, or `refused` (never processed by it)."""

    stream_id: int
    why: str
    refused: bool = False


@dataclasses.dataclass(slots=True)
class WindowOpened:
    """The peer's window grew: for one stream, or (0) for every stream."""

    stream_id: int


@dataclasses.dataclass(slots=True)
class StreamFrame:
    """An extension frame on a live stream (resumable streams' QUIESCE)."""

    stream_id: int
    frame_type: int
    flags: int
    body: bytes


@dataclasses.dataclass(slots=True)
class Idle:
    """The last stream ended on a connection that is not going away (the pool may keep or expire it)."""


@dataclasses.dataclass(slots=True)
class Close:
    """Close the connection now, after sending what is queued; `abort`: do not wait for an unresponsive peer.
    `error` is why (None: an orderly end); `warn`: worth a warning in the log (not just a peer going away)."""

    error: str | None
    abort: bool = False
    warn: bool = False


Event: TypeAlias = (
    StreamRequested | Answered | StreamGone | WindowOpened | StreamFrame | Idle | Close | DataReceived | StreamEnded
)
# What `received` returns: events, and DATA payloads of live streams as `Chunk`s (stream id, a view of the receive
# buffer, valid until the next `get_buffer` unless the shell calls `lend()`), which the shell hands straight to the
# stream (`type(item) is tuple`).
Received: TypeAlias = Event | Chunk

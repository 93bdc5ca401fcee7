"""The proxy's side of resumable HBONE streams (the protocol: protocols/resume.py; docs/migration.md).

A relay between an app's TCP socket and a resumable HBONE stream gets a `ResumeState`. Either end may stop the
stream: the proxy that is upgrading does (`stop`, from `migration.RelayExport`), the other end answers. Once both
marks are exchanged every byte is in an app socket's kernel queue or on its way into one, and the stream is left
without a reset. Then:

- the end that holds the CONNECT's client role opens a new stream with `pyztunnel-resume: <token>`
  (`resume_as_client`): the peer that stayed, or the new instance that took the app socket;
- the server end parks the app socket under the token (`ResumeRegistry`) until that CONNECT arrives
  (`serve_resume`), for at most `PARK_TIMEOUT`; then the connection is reset, as the drain would have.

The access-log record travels with the app socket, so the connection is logged once, at its real end, with its whole
duration and byte counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

import h2.errors

from pyztunnel import authz
from pyztunnel.aio import poll_until, spawn
from pyztunnel.identity.spiffe import try_parse
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.protocols import hbone, resume
from pyztunnel.proxy.relay import Relay, StreamLeg, TcpLeg
from pyztunnel.proxy.telemetry import fail

if TYPE_CHECKING:
    from pyztunnel.proxy.h2conn import H2ServerConn
    from pyztunnel.proxy.pod import PodProxy

_log = logging.getLogger("pyztunnel.proxy.resume")

ANSWER_TIMEOUT = 5.0  # the answering end flushes what it read before its mark within this
PARK_TIMEOUT = 15.0  # a server end holds a stopped stream's app socket this long for its resume CONNECT
CLAIM_WAIT = 5.0  # a resume CONNECT may arrive before the app socket does (the handoff is still on its way)


class ResumeState:
    """One relay's resumable stream: the quiesce handshake on it, in either role."""

    def __init__(self, pod: PodProxy, relay: Relay, stream: StreamLeg, app: TcpLeg) -> None:
        assert stream.token is not None
        self.pod = pod
        self.relay = relay
        self.stream = stream
        self.app = app
        self.token = stream.token
        self.quiesce = resume.Quiesce()
        self.stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.broken = False

    @property
    def client_side(self) -> bool:
        return self.relay.down is self.app  # outbound: the app is the accepted leg, the stream the one we opened

    # --- the frame
    def on_frame(self, frame_type: int, flags: int, body: bytes) -> None:
        if frame_type != resume.QUIESCE_FRAME or self.broken:
            return
        try:
            sent_by_peer, _ack = resume.parse_quiesce(flags, body)
            self.quiesce.receive(sent_by_peer, self.stream.received)
        except resume.ResumeError as exc:
            self._break(f"hbone resume: {exc}")
            return
        if self.quiesce.must_answer:
            spawn(self._answer(), "hbone-quiesce-answer")
        elif self.quiesce.stopped:
            self._leave_stream()

    # --- the end that moves (the old instance at drain)
    async def stop(self, within: float) -> bool:
        """Stop the stream in both directions; False if it could not be (then `announced` says if it is spoiled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        self.app.pause_reading()
        if not await self._flushed(within):
            self.app.resume_reading()
            return False
        self._announce(ack=False)
        # Until the peer's mark, or the relay's end (the peer refused: a reset), or the bound.
        await asyncio.wait(
            [self.stopped, self.relay.closed],
            timeout=max(0.0, deadline - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        return self.stopped.done() and not self.broken and not self.relay.finished

    @property
    def announced(self) -> bool:
        return self.quiesce.ours is not None

    # --- the end that stays (or both, when they stop at once)
    async def _answer(self) -> None:
        if self.app.eof_in or self.app.eof_out or self.stream.eof_in or self.stream.eof_out:
            # A half-closed connection is not resumed (its end is already under way): refuse, as a reset.
            self._break("hbone resume: the connection is half-closed")
            return
        self.app.pause_reading()
        if not await self._flushed(ANSWER_TIMEOUT):
            self._break("hbone resume: could not flush before stopping")
            return
        self._announce(ack=True)
        if not self.quiesce.stopped or self.broken:
            return
        parked = self.park_here()
        if parked is None:
            return
        if self.client_side:
            spawn(resume_as_client(parked), "hbone-resume")
        else:
            self.pod.shared.resumes.park(parked)

    def park_here(self) -> Parked | None:
        """Take the app socket out of the stopped relay (which ends without a log line: the connection goes on)."""
        relay, app = self.relay, self.app
        if app.done or relay.finished:
            return None
        authorized = self.pod.authorized.get(relay)
        relay.finished = True
        if not relay.closed.done():
            relay.closed.set_result(None)
        self.pod.untrack(relay)
        app.relay = None
        app.peer = None
        record: ConnectionRecord = relay.info
        return Parked(self.pod, app, record, self.token, self.stream.received, self.client_side, authorized)

    # --- helpers
    async def _flushed(self, within: float) -> bool:
        """Wait until everything read from the app is handed to HTTP/2 (the stream's flow-control queue is empty)."""
        return await poll_until(
            lambda: not self.stream.has_pending, within, lambda: not (self.stream.done or self.relay.finished)
        )

    def _announce(self, ack: bool) -> None:
        self.quiesce.begin(self.app.received)  # the app's bytes read = the stream's bytes sent (nothing pending)
        self.stream.conn.send_raw_frame(resume.quiesce_frame(self.stream.stream_id, self.app.received, ack))
        if self.quiesce.stopped:
            self._leave_stream()

    def _leave_stream(self) -> None:
        # Both marks are through: nothing more travels on this stream. Leave it first (a reset of it, from either
        # end, must not touch the relay), then end it.
        stream = self.stream
        stream.detach()
        stream.conn.reset_stream(stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        if not self.stopped.done():
            self.stopped.set_result(None)

    def _break(self, why: str) -> None:
        self.broken = True
        _log.warning("hbone stream cannot be resumed", extra={"fields": {"error": why}})
        if not self.relay.finished:
            self.relay.error = ConnectionResetError(why)
            self.relay.reset()
        if not self.stopped.done():
            self.stopped.set_result(None)


def watch(pod: PodProxy, relay: Relay, stream: StreamLeg, app: TcpLeg) -> ResumeState:
    """Make a started relay's resumable stream answer a peer's stop."""
    state = ResumeState(pod, relay, stream, app)
    stream.set_control(state)
    return state


@dataclasses.dataclass(eq=False)
class Parked:
    """An app socket whose stream stopped, waiting to be joined to a new stream. The drain registry sees it as a live
    connection (reset at the deadline like any other)."""

    pod: PodProxy
    app: TcpLeg
    record: ConnectionRecord
    token: str
    stream_received: int  # payload bytes the stopped stream(s) delivered: the new stream's count continues from it
    client_side: bool
    authorized: authz.ConnectionInfo | None = None
    timer: asyncio.TimerHandle | None = None
    ended: bool = False

    def reset(self) -> None:
        self.give_up("connection reset at drain deadline while waiting for its hbone stream to resume")

    def log_fields(self) -> dict[str, Any]:
        from pyztunnel.observe.access import opened_fields

        return opened_fields(self.record)

    def give_up(self, why: str) -> None:
        """The connection ends here: the app socket is reset (unless the app already closed it) and the record
        logged, once."""
        if self.timer is not None:
            self.timer.cancel()
        shared = self.pod.shared
        shared.resumes.forget(self)
        shared.connections.discard(self)
        if self.ended:
            return
        self.ended = True
        if not self.app.done:
            self.app.abort()
        _complete(self, why)

    def attach(self, stream: StreamLeg) -> Relay:
        """Join the app socket to `stream` and run the relay again (same record, byte counts carried on)."""
        if self.timer is not None:
            self.timer.cancel()
        shared = self.pod.shared
        shared.connections.discard(self)
        stream.received += self.stream_received
        pod = self.pod
        if self.client_side:
            relay = Relay(self.app, stream, pod.relay_done, self.record)
        else:
            relay = Relay(stream, self.app, pod.relay_done, self.record)
        pod.track(relay, self.authorized)
        relay.start()
        self.app.read_again()
        if stream.token is not None and not relay.finished:
            watch(pod, relay, stream, self.app)
        return relay


def _complete(parked: Parked, why: str) -> None:
    record = parked.record
    record.bytes_recv = parked.app.received if parked.client_side else parked.stream_received
    record.bytes_sent = parked.stream_received if parked.client_side else parked.app.received
    fail(record, why)
    parked.pod.shared.telemetry.complete(record)


class ResumeRegistry:
    """Server-side parked app sockets by token, and the resume CONNECTs that arrived before theirs."""

    def __init__(self, park_timeout: float = PARK_TIMEOUT) -> None:
        self.park_timeout = park_timeout
        self._parked: dict[str, Parked] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self.resumed = 0
        self.expired = 0

    def park(self, parked: Parked) -> None:
        loop = asyncio.get_running_loop()
        parked.timer = loop.call_later(self.park_timeout, self._expire, parked)
        self._parked[parked.token] = parked
        parked.pod.shared.connections.add(parked)
        event = self._arrived.pop(parked.token, None)
        if event is not None:
            event.set()

    def forget(self, parked: Parked) -> None:
        if self._parked.get(parked.token) is parked:
            del self._parked[parked.token]

    def _expire(self, parked: Parked) -> None:
        self.expired += 1
        parked.give_up(f"hbone stream not resumed within {self.park_timeout:g}s")

    async def claim(
        self, token: str, key: str, identity: str, authority: str, wait: float = CLAIM_WAIT
    ) -> Parked | None:
        """The parked stream `token` of pod `key`, if `identity` held it at `authority`; waits up to `wait` for it.
        A claim that does not match leaves it parked (a guessed token gets nothing)."""
        if token not in self._parked:
            event = self._arrived.setdefault(token, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait)
            if self._arrived.get(token) is event:
                del self._arrived[token]
        parked = self._parked.get(token)
        if parked is None:
            return None
        record = parked.record
        if parked.pod.key != key or record.src_identity != identity or record.dst_hbone_addr != authority:
            return None
        del self._parked[token]
        self.resumed += 1
        return parked

    def __len__(self) -> int:
        return len(self._parked)


async def serve_resume(pod: PodProxy, conn: H2ServerConn, leg: StreamLeg, record: ConnectionRecord, token: str) -> None:
    """A CONNECT that continues a stopped stream here (after its app socket came from our previous instance, or
    because the client end moved)."""
    identity = str(conn.info["src.identity"])
    parked = await pod.shared.resumes.claim(token, pod.key, identity, record.dst_hbone_addr)
    if parked is None:
        conn.respond(leg, hbone.response_headers(resume.GONE_STATUS), end=True)
        fail(record, "no stopped hbone stream to resume under that token")
        pod.shared.telemetry.complete(record)
        return
    leg.token = token
    conn.respond(leg, [*hbone.response_headers(200), (resume.STREAM_HEADER, token.encode())])
    parked.attach(leg)


async def resume_as_client(parked: Parked) -> None:
    """Continue a stopped stream from the client end: a new CONNECT naming it, to the same destination."""
    from pyztunnel.proxy import outbound

    pod, record = parked.pod, parked.record
    shared = pod.shared
    shared.connections.add(parked)
    try:
        src_id, dst_id = try_parse(record.src_identity or ""), try_parse(record.dst_identity or "")
        target = hbone.parse_authority(record.dst_hbone_addr or "")
        if src_id is None or dst_id is None or target is None:
            raise outbound.OutboundError("the stream's identities or destination are unknown")
        src = hbone.parse_authority(record.src_addr)
        headers = hbone.connect_headers(
            record.dst_hbone_addr,
            forwarded_for=hbone.forwarded(*src) if src is not None else "",
            baggage_value="",
            traceparent_value=hbone.traceparent(os.urandom(16), os.urandom(8)),
        )
        headers.append((resume.RESUME_HEADER, parked.token.encode()))
        leg, response = await outbound.open_stream(pod, src_id, dst_id, [dst_id], target[0], headers)
    except (outbound.OutboundError, OSError, TimeoutError) as exc:
        parked.give_up(f"hbone resume failed: {exc or type(exc).__name__}")
        return
    except Exception as exc:
        _log.exception("hbone resume failed")
        parked.give_up(f"hbone resume failed: {exc!r}")
        return
    if parked.app.done:
        leg.abort()
        parked.give_up("the app closed its connection while its hbone stream was resuming")
        return
    if resume.token_in(response, resume.STREAM_HEADER) == parked.token:
        leg.token = parked.token
    parked.attach(leg)

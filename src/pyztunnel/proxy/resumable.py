"""The proxy's side of resumable HBONE streams (the protocol: protocols/resume.py; docs/migration.md).

A relay between an app's TCP socket and a resumable HBONE stream gets a `ResumeState`. Either end may stop the
stream: the proxy that is upgrading does (`stop`, from `migration_hbone.StreamExport`), the other end answers. Once both
marks are exchanged every byte is in an app socket's kernel queue or on its way into one, and the stream is left
without a reset. The app socket is then parked (proxy/parking.py) and goes where the relay's owner said when it
made the stream resumable (`watch(..., then)`):

- the end that holds the CONNECT's client role opens a new stream with `pyztunnel-resume: <token>`
  (`outbound.resume_as_client`): the peer that stayed, or the new instance that took the app socket;
- the server end parks the app socket under the token until that CONNECT arrives (`inbound.serve_resume`), for at
  most `parking.PARK_TIMEOUT`; then the connection is reset, as the drain would have.

`attach` joins a parked app socket to its new stream. The access-log record travels with the app socket, so the
connection is logged once, at its real end, with its whole duration and byte counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import h2.errors

from pyztunnel.aio import poll_until
from pyztunnel.protocols import resume
from pyztunnel.proxy.parking import Parked
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg
from pyztunnel.proxy.stream import StreamLeg

_log = logging.getLogger("pyztunnel.proxy.resume")

ANSWER_TIMEOUT = 5.0  # the answering end flushes what it read before its mark within this

# What becomes of a stopped stream's app socket at the end that stays: a module-level function, not a closure, so
# that an idle resumable connection holds no object of its own for it.
Continue = Callable[[PodProxy, Parked], None]


class ResumeState:
    """One relay's resumable stream: the quiesce handshake on it, in either role. Every idle resumable connection
    holds one, so what only a stop needs (the quiesce bookkeeping, the future a stop waits on) is made when a stop
    begins."""

    __slots__ = ("_quiesce", "_stopped", "app", "broken", "over", "pod", "relay", "stream", "then", "token")

    def __init__(self, pod: PodProxy, relay: Relay, stream: StreamLeg, app: TcpLeg, then: Continue) -> None:
        assert stream.token is not None
        self.pod = pod
        self.then = then
        self.relay = relay
        self.stream = stream
        self.app = app
        self.token = stream.token
        self._quiesce: resume.Quiesce | None = None
        self._stopped: asyncio.Future[None] | None = None  # what `stop` waits on, made by the first stop
        self.over = False  # the stream is left (both marks through) or broken: the stop is decided
        self.broken = False

    @property
    def quiesce(self) -> resume.Quiesce:
        if self._quiesce is None:
            self._quiesce = resume.Quiesce()
        return self._quiesce

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
            self.pod.tasks.spawn(self._answer(), "hbone-quiesce-answer")
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
        if not self.over:
            # Until the peer's mark, or the relay's end (the peer refused: a reset), or the bound.
            if self._stopped is None:
                self._stopped = loop.create_future()
            await asyncio.wait(
                [self._stopped, self.relay.closed],
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        return self.over and not self.broken and not self.relay.finished

    @property
    def announced(self) -> bool:
        return self._quiesce is not None and self._quiesce.ours is not None

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
        if parked is not None:
            self.then(self.pod, parked)

    def park_here(self) -> Parked | None:
        """Take the app socket out of the stopped relay (which ends without a log line: the connection goes on)."""
        relay, app = self.relay, self.app
        if app.done or relay.finished:
            return None
        authorized = self.pod.authorized.get(relay)
        relay.detach()
        self.pod.untrack(relay)
        return Parked(self.pod.key, app, relay.info, self.token, self.stream.received, self.client_side, authorized)

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
        self._decided()

    def _break(self, why: str) -> None:
        self.broken = True
        _log.warning("hbone stream cannot be resumed", extra={"fields": {"error": why}})
        if not self.relay.finished:
            self.relay.reset(ConnectionResetError(why))
        self._decided()

    def _decided(self) -> None:
        self.over = True
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)


def park_at_server(pod: PodProxy, parked: Parked) -> None:
    """The server end's `Continue`: the app socket waits for the client end's resume CONNECT."""
    pod.shared.resumes.park(parked)


def watch(pod: PodProxy, relay: Relay, stream: StreamLeg, app: TcpLeg, then: Continue) -> ResumeState:
    """Make a started relay's resumable stream answer a peer's stop; `then` takes the app socket once it stopped."""
    state = ResumeState(pod, relay, stream, app, then)
    stream.set_control(state)
    return state


def attach(pod: PodProxy, parked: Parked, stream: StreamLeg, then: Continue) -> Relay:
    """Join a parked app socket to the stream that continues it and run the relay again (same record, byte counts
    carried on); resumable again if the new stream is."""
    if parked.registry is not None:
        parked.registry.release(parked)
    stream.received += parked.stream_received
    app = parked.app
    relay = (
        Relay(app, stream, pod.relay_done, parked.record)
        if parked.client_side
        else Relay(stream, app, pod.relay_done, parked.record)
    )
    pod.track(relay, parked.authorized)
    relay.start()
    if stream.token is not None and not relay.finished:
        watch(pod, relay, stream, app, then)
    return relay

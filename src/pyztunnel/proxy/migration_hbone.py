"""Migration of resumable HBONE streams, the proxy's side (docs/migration.md, "HBONE streams"): an HBONE leg's TLS and
HTTP/2 state cannot move, so the stream is stopped with its peer at a known byte count (proxy/resumable.py), only the
app's socket moves, and a new CONNECT under the stream's token continues it, from whichever end holds the CONNECT's
client role. A stream stopped for a taker that then did not take it goes on from here (`StreamExport.resume`); an app
socket parked here for its peer's resume moves like one (`ParkedExport`)."""

from __future__ import annotations

import asyncio
import socket
import time

from pyztunnel.lifecycle import faults
from pyztunnel.lifecycle.migrate_header import ConnHeader
from pyztunnel.lifecycle.migrate_io import Exported
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.proxy.migrated import dup_all, flush_writes, leg_ends, let_go, policy_view, record_context
from pyztunnel.proxy.outbound import continue_as_client
from pyztunnel.proxy.parking import Parked
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg
from pyztunnel.proxy.resumable import ResumeState
from pyztunnel.proxy.stream import StreamLeg

HBONE_KIND_OF = {"inbound": "inbound-hbone", "outbound": "outbound-hbone"}
HBONE_QUIESCE_TIMEOUT = 3.0  # a stop needs the peer's answer: a round trip and its flush, on a loaded node
TOKEN_KEY = "hbone.resume_token"  # in a migrated header's context: the stream to continue


def resumable_stream(relay: Relay) -> ResumeState | None:
    """The relay's resumable HBONE stream, if it is one (app socket + a stream both ends agreed to resume) that is
    still open both ways and not being stopped already."""
    if relay.finished or relay.error is not None or not isinstance(relay.info, ConnectionRecord):
        return None
    stream = relay.up if isinstance(relay.up, StreamLeg) else relay.down
    state = stream.control if isinstance(stream, StreamLeg) else None
    if not isinstance(state, ResumeState) or state.announced or state.broken:
        return None
    app, stream = state.app, state.stream
    if not (app.open and app.steady and stream.steady and stream.conn.open):
        return None
    return state


class StreamExport:
    """One app socket ↔ resumable HBONE stream relay, as `migrate_io.Exportable`: the stream is stopped with its
    peer, the app socket moves, and the new instance continues the stream under its token."""

    def __init__(self, pod: PodProxy, state: ResumeState) -> None:
        self.pod = pod
        self.state = state
        self.relay = state.relay

    async def prepare(self, within: float) -> Exported | None:
        state, app = self.state, self.state.app
        if resumable_stream(self.relay) is not state:
            return None
        within = max(within, HBONE_QUIESCE_TIMEOUT)
        if not await state.stop(within):
            if state.announced:
                self._spoil("hbone stream could not be stopped for the upgrade")
            return None
        exported = await _export_app(self.pod.key, self.relay.info, app, state.stream.received, state.token, within)
        if exported is None:
            self.resume()  # stopped, but the app socket cannot go: it goes on from here
        return exported

    def release(self) -> None:
        let_go(self.pod, self.relay, (self.state.app,))

    def resume(self) -> None:
        # Stopped with the peer for a taker that did not take it (it died, refused, or never answered): the stream
        # goes on from here, as if the peer had stopped it. At the client end we open the resume CONNECT ourselves;
        # at the server end the app socket waits for the peer's, which reaches whichever instance accepts on our
        # listeners next (the next taker is offered the parked socket: ParkedExport).
        parked = self.state.park_here()
        if parked is None:
            self._spoil("the app closed its connection while its hbone stream was stopped")
        else:
            self.state.then(self.state.pod, parked)

    def _spoil(self, why: str) -> None:
        if not self.relay.finished:
            self.relay.reset(ConnectionResetError(why))


class ParkedExport:
    """A stopped stream's app socket parked here at the server end, waiting for the peer's resume CONNECT (a taker
    died with it in its batch, and we kept it): it moves like a stopped stream, and the resume finds it there."""

    def __init__(self, pod: PodProxy, parked: Parked) -> None:
        self.pod = pod
        self.parked = parked
        self._withdrawn = False

    async def prepare(self, within: float) -> Exported | None:
        parked, resumes = self.parked, self.pod.shared.resumes
        if parked.app.done or not resumes.withdraw(parked):
            return None
        self._withdrawn = True
        exported = await _export_app(
            self.pod.key, parked.record, parked.app, parked.stream_received, parked.token, within
        )
        if exported is None:
            self.resume()
        return exported

    def release(self) -> None:
        self._withdrawn = False
        self.pod.shared.resumes.release(self.parked)
        self.parked.app.release()

    def resume(self) -> None:
        if self._withdrawn:
            self._withdrawn = False
            self.pod.shared.resumes.restore(self.parked)


async def _export_app(
    uid: str, record: ConnectionRecord, app: TcpLeg, stream_received: int, token: str, within: float
) -> Exported | None:
    """The app socket of a stopped resumable stream, flushed and duplicated, as an `hbone` kind; None if it cannot
    be (still writing after `within`, closed meanwhile, out of fds)."""
    ends = leg_ends(app) if await flush_writes((app,), within, lambda: not app.done) else None
    fds = dup_all((app,)) if ends is not None else None
    if fds is None:
        return None
    outbound = record.direction == "outbound"
    context = record_context(
        record,
        app.received if outbound else stream_received,
        stream_received if outbound else app.received,
    )
    context[TOKEN_KEY] = token
    return Exported(
        uid=uid,
        kind=HBONE_KIND_OF[record.direction],
        down=ends if outbound else None,
        up=None if outbound else ends,
        elapsed=max(0.0, time.monotonic() - record.start),
        context=context,
        down_fd=fds[0] if outbound else None,
        up_fd=None if outbound else fds[0],
    )


async def adopt_stream(pod: PodProxy, header: ConnHeader, record: ConnectionRecord, sock: socket.socket | None) -> bool:
    """An app socket whose HBONE stream was stopped by the previous instance: continue the stream from here (as its
    client), or wait for the peer to continue it (as its server)."""
    token = header.context.get(TOKEN_KEY)
    if sock is None or not isinstance(token, str):
        return False
    faults.reached("new-stream-resume")
    outbound = record.direction == "outbound"
    app = TcpLeg(start_paused=True)
    sock.setblocking(False)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: app, sock)
    app.received += record.bytes_recv if outbound else record.bytes_sent
    stream_received = record.bytes_sent if outbound else record.bytes_recv
    parked = Parked(pod.key, app, record, token, stream_received, client_side=outbound, authorized=policy_view(record))
    pod.shared.telemetry.opened(record)
    if outbound:
        continue_as_client(pod, parked)
    else:
        pod.shared.resumes.park(parked)
    return True

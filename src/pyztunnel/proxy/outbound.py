"""Outbound (15001): original destination → service VIP (a healthy endpoint) or workload IP → HBONE when the
destination is in the mesh, plain TCP otherwise (reference §3, DESIGN §4); and the client end of resumable streams
(`continue_as_client`: a stopped stream continued by a new CONNECT)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket

from pyztunnel.identity import tls
from pyztunnel.identity.spiffe import Identity, try_parse
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.protocols import hbone, resume
from pyztunnel.proxy import resumable
from pyztunnel.proxy.config import hbone_limits
from pyztunnel.proxy.h2conn import H2ClientConn
from pyztunnel.proxy.netsock import family_of
from pyztunnel.proxy.parking import PARK_TIMEOUT, Parked
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Leg, Refused, Relay, TcpLeg, connect_leg
from pyztunnel.proxy.stream import StreamLeg
from pyztunnel.proxy.telemetry import (
    OUTBOUND,
    baggage_for,
    describe_dst,
    describe_src,
    fail,
    identity_of,
    new_record,
)
from pyztunnel.proxy.tlssock import open_tls
from pyztunnel.workloads.index import Upstream, WorkloadIndex
from pyztunnel.workloads.model import GatewayAddress, Service, Workload

_log = logging.getLogger("pyztunnel.proxy.outbound")

OPEN_ATTEMPTS = 3  # a CONNECT refused by a peer going away is opened again, on another connection
# A resume CONNECT that finds no one (the peer's new instance died with our stream, its listeners wait for the next
# one) is tried again while the peer may still hold the app socket: it parks it for parking.PARK_TIMEOUT.
RESUME_WITHIN = PARK_TIMEOUT
RESUME_BACKOFF = (0.1, 1.0)  # first and longest wait between attempts


class OutboundError(Exception):
    def __init__(self, message: str, flags: str = "-", answered: bool = False) -> None:
        super().__init__(message)
        self.flags = flags
        self.answered = answered  # the peer answered the CONNECT (a status other than 200): asking again is futile


def addr(ip: str, port: int) -> str:
    return hbone.format_authority(ip, port)


@functools.lru_cache(maxsize=4096)
def _dst_addr(ip: str, port: int) -> str:
    # `addr` of a destination: the records of the connections to it share one string. Bounded: apps choose them.
    return addr(ip, port)


def resolve(index: WorkloadIndex, ip: str, port: int, src: Workload | None = None) -> Upstream:
    """Where a connection to ip:port goes (a service VIP picks one healthy endpoint at random). A service or
    workload with a waypoint sends it to the waypoint instead, original destination as `:authority` (ztunnel;
    not when the source is that waypoint)."""
    service = index.service_by_vip(ip)
    if service is not None:
        via = _through_waypoint(index, service.waypoint, src, ip, port, service)
        if via is not None:
            return via
        endpoints = index.endpoints(service, port)
        if not endpoints:
            raise OutboundError(f"no healthy upstream for {service.hostname}:{port}", "-")
        chosen = random.choice(endpoints)
        target, target_ip = chosen.workload, chosen.workload.workload_ips[0]
        via = _through_waypoint(index, target.waypoint, src, target_ip, chosen.target_port, service)
        return via or Upstream(target_ip, chosen.target_port, target, service)
    workload = index.workload_by_ip(ip)
    via = _through_waypoint(index, workload.waypoint if workload else None, src, ip, port, None)
    return via or Upstream(ip, port, workload)


def _through_waypoint(
    index: WorkloadIndex,
    gateway: GatewayAddress | None,
    src: Workload | None,
    ip: str,
    port: int,
    service: Service | None,
) -> Upstream | None:
    """The upstream through a waypoint, if there is one to go through (none for the waypoint's own traffic)."""
    if gateway is None:
        return None
    waypoint = index.waypoint(gateway)
    if waypoint is None:
        raise OutboundError(f"waypoint {gateway.destination} has no healthy workload", "-")
    if src is not None and src.key == waypoint.key:
        return None
    return Upstream(waypoint.workload_ips[0], port, waypoint, service, addr(ip, port), gateway.hbone_mtls_port)


async def handle(pod: PodProxy, sock: socket.socket) -> None:
    """Set up one outbound connection; once both legs exist the Relay carries it and this coroutine ends."""
    loop = asyncio.get_running_loop()
    shared = pod.shared
    try:
        peer_ip, peer_port = sock.getpeername()[:2]
    except OSError:
        sock.close()
        return
    record = new_record(OUTBOUND, addr(peer_ip, peer_port))
    listen_port = int(sock.getsockname()[1])
    dst = pod.env.original_dst(sock, listen_port)
    if dst is None:
        fail(record, "no original destination")
        shared.telemetry.failed(record)
        sock.close()
        return
    dst_ip, dst_port = dst
    record.dst_addr = _dst_addr(dst_ip, dst_port)
    if dst_port in hbone.ILLEGAL_PORTS and (dst_ip == sock.getsockname()[0] or dst_ip.startswith("127.")):
        fail(record, f"self call to illegal port {dst_port}")
        shared.telemetry.failed(record)
        sock.close()
        return
    down = TcpLeg(start_paused=True)
    try:
        await loop.connect_accepted_socket(lambda: down, sock)
    except OSError:
        sock.close()
        return
    src = await pod.workload()
    describe_src(record, src)
    try:
        upstream = resolve(shared.indexes.index, dst_ip, dst_port, src)
        describe_dst(record, upstream.workload, upstream.service)
        up: Leg
        if upstream.hbone:
            up = await _hbone(pod, record, src, upstream, peer_ip, peer_port)
        else:
            record.dst_addr = _dst_addr(upstream.ip, upstream.port)
            shared.telemetry.opened(record)
            up = await _tcp(pod, upstream)
    except OutboundError as exc:
        _finish_failed(pod, down, record, str(exc), exc.flags)
        return
    except (OSError, TimeoutError) as exc:
        _finish_failed(pod, down, record, f"connect: {exc or type(exc).__name__}", "CONNECT")
        return
    except Exception as exc:  # a bug or an h2 state we did not foresee: fail this connection, keep the record whole
        _log.exception("outbound connection setup failed")
        _finish_failed(pod, down, record, f"internal error: {exc!r}", "-")
        return
    relay = Relay(down, up, pod.relay_done, record)
    pod.track(relay)
    relay.start()
    if isinstance(up, StreamLeg) and up.token is not None:
        resumable.watch(pod, relay, up, down, then=continue_as_client)


def _finish_failed(pod: PodProxy, down: TcpLeg, record: ConnectionRecord, error: str, flags: str) -> None:
    fail(record, error, flags)
    record.bytes_recv = down.received
    down.abort()
    pod.shared.telemetry.complete(record)


async def _tcp(pod: PodProxy, upstream: Upstream) -> TcpLeg:
    sock = await pod.env.outgoing(family_of(upstream.ip))
    return await connect_leg(sock, (upstream.ip, upstream.port), pod.shared.settings.connect_timeout)


async def _hbone(
    pod: PodProxy, record: ConnectionRecord, src: Workload | None, upstream: Upstream, src_ip: str, src_port: int
) -> Leg:
    shared = pod.shared
    if src is None:
        raise OutboundError("unknown source workload: no identity to connect with over HBONE", "IDENTITY_ERROR")
    assert upstream.workload is not None
    src_id = identity_of(src)
    dst_id = identity_of(upstream.workload)
    expected = [dst_id]
    if upstream.service is not None and upstream.authority is None:  # a waypoint is checked by its own identity
        expected += [i for san in upstream.service.subject_alt_names if (i := try_parse(san)) is not None]
    record.mtls = True
    record.src_identity = src_id.uri
    record.dst_identity = dst_id.uri
    record.dst_addr = _dst_addr(upstream.ip, upstream.hbone_port)
    record.dst_hbone_addr = upstream.authority or _dst_addr(upstream.ip, upstream.port)
    shared.telemetry.opened(record)  # ztunnel counts it once the destination (and its identity) is known

    host = upstream.service.hostname if upstream.service is not None else None
    headers = hbone.connect_headers(
        record.dst_hbone_addr,
        forwarded_for=hbone.forwarded(src_ip, src_port, host),
        baggage_value=baggage_for(src, shared.cluster_id),
        traceparent_value=hbone.traceparent(os.urandom(16), os.urandom(8)),
    )
    token = resume.new_token(os.urandom(16)) if shared.settings.hbone_resume else None
    if token is not None:
        headers.append((resume.STREAM_HEADER, token.encode()))
    leg, response = await open_stream(pod, src_id, dst_id, expected, upstream.ip, headers, upstream.hbone_port)
    if token is not None and resume.token_in(response, resume.STREAM_HEADER) == token:
        leg.token = token  # a pyztunnel peer: this stream can outlive either end's upgrade
    return leg


async def open_stream(
    pod: PodProxy,
    src_id: Identity,
    dst_id: Identity,
    expected: list[Identity],
    ip: str,
    headers: hbone.Headers,
    port: int = hbone.HBONE_PORT,
) -> tuple[StreamLeg, hbone.Headers]:
    """A CONNECT on a pooled connection to `ip`; the stream and its 200 response, or OutboundError."""
    settings = pod.shared.settings

    async def connect() -> H2ClientConn:
        return await _connect_hbone(pod, src_id, expected, ip, port)

    for attempt in range(1, OPEN_ATTEMPTS + 1):
        conn = await pod.pool.get((src_id.uri, dst_id.uri, ip), connect)
        leg = conn.open_stream(headers)
        assert leg.response is not None
        try:
            response = await asyncio.wait_for(asyncio.shield(leg.response), settings.connect_timeout)
            leg.response = None  # taken: an idle stream holds neither the future nor the headers (~0.5 KB)
            break
        except TimeoutError:
            leg.abort()
            raise OutboundError("timed out waiting for the HBONE response", "CONNECT") from None
        except Refused as exc:
            # The peer is going away (GOAWAY crossed our CONNECT): it never saw the stream, so open it again; the
            # pool no longer hands out that connection. Nothing of the app's was read yet (its leg is paused).
            if attempt == OPEN_ATTEMPTS:
                raise OutboundError(f"hbone stream failed: {exc}", "CONNECT") from None
        except Exception as exc:
            raise OutboundError(f"hbone stream failed: {exc}", "CONNECT") from None
    status = hbone.status_of(response)
    if status != 200:
        leg.abort()
        flags = "DENY" if status == 401 else "CONNECT"
        raise OutboundError(f"http status: {status}", flags, answered=True)
    return leg, response


async def _connect_hbone(
    pod: PodProxy, src_id: Identity, expected: list[Identity], dst_ip: str, port: int = hbone.HBONE_PORT
) -> H2ClientConn:
    shared = pod.shared
    loop = asyncio.get_running_loop()
    try:
        cert = await shared.certs.get(src_id)
    except Exception as exc:
        raise OutboundError(f"no certificate for {src_id}: {exc}", "IDENTITY_ERROR") from None
    ctx = shared.tls.client(cert)
    sock = await pod.env.outgoing(family_of(dst_ip))
    try:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (dst_ip, port)), shared.settings.connect_timeout)
        except TimeoutError:
            raise OutboundError(f"timed out connecting to {addr(dst_ip, port)}", "NETWORK_POLICY") from None
        conn = H2ClientConn(shared.settings.pool_max_streams_per_connection, hbone_limits(shared.settings))
        peer: list[Identity] = []

        def verify(transport: asyncio.Transport) -> None:
            peer.append(tls.check_server_peer(transport.get_extra_info("ssl_object"), expected))

        conn.verify = verify
        try:
            await open_tls(
                conn,
                sock,
                ctx,
                server_side=False,
                handshake_timeout=float(shared.settings.tls_handshake_timeout),
                transport=shared.settings.tls_transport,
            )
        except (OSError, TimeoutError) as exc:
            raise OutboundError(f"tls handshake: {exc or type(exc).__name__}", "TLS_FAILURE") from None
    except BaseException:
        sock.close()
        raise
    if not peer:
        raise OutboundError(f"tls: {conn.error}", "TLS_FAILURE")
    conn.peer_identity = peer[0].uri
    conn.info = {"dst.addr": addr(dst_ip, port), "dst.identity": peer[0].uri}
    return conn


def continue_as_client(pod: PodProxy, parked: Parked) -> None:
    """Continue a stopped stream from the client end, in the background (a task of the pod); until then the app
    socket is a live connection of the pod's proxy."""
    pod.shared.resumes.hold(parked)
    pod.tasks.spawn(resume_as_client(pod, parked), "hbone-resume")


async def resume_as_client(pod: PodProxy, parked: Parked) -> None:
    """A new CONNECT naming the stopped stream, to the same destination; the app socket joins it."""
    record, resumes = parked.record, pod.shared.resumes
    try:
        src_id, dst_id = try_parse(record.src_identity or ""), try_parse(record.dst_identity or "")
        target = hbone.parse_authority(record.dst_hbone_addr or "")
        if src_id is None or dst_id is None or target is None:
            raise OutboundError("the stream's identities or destination are unknown")
        src = hbone.parse_authority(record.src_addr)
        headers = hbone.connect_headers(
            record.dst_hbone_addr,
            forwarded_for=hbone.forwarded(*src) if src is not None else "",
            baggage_value="",
            traceparent_value=hbone.traceparent(os.urandom(16), os.urandom(8)),
        )
        headers.append((resume.RESUME_HEADER, parked.token.encode()))
        leg, response = await _open_resume(pod, parked, src_id, dst_id, target[0], headers)
    except asyncio.CancelledError:  # the pod went away meanwhile
        resumes.give_up(parked, "hbone resume cancelled: the pod's proxy stopped")
        raise
    except (OutboundError, OSError, TimeoutError) as exc:
        resumes.give_up(parked, f"hbone resume failed: {exc or type(exc).__name__}")
        return
    except Exception as exc:
        _log.exception("hbone resume failed")
        resumes.give_up(parked, f"hbone resume failed: {exc!r}")
        return
    if parked.app.done:
        leg.abort()
        resumes.give_up(parked, "the app closed its connection while its hbone stream was resuming")
        return
    if resume.token_in(response, resume.STREAM_HEADER) == parked.token:
        leg.token = parked.token
    resumable.attach(pod, parked, leg, then=continue_as_client)


async def _open_resume(
    pod: PodProxy, parked: Parked, src_id: Identity, dst_id: Identity, ip: str, headers: hbone.Headers
) -> tuple[StreamLeg, hbone.Headers]:
    """The resume CONNECT, asked again (backing off) while it fails without an answer and the peer may still hold
    the stream: the instance it reached may have died with it, and the next one takes over its listeners."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESUME_WITHIN
    wait, longest = RESUME_BACKOFF
    while True:
        try:
            return await open_stream(pod, src_id, dst_id, [dst_id], ip, headers)
        except (OutboundError, OSError, TimeoutError) as exc:
            if getattr(exc, "answered", False) or parked.app.done or loop.time() + wait >= deadline:
                raise
            _log.info("hbone resume failed; trying again", extra={"fields": {"error": str(exc), "wait": wait}})
        await asyncio.sleep(wait)
        wait = min(2 * wait, longest)

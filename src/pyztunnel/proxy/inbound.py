"""Inbound: HBONE on 15008 (mTLS + HTTP/2 CONNECT, §3.1–3.2) and plaintext on 15006 (§2.4), both authorized with
the L4 policies (§5.3) before a byte reaches the app; and the server end of resumable streams (`serve_resume`)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from pyztunnel import authz
from pyztunnel.identity import tls
from pyztunnel.identity.spiffe import Identity
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.protocols import hbone, resume
from pyztunnel.proxy import resumable
from pyztunnel.proxy.config import hbone_limits
from pyztunnel.proxy.h2conn import H2ServerConn
from pyztunnel.proxy.netsock import family_of
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.relay import Relay, TcpLeg, connect_leg
from pyztunnel.proxy.stream import StreamLeg
from pyztunnel.proxy.telemetry import (
    INBOUND,
    baggage_for,
    describe_dst,
    describe_src,
    fail,
    identity_of,
    new_record,
)
from pyztunnel.proxy.tlssock import open_tls

_log = logging.getLogger("pyztunnel.proxy.inbound")


def _addr(ip: str, port: int) -> str:
    return hbone.format_authority(ip, port)


def _endpoints(sock: socket.socket) -> tuple[tuple[str, int], tuple[str, int]] | None:
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        return None
    return (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))


async def handle_hbone(pod: PodProxy, sock: socket.socket) -> None:
    """TLS handshake with the pod's certificate, client identity checked, then an HTTP/2 server on the connection."""
    shared = pod.shared
    ends = _endpoints(sock)
    if ends is None:
        sock.close()
        return
    (peer_ip, peer_port), (local_ip, local_port) = ends
    record = new_record(INBOUND, _addr(peer_ip, peer_port), _addr(local_ip, local_port), mtls=True)
    workload = await pod.workload()
    if workload is None:
        fail(record, "unknown local workload: no certificate to serve")
        shared.telemetry.failed(record)
        sock.close()
        return
    local_id = Identity.for_workload(workload.namespace, workload.service_account, workload.trust_domain)
    try:
        cert = await shared.certs.get(local_id)
    except Exception as exc:
        fail(record, f"no certificate for {local_id}: {exc}", "IDENTITY_ERROR")
        shared.telemetry.failed(record)
        sock.close()
        return
    conn = H2ServerConn(
        lambda c, leg, headers: _serve_stream_guarded(pod, c, leg, headers), hbone_limits(shared.settings)
    )
    conn.info = {"src.addr": record.src_addr, "dst.addr": record.dst_addr, "direction": INBOUND}

    def verify(transport: asyncio.Transport) -> None:
        peer = tls.check_client_peer(transport.get_extra_info("ssl_object"), local_id.trust_domain)
        conn.info["src.identity"] = peer.uri

    conn.verify = verify
    try:
        await open_tls(
            conn,
            sock,
            shared.tls.server(cert),
            server_side=True,
            handshake_timeout=float(shared.settings.tls_handshake_timeout),
            transport=shared.settings.tls_transport,
        )
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
        fail(record, f"tls handshake: {exc or type(exc).__name__}", "TLS_FAILURE")
        shared.telemetry.failed(record)
        sock.close()
        return
    if "src.identity" not in conn.info:
        fail(record, f"tls: {conn.error}", "TLS_FAILURE")
        shared.telemetry.failed(record)
        return
    conn.info["local_ip"] = local_ip
    pod.track_server(conn)

    def ended(_: object) -> None:
        # A connection-level failure (HTTP/2 protocol error, oversized headers, ping timeout) is logged once.
        if conn.error is not None:
            fail(record, conn.error)
            shared.telemetry.failed(record)

    conn.lost.add_done_callback(ended)


async def _serve_stream_guarded(pod: PodProxy, conn: H2ServerConn, leg: StreamLeg, headers: hbone.Headers) -> None:
    """One CONNECT's setup, a task of its connection: cancelled if the stream is reset before it is answered."""
    record = new_record(INBOUND, str(conn.info["src.addr"]), str(conn.info["dst.addr"]), mtls=True)
    record.src_identity = str(conn.info["src.identity"])
    try:
        await _serve_stream(pod, conn, leg, headers, record)
    except asyncio.CancelledError:
        fail(record, "stream reset before it was answered")
        pod.shared.telemetry.complete(record)
        raise
    except Exception:  # a bug or an unforeseen h2 state: reset this stream only, the connection serves others
        _log.exception("inbound stream setup failed")
        leg.abort()


async def _serve_stream(
    pod: PodProxy, conn: H2ServerConn, leg: StreamLeg, headers: hbone.Headers, record: ConnectionRecord
) -> None:
    shared = pod.shared
    peer_identity = str(record.src_identity)
    arrived = str(conn.info["local_ip"]) if pod.env.check_authority_ip else None
    request = hbone.parse_connect(headers, arrived)
    if isinstance(request, hbone.Reject):
        _reject(pod, conn, leg, record, request.status, request.reason, request.response_flags)
        return
    record.dst_hbone_addr = request.authority
    resuming = resume.token_in(headers, resume.RESUME_HEADER) if shared.settings.hbone_resume else None
    if resuming is not None:
        await serve_resume(pod, conn, leg, record, resuming)
        return
    forwarded = hbone.forwarded_for(request.forwarded)
    src_ip = forwarded[0] if forwarded else record.src_addr.rpartition(":")[0].strip("[]")
    index = shared.indexes.index
    describe_src(record, index.workload_by_ip(src_ip))
    workload = index.workload_by_ip(request.ip)
    describe_dst(record, workload)
    if workload is None:
        _reject(pod, conn, leg, record, 503, f"unknown destination workload {request.ip}", "-")
        return
    record.dst_identity = identity_of(workload).uri
    shared.telemetry.opened(record)
    info = authz.ConnectionInfo(src_ip=src_ip, dst_ip=request.ip, dst_port=request.port, identity=peer_identity)
    decision = authz.evaluate(index.policies_for(workload), info)
    if not decision.allowed:
        _reject(pod, conn, leg, record, hbone.DENIED_STATUS, f"connection denied: {decision.reason}", "DENY")
        return
    try:
        up = await _connect_app(pod, request.ip, request.port, src_ip)
    except (OSError, TimeoutError) as exc:
        _reject(pod, conn, leg, record, 503, f"connect to app: {exc or type(exc).__name__}", "CONNECT")
        return
    # dst.addr stays the original destination (<pod>:15008), as ztunnel reports inbound connections
    response = hbone.response_headers(200, baggage_for(workload, shared.cluster_id))
    token = resume.token_in(headers, resume.STREAM_HEADER) if shared.settings.hbone_resume else None
    if token is not None:
        response.append((resume.STREAM_HEADER, token.encode()))
        leg.token = token
    conn.respond(leg, response)
    relay = Relay(leg, up, pod.relay_done, record)
    pod.track(relay, info)
    relay.start()
    if token is not None:
        resumable.watch(pod, relay, leg, up, then=resumable.park_at_server)


async def serve_resume(pod: PodProxy, conn: H2ServerConn, leg: StreamLeg, record: ConnectionRecord, token: str) -> None:
    """A CONNECT that continues a stopped stream here (after its app socket came from our previous instance, or
    because the client end moved): the parked app socket, if this peer held the stream, joins the new stream."""
    resumes = pod.shared.resumes
    parked = await resumes.claim(token, pod.key, str(conn.info["src.identity"]), record.dst_hbone_addr)
    if parked is None:
        conn.respond(leg, hbone.response_headers(resume.GONE_STATUS), end=True)
        fail(record, "no stopped hbone stream to resume under that token")
        pod.shared.telemetry.complete(record)
        return
    leg.token = token
    conn.respond(leg, [*hbone.response_headers(200), (resume.STREAM_HEADER, token.encode())])
    resumable.attach(pod, parked, leg, then=resumable.park_at_server)


def _reject(
    pod: PodProxy,
    conn: H2ServerConn,
    leg: StreamLeg,
    record: ConnectionRecord,
    status: int,
    reason: str,
    flags: str,
) -> None:
    conn.respond(leg, hbone.response_headers(status), end=True)
    fail(record, reason, flags)
    pod.shared.telemetry.complete(record)


async def _connect_app(pod: PodProxy, ip: str, port: int, client_ip: str) -> TcpLeg:
    """Connect to the app inside the pod (a marked socket, so the pod's capture rules let it through), from the
    client's address where the env preserves it."""
    sock = await pod.env.to_app(family_of(ip), client_ip)
    return await connect_leg(sock, (ip, port), pod.shared.settings.connect_timeout)


async def handle_plaintext(pod: PodProxy, sock: socket.socket) -> None:
    """15006: traffic from outside the mesh. Authorized without an identity, then forwarded to the app."""
    shared = pod.shared
    loop = asyncio.get_running_loop()
    ends = _endpoints(sock)
    if ends is None:
        sock.close()
        return
    (peer_ip, peer_port), (_local_ip, local_port) = ends
    record = new_record(INBOUND, _addr(peer_ip, peer_port))
    dst = pod.env.original_dst(sock, local_port)
    if dst is None or dst[1] in hbone.ILLEGAL_PORTS:
        fail(record, "no usable original destination")
        shared.telemetry.failed(record)
        sock.close()
        return
    dst_ip, dst_port = dst
    record.dst_addr = _addr(dst_ip, dst_port)
    index = shared.indexes.index
    workload = index.workload_by_ip(dst_ip) or await pod.workload()
    describe_dst(record, workload)
    describe_src(record, index.workload_by_ip(peer_ip))
    down = TcpLeg(start_paused=True)
    try:
        await loop.connect_accepted_socket(lambda: down, sock)
    except OSError:
        sock.close()
        return
    shared.telemetry.opened(record)
    info = authz.ConnectionInfo(src_ip=peer_ip, dst_ip=dst_ip, dst_port=dst_port, identity=None)
    if workload is not None:
        decision = authz.evaluate(index.policies_for(workload), info)
        if not decision.allowed:
            fail(record, f"connection denied: {decision.reason}", "DENY")
            down.abort()
            shared.telemetry.complete(record)
            return
    try:
        up = await _connect_app(pod, dst_ip, dst_port, peer_ip)
    except (OSError, TimeoutError) as exc:
        fail(record, f"connect to app: {exc or type(exc).__name__}", "CONNECT")
        down.abort()
        shared.telemetry.complete(record)
        return
    relay = Relay(down, up, pod.relay_done, record)
    pod.track(relay, info)
    relay.start()

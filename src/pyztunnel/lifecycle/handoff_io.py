"""The asyncio shell of the listener handoff (protocol and reasoning in handoff.py).

Old instance: `serve(path, source)` listens on the node's `handoff.sock` and hands over the listeners `source`
names. New instance: `adopt(path, pods, within=…)` takes them, validates every fd (`probe` + `handoff.validate`),
closes and logs what it rejects, and returns the adopted sockets plus the listeners it must bind itself, with why.
Once it accepts on the adopted sockets it calls `Adoption.confirm()`; the old one then stops accepting on them, for as
long as the connection (the lease) lives: `Adoption.close()` (or the new instance's death) gives them back.

Who may connect: the socket is 0600, a peer of another uid is refused (SO_PEERCRED, both ways), and both ends prove
they hold the node's handoff key (`key`, default the file beside the socket: handoff_key.py) before anything moves.

SCM_RIGHTS through `pyztunnel.unixfd` (shared with ZDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pyztunnel import unixfd
from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.lifecycle import faults, handoff, handoff_key
from pyztunnel.lifecycle.handoff import ListenerKey, Netns, Owned, PodRequest, SocketFacts
from pyztunnel.localsock import check_same_uid, listen_unix, peer_cred

_log = logging.getLogger("pyztunnel.lifecycle.handoff")

SIOCGSKNS = 0x894C  # ioctl on a socket: an fd of the network namespace the socket lives in (needs CAP_NET_ADMIN)
SO_DOMAIN = getattr(socket, "SO_DOMAIN", 39)
SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", 30)
DEFAULT_TIMEOUT = 5.0
SERVER_IDLE_TIMEOUT = 30.0


class PeerGone(ConnectionError):
    pass


# Framing: one SOCK_SEQPACKET record = one JSON header (+ fds) ---------------------------------------------------------


async def send_msg(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    try:
        await unixfd.send_with_fds(sock, data, fds)
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise PeerGone(str(exc)) from None


async def recv_msg(sock: socket.socket, max_fds: int = handoff.MAX_FDS_PER_MESSAGE) -> tuple[bytes, list[int]]:
    """One record and the fds that came with it. The caller owns the fds. EOF raises PeerGone."""
    try:
        data, fds, flags = await unixfd.recv_with_fds(sock, handoff.MAX_MESSAGE_BYTES, max_fds)
    except ConnectionResetError as exc:
        raise PeerGone(str(exc)) from None
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        unixfd.close_fds(fds)
        raise handoff.ProtocolError("message or its fds truncated (too many fds, or RLIMIT_NOFILE reached)")
    if not data and not fds:
        raise PeerGone("handoff peer closed the connection")
    return data, fds


def node_key(path: Path, key: bytes | None) -> bytes:
    """`key`, or the node's key file beside the handoff socket `path` (created by the first instance)."""
    return key if key is not None else handoff_key.load_or_create(handoff_key.beside(path))


def refuse_peer(conn: socket.socket) -> str | None:
    """Why the process at the other end of `conn` gets nothing (another uid), or None."""
    try:
        return check_same_uid(peer_cred(conn))
    except OSError as exc:
        return f"no peer credentials: {exc.strerror}"


async def connect(path: Path) -> socket.socket:
    """A connection to the instance serving `path`, whose uid has been checked (raises PeerRefused, OSError)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    conn.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(conn, str(path))
        if (refused := refuse_peer(conn)) is not None:
            raise PeerRefused(f"handoff peer refused: {refused}")
    except BaseException:
        conn.close()
        raise
    return conn


class PeerRefused(ConnectionError):
    pass


# Probing a received fd ------------------------------------------------------------------------------------------------


def socket_netns(sock: socket.socket) -> Netns:
    ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS, 0)
    try:
        st = os.fstat(ns_fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(ns_fd)


def wrap_fd(fd: int) -> tuple[socket.socket | None, str | None]:
    """A received fd as a socket object, which then owns it; or why it is not a socket."""
    try:
        return socket.socket(fileno=fd), None
    except OSError as exc:
        return None, f"not a socket ({os.strerror(exc.errno or errno.ENOTSOCK)})"


def socket_kind(sock: socket.socket) -> tuple[int, int, bool]:
    """(family, type, listening) of a socket, as the kernel says (raises OSError)."""
    family = sock.getsockopt(socket.SOL_SOCKET, SO_DOMAIN)
    kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    return family, kind, bool(sock.getsockopt(socket.SOL_SOCKET, SO_ACCEPTCONN))


def probe(fd: int) -> tuple[socket.socket | None, SocketFacts]:
    """Wrap a received fd (the socket object then owns it) and find out what it really is."""
    sock, not_socket = wrap_fd(fd)
    if sock is None:
        return None, SocketFacts(error=not_socket)
    try:
        family, kind, accepting = socket_kind(sock)
        port = sock.getsockname()[1] if family in (socket.AF_INET, socket.AF_INET6) else None
    except OSError as exc:
        return sock, SocketFacts(error=f"cannot inspect socket: {exc.strerror}")
    netns: Netns | None = None
    error = None
    try:
        netns = socket_netns(sock)
    except OSError as exc:
        error = f"cannot read its network namespace (SIOCGSKNS: {exc.strerror})"
    return sock, SocketFacts(family=family, type=kind, accepting=accepting, port=port, netns=netns, error=error)


# The new instance -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Adoption:
    """What a handoff gave: listening sockets to accept on, and the listeners to bind because nobody offered them."""

    sockets: dict[ListenerKey, socket.socket]
    to_bind: dict[ListenerKey, str]
    _conn: socket.socket | None = None
    _client: handoff.HandoffClient | None = None
    _confirmed: bool = False

    def take(self, uid: str, port: int) -> socket.socket | None:
        """The adopted listener for (pod, port), once; None means bind your own (the proxy's `adopt` hook)."""
        return self.sockets.pop(ListenerKey(uid, port), None)

    @property
    def leased(self) -> bool:
        """The old instance has released our listeners to us, for as long as this connection lives."""
        return self._conn is not None and self._confirmed

    def close_unused(self) -> int:
        """Close adopted listeners nobody took (a pod deleted meanwhile). Only our duplicate goes: harmless."""
        unused = list(self.sockets.values())
        for sock in unused:
            sock.close()
        self.sockets.clear()
        return len(unused)

    def pods_to_bind(self) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        for key, reason in sorted(self.to_bind.items()):
            out.setdefault(key.uid, {})[key.port] = reason
        return out

    async def confirm(self, keys: Sequence[ListenerKey] | None = None, within: float = DEFAULT_TIMEOUT) -> bool:
        """Tell the old instance we accept on these (default: all adopted); it stops accepting on them until the
        connection, kept open as the lease, closes (`close()`, or our exit). Never fails the caller: with the peer
        gone, both accepting on the shared socket is harmless, and the old one's drain stops it anyway."""
        if self._conn is None or self._client is None:
            return False
        chosen = sorted(self._client.adopted) if keys is None else list(keys)
        try:
            async with asyncio.timeout(within):
                await send_msg(self._conn, self._client.adopted_message(chosen))
                data, fds = await recv_msg(self._conn, max_fds=1)
            for fd in fds:
                os.close(fd)
            ok = handoff.decode(data).get("type") == "released"
        except (TimeoutError, OSError, handoff.ProtocolError) as exc:
            _log.warning("handoff peer did not confirm release", extra={"fields": {"error": str(exc) or "timeout"}})
            ok = False
        if ok:
            self._confirmed = True
            faults.reached("new-confirmed")
        else:
            self.close()
        return ok

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def adopt(
    path: Path, pods: Sequence[PodRequest], within: float = DEFAULT_TIMEOUT, key: bytes | None = None
) -> Adoption:
    """Take over the listeners of `pods` from the instance serving `path`. Never raises for a bad or missing peer:
    whatever could not be adopted is in `to_bind`, with the reason, and is logged."""
    client = handoff.HandoffClient(pods, node_key(path, key))
    sockets: dict[ListenerKey, socket.socket] = {}
    conn: socket.socket | None = None
    try:
        faults.reached("new-before-handoff")
        async with asyncio.timeout(within):
            try:
                conn = await connect(path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                client.fail(f"no handoff peer at {path} ({exc.strerror})")
                raise _NoPeer from None
            await send_msg(conn, client.start())
            while client.state is not handoff.ClientState.FINISHED:
                data, fds = await recv_msg(conn)
                probed = [probe(fd) for fd in fds]
                step = client.receive(data, [facts for _, facts in probed])
                for index, listener in step.keep:
                    sock = probed[index][0]
                    assert sock is not None  # validate() rejects anything probe could not wrap
                    sockets[listener] = sock
                for index, reason in step.reject:
                    sock, _ = probed[index]
                    _log.warning("rejected a handed-off fd", extra={"fields": {"reason": reason}})
                    # Our duplicate only: if it is a live listener of the old instance, it stays open there.
                    if sock is not None:
                        sock.close()
                    else:
                        os.close(fds[index])
                for out in step.send:
                    await send_msg(conn, out)
        if client.adopted:
            faults.reached("new-listeners-received")
    except _NoPeer:
        _log.info("no handoff peer, binding every listener", extra={"fields": {"path": str(path)}})
        return Adoption(sockets, client.to_bind())
    except TimeoutError:
        client.fail(f"handoff peer too slow (nothing complete within {within:g}s)")
    except PeerRefused as exc:
        client.fail(str(exc))
    except (OSError, handoff.ProtocolError) as exc:
        client.fail(f"handoff peer went away: {exc}")
    keep = conn if client.adopted else None
    if conn is not None and keep is None:
        conn.close()
    result = Adoption(sockets, client.to_bind(), keep, client)
    _report(result)
    return result


class _NoPeer(Exception):
    pass


def _asks_for_connections(data: bytes) -> bool:
    from pyztunnel.lifecycle import migrate  # the connections phase; imported only when it is served

    try:
        return migrate.is_connections_hello(handoff.decode(data))
    except handoff.ProtocolError:
        return False


def _report(result: Adoption) -> None:
    for uid, ports in result.pods_to_bind().items():
        reasons = sorted(set(ports.values()))
        _log.warning(
            "binding own listeners for pod, handoff did not provide them",
            extra={"fields": {"uid": uid, "ports": ",".join(map(str, sorted(ports))), "reason": "; ".join(reasons)}},
        )
    _log.info(
        "listener handoff done",
        extra={"fields": {"adopted": len(result.sockets), "to_bind": len(result.to_bind)}},
    )


# The old instance ---------------------------------------------------------------------------------------------------------


class ListenerSource(Protocol):
    def handoff_inventory(self) -> Mapping[str, tuple[Netns, Mapping[int, socket.socket]]]:
        """uid → (netns, port → listening socket) of every pod this instance serves now."""

    def handoff_released(self, keys: Sequence[ListenerKey]) -> None:
        """The new instance accepts on these: stop accepting on them (remove from the loop, then close if you like;
        never shutdown())."""

    def handoff_reclaimed(self, keys: Sequence[ListenerKey]) -> None:
        """The new instance that accepted on these is gone (its lease ended): accept on them again, unless draining
        (or closed) by now."""


class HandoffService:
    """The old instance's handoff server on a unix socket path."""

    def __init__(
        self,
        path: Path,
        source: ListenerSource,
        batch: int = handoff.MAX_FDS_PER_MESSAGE,
        connections: Callable[[socket.socket, bytes], Awaitable[None]] | None = None,
        key: bytes | None = None,
    ) -> None:
        self.path = path
        self._source = source
        self._key = node_key(path, key)
        self._batch = batch
        # The connections phase (lifecycle.migrate): a connection whose hello asks for it is served by this instead.
        self._connections = connections
        self._listener: socket.socket | None = None
        self._name_ino = 0
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Bind beside the path and rename over it, so a newer instance takes the name atomically (the previous
        instance's server keeps its own, now unnamed, socket)."""
        # A name of its own first (pid and random: two instances in two pid namespaces may share a pid).
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        sock = listen_unix(tmp, socket.SOCK_SEQPACKET, backlog=8)
        os.replace(tmp, self.path)
        self._listener = sock
        self._name_ino = os.stat(self.path).st_ino
        self._accept_task = spawn(self._accept_loop(sock), "handoff-accept")

    async def close(self) -> None:
        self._closing = True  # our own shutdown ends the leases: nothing to accept on again
        tasks = [t for t in (self._accept_task, *self._conns) if t is not None]
        await cancel_and_wait(*tasks)
        if self._listener is not None:
            # Remove the name only if it is still ours (a newer instance may have renamed its socket over it).
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._name_ino:
                    self.path.unlink()
            self._listener.close()
            self._listener = None

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            if (refused := refuse_peer(conn)) is not None:
                _log.warning("refusing handoff connection", extra={"fields": {"reason": refused}})
                conn.close()
                continue
            faults.reached("old-handoff-connected")
            task = spawn(self._serve(conn), "handoff-conn")
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _serve(self, conn: socket.socket) -> None:
        snapshot: dict[ListenerKey, socket.socket] = {}

        def inventory() -> Mapping[str, Owned]:
            out = {}
            for uid, (netns, ports) in self._source.handoff_inventory().items():
                out[uid] = Owned(netns, tuple(sorted(ports)))
                for port, lsock in ports.items():
                    snapshot[ListenerKey(uid, port)] = lsock
            return out

        machine = handoff.HandoffServer(inventory, self._key, self._batch)
        conn.setblocking(False)
        try:
            while True:
                # A lease has no idle bound: it lasts as long as the new instance.
                async with asyncio.timeout(None if machine.leased else SERVER_IDLE_TIMEOUT):
                    data, fds = await recv_msg(conn, max_fds=1)
                for fd in fds:  # the new instance never sends fds; do not leak any it did
                    os.close(fd)
                if self._connections is not None and machine.fresh and _asks_for_connections(data):
                    await self._connections(conn, data)
                    return
                step = machine.receive(data)
                for header, keys in step.send:
                    await send_msg(conn, header, [snapshot[k].fileno() for k in keys])
                if keys_count := sum(len(k) for _, k in step.send):
                    _log.info("handed over listeners", extra={"fields": {"listeners": keys_count}})
                    faults.reached("old-listeners-sent")
                if step.released:
                    self._source.handoff_released(step.released)
                    _log.info(
                        "released listeners to the new instance", extra={"fields": {"listeners": len(step.released)}}
                    )
                    faults.reached("old-released")
                if step.reclaim:
                    self._reclaim(step.reclaim, "it broke the protocol")
                if step.close:
                    return
        except (TimeoutError, PeerGone, OSError, handoff.ProtocolError) as exc:
            _log.info("handoff connection ended", extra={"fields": {"reason": str(exc) or "idle timeout"}})
        finally:
            conn.close()
            if reclaim := machine.gone():
                self._reclaim(reclaim, "it went away")

    def _reclaim(self, keys: Sequence[ListenerKey], why: str) -> None:
        if self._closing:
            return
        _log.warning(
            "the new instance that took listeners is gone; accepting on them again",
            extra={"fields": {"listeners": len(keys), "reason": why}},
        )
        self._source.handoff_reclaimed(keys)


async def serve(
    path: Path, source: ListenerSource, batch: int = handoff.MAX_FDS_PER_MESSAGE, key: bytes | None = None
) -> HandoffService:
    service = HandoffService(path, source, batch, key=key)
    await service.start()
    return service

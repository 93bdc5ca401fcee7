"""Where the proxy's sockets live: inside a pod's network namespace (in-pod mode) or on loopback (direct mode).

A `NetEnv` answers three questions for one pod: make a listening socket on a port, make a socket for an outgoing
connection, and tell the original destination of an accepted connection. In-pod (`PodNetns`) every socket is created
inside the pod netns and carries `SO_MARK=1337` so the pod's redirection rules let it through; listeners also get
`SO_REUSEPORT` so an old and a new proxy can listen side by side (reference §1.6, §2.5). Direct mode (`DirectNet`) is
the same interface on 127.0.0.x with a fixed target per outbound listener, for tests and benchmarks.

All listener creation goes through `ListenerSource.listen`, the one seam where "adopt a handed-off socket" can replace
"bind a new one"; `Acceptor` stops accepting without closing its socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

from pyztunnel import netns, reuseport
from pyztunnel.aio import TaskGroup
from pyztunnel.lifecycle.accept import AcceptLoop
from pyztunnel.tcp import nodelay

_log = logging.getLogger("pyztunnel.proxy.netsock")

INPOD_MARK = 1337
SO_ORIGINAL_DST = 80
SOL_IPV6 = 41
IP_TRANSPARENT = 19
IP_FREEBIND = 15
IPV6_TRANSPARENT = 75
LISTEN_BACKLOG = 128


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The destination before REDIRECT (`SO_ORIGINAL_DST`, IPv4 then IPv6), or None if there is none."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    except OSError:
        pass
    try:
        raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    except OSError:
        return None


def family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


class NetEnv:
    """Interface (see module doc). `name` names the pod in logs."""

    name = "net"
    # True when the destination of an accepted inbound connection must match the CONNECT authority (§3.2).
    check_authority_ip = True

    async def listener(self, port: int, ip: str | None = None) -> socket.socket:
        raise NotImplementedError

    async def outgoing(self, family: socket.AddressFamily) -> socket.socket:
        raise NotImplementedError

    async def to_app(self, family: socket.AddressFamily, client_ip: str) -> socket.socket:
        """A socket for the connection to the app; where the env can, it carries the client's address as source."""
        return await self.outgoing(family)

    def original_dst(self, sock: socket.socket, port: int) -> tuple[str, int] | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the env holds (threads); sockets belong to their users."""


_migrate_unavailable_logged = False


def _attach_migrate(sock: socket.socket) -> None:
    """tcp_migrate_req's effect for this listener's reuseport group (`reuseport`); like SO_REUSEPORT, a kernel that
    refuses only costs the backstop, so it is logged once and the listener serves on."""
    global _migrate_unavailable_logged
    try:
        reuseport.attach_migrate(sock)
    except OSError as exc:
        if not _migrate_unavailable_logged:
            _migrate_unavailable_logged = True
            _log.warning("cannot attach the reuseport migrate program", extra={"fields": {"error": str(exc)}})


def _setup_listener(
    sock: socket.socket, addr: tuple[str, int], mark: int | None, migrate: bool = False
) -> socket.socket:
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:  # ztunnel only warns here (§1.6)
            _log.warning("cannot set SO_REUSEPORT", extra={"fields": {"error": str(exc)}})
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
        if migrate:
            _attach_migrate(sock)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class PodNetns(NetEnv):
    """A pod's network namespace, given the netns fd from ZDS. One dedicated thread lives in that namespace and
    creates every socket for the pod (setns changes only the calling thread, DESIGN §8)."""

    check_authority_ip = True

    def __init__(
        self, netns_fd: int, name: str, mark: int = INPOD_MARK, original_source: bool = True, migrate: bool = False
    ) -> None:
        self.fd = netns_fd
        self.name = name
        self.mark = mark
        self.original_source = original_source
        self.migrate = migrate
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"netns-{name}", initializer=netns.setns, initargs=(netns_fd,)
        )

    async def _in_netns(self, func: Callable[[], socket.socket]) -> socket.socket:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    async def listener(self, port: int, ip: str | None = None) -> socket.socket:
        def make() -> socket.socket:
            return _setup_listener(
                socket.socket(socket.AF_INET, socket.SOCK_STREAM), (ip or "0.0.0.0", port), self.mark, self.migrate
            )

        return await self._in_netns(make)

    async def outgoing(self, family: socket.AddressFamily) -> socket.socket:
        def make() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
                nodelay(sock)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            return sock

        return await self._in_netns(make)

    async def to_app(self, family: socket.AddressFamily, client_ip: str) -> socket.socket:
        """ztunnel's original-source preservation (`ENABLE_ORIG_SRC`): a transparent socket bound to the client's
        IP, so the app sees who connected. The agent's rules (connmark 0x111, `ip rule fwmark 0x111 lookup 100`,
        local route in table 100) bring the app's replies back to this socket. Falls back to a plain marked socket
        when the kernel refuses (no privilege, address family mismatch)."""
        if not self.original_source or family_of(client_ip) != family:
            return await self.outgoing(family)

        def make() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                level = socket.SOL_IP if family == socket.AF_INET else SOL_IPV6
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
                sock.setsockopt(level, IP_TRANSPARENT if family == socket.AF_INET else IPV6_TRANSPARENT, 1)
                if family == socket.AF_INET:
                    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                sock.bind((client_ip, 0))
                nodelay(sock)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            return sock

        try:
            return await self._in_netns(make)
        except OSError as exc:
            _log.debug("original source not preserved", extra={"fields": {"error": str(exc)}})
            return await self.outgoing(family)

    def original_dst(self, sock: socket.socket, port: int) -> tuple[str, int] | None:
        return original_dst(sock)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class DirectNet(NetEnv):
    """Loopback stand-in for a pod at `ip`: listeners bind `ip:port` in this netns; an outbound (or plaintext)
    listener's original destination is a fixed target per listening port (`targets`); the inbound authority must
    match the IP the connection arrived on, as in a pod."""

    check_authority_ip = True

    def __init__(self, ip: str, targets: dict[int, tuple[str, int]] | None = None, name: str = "") -> None:
        self.ip = ip
        self.targets = dict(targets or {})
        self.name = name or ip

    async def listener(self, port: int, ip: str | None = None) -> socket.socket:
        bind_ip = ip or self.ip
        return _setup_listener(socket.socket(family_of(bind_ip), socket.SOCK_STREAM), (bind_ip, port), None)

    async def outgoing(self, family: socket.AddressFamily) -> socket.socket:
        # Connections leave from the pod's own address, as they would from a pod.
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == family_of(self.ip):
                sock.bind((self.ip, 0))
            nodelay(sock)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def original_dst(self, sock: socket.socket, port: int) -> tuple[str, int] | None:
        return self.targets.get(port)


class ListenerAdopter(Protocol):
    async def take(self, uid: str, port: int, env: NetEnv) -> socket.socket | None:
        """The previous instance's listener for (pod, port), or None: bind a new one."""

    async def confirm(self, uid: str) -> None:
        """We accept on the pod's adopted listeners now; the previous instance may stop."""


class ListenerSource:
    """The one place listeners come from. With an `adopter` (the listener handoff), a pod's listener is first asked
    of the previous instance; only if it has none is a new one bound."""

    def __init__(self) -> None:
        self.adopter: ListenerAdopter | None = None

    async def listen(self, env: NetEnv, pod_key: str, port: int, ip: str | None = None) -> socket.socket:
        if self.adopter is not None:
            adopted = await self.adopter.take(pod_key, port, env)
            if adopted is not None:
                adopted.setblocking(False)
                return adopted
        return await env.listener(port, ip)


class Acceptor:
    """Accepts on one listening socket and hands each connection to `handle`. `pause()`/`stop()` stop accepting and
    keep the socket and its queue (so it can be handed off); `close()` also closes our descriptor. Accepting happens in
    the event loop's reader callback (lifecycle's `AcceptLoop`), so stopping can never drop a connection that was
    already accepted (a task cancelled in `loop.sock_accept()` can)."""

    def __init__(
        self,
        sock: socket.socket,
        handle: Callable[[socket.socket], Awaitable[None] | None],
        name: str,
        tasks: TaskGroup,
    ) -> None:
        self.sock = sock
        self.name = name

        def accepted(conn: socket.socket) -> Awaitable[None] | None:
            nodelay(conn)
            return handle(conn)

        self._loop = AcceptLoop(sock, accepted, name, tasks=tasks)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def accepting(self) -> bool:
        return self._loop.accepting

    @property
    def accepted(self) -> int:
        return self._loop.accepted

    def start(self) -> None:
        self._loop.start()

    def pause(self) -> None:
        """Stop accepting now (sync, for signal-driven drain); the socket and its queue stay."""
        self._loop.pause()

    async def stop(self) -> None:
        self._loop.pause()

    async def close(self) -> None:
        self._loop.close()

"""One pod's proxy: its listeners (outbound 15001, inbound plaintext 15006, inbound HBONE 15008), its pool of
outbound HBONE connections, its live connections and its tasks.

The network side comes from a `NetEnv` (the pod's netns in-pod, or loopback in direct mode), so the data path is the
same code in both modes. What serves each listener (`Handlers`) is handed in by the pod set: the pod is below the
data path's entry points (inbound, outbound) and knows none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable

from pyztunnel import authz
from pyztunnel.aio import TaskGroup
from pyztunnel.observe.access import ConnectionRecord
from pyztunnel.protocols import hbone
from pyztunnel.proxy.h2conn import H2ServerConn
from pyztunnel.proxy.netsock import Acceptor, NetEnv
from pyztunnel.proxy.pool import Pool
from pyztunnel.proxy.relay import Relay
from pyztunnel.proxy.shared import Shared
from pyztunnel.proxy.telemetry import fail
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.workloads.model import Workload

_log = logging.getLogger("pyztunnel.proxy.pod")

WorkloadLookup = Callable[[WorkloadIndex], Workload | None]
Handler = Callable[["PodProxy", socket.socket], Awaitable[None] | None]


@dataclasses.dataclass(frozen=True)
class Ports:
    outbound: int | None = hbone.OUTBOUND_PORT
    plaintext: int | None = hbone.INBOUND_PLAINTEXT_PORT
    hbone: int | None = hbone.HBONE_PORT


@dataclasses.dataclass(frozen=True)
class Handlers:
    """What serves each listener of a pod: the data path's entry points (proxy/podset.py hands in its `DATA_PATH`)."""

    outbound: Handler
    plaintext: Handler
    hbone: Handler


class PodProxy:
    def __init__(
        self,
        shared: Shared,
        key: str,
        env: NetEnv,
        lookup: WorkloadLookup,
        handlers: Handlers,
        ports: Ports | None = None,
    ) -> None:
        self.shared = shared
        self.key = key
        self.env = env
        self.lookup = lookup
        self.handlers = handlers
        self.ports = ports or Ports()
        self.tasks = TaskGroup(f"pod-{key}")  # connection setups, quiesce answers, resumes
        self.pool = Pool(
            idle_timeout=float(shared.settings.pool_unused_release_timeout),
            streams_per_connection=shared.settings.pool_max_streams_per_connection,
        )
        self.acceptors: list[Acceptor] = []
        self.relays: set[Relay] = set()
        self.servers: set[H2ServerConn] = set()
        self.authorized: dict[Relay, authz.ConnectionInfo] = {}
        self.stopped = False
        self.going_away = False  # the drain began: HBONE connections that finish their handshake now get GOAWAY too
        # What every relay of the pod calls at its end: one bound method for all (each `self._relay_done` read makes
        # a new one, which the relay would keep for its whole life).
        self.relay_done: Callable[[Relay, BaseException | None], None] = self._relay_done

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Create (or adopt) every listener, then accept. Raises OSError if a port cannot be had."""
        wanted = [
            (self.ports.outbound, self.handlers.outbound, "outbound"),
            (self.ports.plaintext, self.handlers.plaintext, "inbound-plaintext"),
            (self.ports.hbone, self.handlers.hbone, "inbound"),
        ]
        try:
            for port, handler, name in wanted:
                if port is None:
                    continue
                sock = await self.shared.listeners.listen(self.env, self.key, port)
                self.acceptors.append(Acceptor(sock, _bound(handler, self), f"{name}-{self.env.name}", self.tasks))
        except BaseException:
            for acceptor in self.acceptors:
                acceptor.sock.close()
            self.acceptors.clear()
            raise
        for acceptor in self.acceptors:
            acceptor.start()
        self.shared.indexes.subscribe(self.recheck_policies)
        # Adopted listeners: we accept on them now, so the previous instance may stop.
        if self.shared.listeners.adopter is not None:
            await self.shared.listeners.adopter.confirm(self.key)

    async def stop_accepting(self) -> None:
        """Stop accepting; listening sockets stay open (they may be handed off)."""
        for acceptor in self.acceptors:
            await acceptor.stop()

    def goaway(self) -> None:
        self.going_away = True
        for server in list(self.servers):
            server.goaway()
        self.pool.drain()

    async def close_listeners(self) -> None:
        for acceptor in self.acceptors:
            await acceptor.close()
        self.acceptors.clear()

    async def drain_immediate(self) -> None:
        """DelWorkload: the pod is gone; stop everything now (ztunnel's DrainMode::Immediate)."""
        self.stopped = True
        self.shared.indexes.unsubscribe(self.recheck_policies)
        await self.close_listeners()
        self.goaway()
        self.pool.close()
        await self.tasks.close()  # connections still being set up end here
        for relay in list(self.relays):
            relay.reset()
        for server in list(self.servers):
            server.reset()
        self.env.close()

    # ------------------------------------------------------------------ helpers for the data path
    async def workload(self) -> Workload | None:
        """This pod's workload from the config, waiting up to `workload_wait` for it to appear (ztunnel waits 5 s)."""
        holder = self.shared.indexes
        found = self.lookup(holder.index)
        if found is not None:
            return found
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.shared.settings.workload_wait)
        while found is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(holder.wait_change(), remaining)
            found = self.lookup(holder.index)
        return found

    def track(self, relay: Relay, authorized: authz.ConnectionInfo | None = None) -> None:
        """Register a live connection; `authorized` (inbound) is what its policy check saw, for re-checks."""
        self.relays.add(relay)
        self.shared.connections.add(relay)
        if authorized is not None:
            self.authorized[relay] = authorized

    def _relay_done(self, relay: Relay, error: BaseException | None) -> None:
        """A relay's end, either direction: its record gets the bytes and the error, and is logged and counted.
        `down` is the accepted leg, so bytes_recv is what the connecting side sent (the request) for both: ztunnel's
        outbound log shows it as bytes_sent, which the access log's formatter takes care of."""
        record: ConnectionRecord = relay.info
        record.bytes_recv = relay.down.received
        record.bytes_sent = relay.up.received
        if error is not None:
            fail(record, str(error) or type(error).__name__)
        self.untrack(relay)
        self.shared.telemetry.complete(record)

    def untrack(self, relay: Relay) -> None:
        self.relays.discard(relay)
        self.authorized.pop(relay, None)
        self.shared.connections.discard(relay)

    def recheck_policies(self, index: WorkloadIndex) -> int:
        """After a config change, close inbound connections the policies no longer allow (ztunnel's
        PolicyWatcher, §5.3). Returns how many were closed."""
        closed = 0
        for relay, info in list(self.authorized.items()):
            workload = index.workload_by_ip(info.dst_ip)
            if workload is None:
                continue
            if not authz.evaluate(index.policies_for(workload), info).allowed:
                fail(relay.info, "connection closed due to policy change", "DENY")
                relay.reset()
                closed += 1
        return closed

    def track_server(self, conn: H2ServerConn) -> None:
        self.servers.add(conn)
        self.shared.connections.add(conn)

        def gone(_: object) -> None:
            self.servers.discard(conn)
            self.shared.connections.discard(conn)

        conn.lost.add_done_callback(gone)
        if self.going_away:
            # Accepted before the drain began, handshake done after: without this it would take new streams until
            # the deadline, on an instance about to go.
            conn.goaway()


def _bound(handler: Handler, pod: PodProxy) -> Callable[[socket.socket], Awaitable[None] | None]:
    def handle(sock: socket.socket) -> Awaitable[None] | None:
        return handler(pod, sock)

    return handle

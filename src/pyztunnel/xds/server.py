"""A delta ADS server (istiod's role): the gRPC shell around `protocols.xds_server`, for the local cluster's
controller, the tests and the benchmark.

Every stream authenticates like a CA call (`authorization: Bearer <token>` → the node it was issued for, via a
callback; a stream whose node metadata names another NODE_NAME is refused), gets the catalog's state, and is pushed
each committed change. Requests arrive as raw bytes (protocols.xds_server parses them; garbage ends that stream
with INVALID_ARGUMENT and the others go on). `on_event` reports each ACK/NACK with its latency (push → answer), which
is what the cluster's readiness ("every proxy ACKed the latest") and `bench xds` use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from pyztunnel.aio import cancel_and_wait, spawn
from pyztunnel.identity.node_authz import Refusal
from pyztunnel.netns import run_in_netns
from pyztunnel.protocols import xds, xds_server
from pyztunnel.protocols._pb import discovery_pb2
from pyztunnel.workloads.model import LocalConfig
from pyztunnel.xds import convert

_log = logging.getLogger("pyztunnel.xds.server")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD_NAME = "DeltaAggregatedResources"
MAX_MESSAGE_SIZE = 200 * 1024 * 1024

Authenticate = Callable[[Mapping[str, str]], "str | Refusal"]
EventHook = Callable[[xds_server.Stream, xds_server.Event, float | None], None]


def entries(config: LocalConfig) -> dict[str, dict[str, xds_server.Entry]]:
    """The catalog contents for a config: Address resources by workload uid and service namespace/hostname,
    Authorization resources by namespace/name."""
    addresses: dict[str, xds_server.Entry] = {}
    for w in config.workloads:
        addresses[w.uid or w.key] = xds_server.Entry.of(convert.address_payload(w))
    for s in config.services:
        addresses[s.key] = xds_server.Entry.of(convert.address_payload(s))
    policies = {p.key: xds_server.Entry.of(convert.authorization_payload(p)) for p in config.policies}
    return {xds.ADDRESS_TYPE: addresses, xds.AUTHORIZATION_TYPE: policies}


class _Client:
    """One stream's bookkeeping and its outgoing queue."""

    def __init__(self, stream: xds_server.Stream) -> None:
        self.stream = stream
        self.queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | None] = asyncio.Queue()
        self.sent_at: dict[str, float] = {}


class XdsServer:
    def __init__(
        self,
        catalog: xds_server.Catalog | None = None,
        authenticate: Authenticate | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self.catalog = catalog or xds_server.Catalog()
        self.authenticate = authenticate
        self.on_event = on_event
        self.clients: dict[int, _Client] = {}
        self.changed = asyncio.Event()  # set on every ACK/NACK and stream start/end; the waiter clears it
        self._server: grpc.aio.Server | None = None

    # ------------------------------------------------------------------ publishing
    def set_config(self, config: LocalConfig) -> int:
        """Serve exactly `config`; pushes the difference. Returns the catalog's generation."""
        for type_url, resources in entries(config).items():
            self.catalog.replace(type_url, resources)
        return self.publish()

    def publish(self) -> int:
        """Commit staged catalog changes and push them to every stream."""
        generation = self.catalog.commit()
        for client in self.clients.values():
            for response in client.stream.push():
                self._send(client, response)
        return generation

    def _send(self, client: _Client, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        client.sent_at[response.nonce] = time.monotonic()
        client.queue.put_nowait(response)

    # ------------------------------------------------------------------ state
    def streams(self) -> list[xds_server.Stream]:
        return [c.stream for c in self.clients.values()]

    def current(self, match: Callable[[xds_server.Stream], bool]) -> bool:
        """Some stream for which `match` holds has ACKed the current generation of every type."""
        return any(s.current() for s in self.streams() if match(s))

    def status(self) -> list[dict[str, object]]:
        return [s.status() for s in self.streams()]

    # ------------------------------------------------------------------ gRPC
    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self._rpc,
            request_deserializer=None,  # raw bytes: protocols.xds_server parses them
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        )
        handler: grpc.GenericRpcHandler = grpc.method_handlers_generic_handler(SERVICE, {METHOD_NAME: method})
        return handler

    async def _rpc(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        metadata = {str(k).lower(): str(v) for k, v in (context.invocation_metadata() or ())}
        peer = ""
        if self.authenticate is not None:
            who = self.authenticate(metadata)
            if isinstance(who, Refusal):
                _log.warning("XDS stream refused", extra={"fields": {"reason": who.message, "peer": context.peer()}})
                # set_code + return, not abort(): an abort racing the client's first send can reach it as INTERNAL
                context.set_code(who.code)
                context.set_details(who.message)
                return
            peer = who
        client = _Client(xds_server.Stream(self.catalog, peer))
        self.clients[client.stream.id] = client
        self.changed.set()
        reader = spawn(self._read(client, requests), f"xds-server-read-{client.stream.id}")
        try:
            while True:
                response = await client.queue.get()
                if response is None:
                    break
                yield response
            error = reader.result() if reader.done() else None
            if error is not None:
                context.set_code(error.code)
                context.set_details(error.message)
        finally:
            del self.clients[client.stream.id]
            self.changed.set()
            await cancel_and_wait(reader)

    async def _read(self, client: _Client, requests: AsyncIterator[bytes]) -> Refusal | None:
        stream = client.stream
        try:
            async for data in requests:
                try:
                    events, responses = stream.receive(data)
                except xds.ProtocolError as exc:
                    _log.warning(
                        "XDS stream ended: bad request", extra={"fields": {"error": str(exc), "node": stream.node_id}}
                    )
                    return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                claimed = str(stream.metadata.get("NODE_NAME", ""))
                if stream.peer and claimed and claimed != stream.peer:
                    return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"token of node {stream.peer} used for {claimed}")
                for event in events:
                    self._event(client, event)
                for response in responses:
                    self._send(client, response)
            return None
        except grpc.aio.AioRpcError:
            return None
        finally:
            client.queue.put_nowait(None)

    def _event(self, client: _Client, event: xds_server.Event) -> None:
        sent = client.sent_at.pop(event.nonce, None) if event.nonce else None
        latency = time.monotonic() - sent if sent is not None else None
        if event.kind == "nack":
            _log.warning(
                "XDS NACK",
                extra={"fields": {"node": client.stream.node_id, "type_url": event.type_url, "error": event.error}},
            )
        self.changed.set()
        if self.on_event is not None:
            self.on_event(client.stream, event, latency)

    async def start(self, address: str, key_pem: str, chain_pem: str, netns: int | str | Path | None = None) -> int:
        """Listen on `address` (HOST:PORT) with TLS; with `netns`, the listening socket is made inside that network
        namespace (the controller serves proxies from the fabric namespace without living in it). Returns the port."""
        credentials = grpc.ssl_server_credentials([(key_pem.encode(), chain_pem.encode())])
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ]
        )
        server.add_generic_rpc_handlers((self.handler(),))

        def bind() -> int:
            bound: int = server.add_secure_port(address, credentials)
            return bound

        port = run_in_netns(netns, bind) if netns is not None else bind()
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        return port

    async def close(self, grace: float = 0.5) -> None:
        for client in self.clients.values():
            client.queue.put_nowait(None)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.stop(grace)
            self._server = None

    async def wait(self, done: Callable[[], bool], within: float) -> bool:
        """Wait until `done()` holds (checked at each ACK/NACK and stream change), at most `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            self.changed.clear()  # before the check, so a change right after it is not missed
            if done():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

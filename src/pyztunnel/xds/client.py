"""The proxy's XDS client: the gRPC shell around `protocols.xds.ClientState` (ztunnel's `src/xds/client.rs`).

One bidirectional `DeltaAggregatedResources` stream at a time over TLS to XDS_ADDRESS, with the CA client's bearer
token and `clusterid` header (identity.channel) plus XDS_HEADER_*; responses arrive as raw bytes (the state
machine parses them, so garbage is a protocol error it can name, and sizes are exact), are decoded in slices that
yield to the event loop (a 100 000-workload push must not stall the data path for a second), applied to the
index, and answered. When the stream ends, the state machine says why and how long to wait.

Logs: one line per change of state (established; each kind of failure, with the retry delay), not per retry; every
NACK at error level, as ztunnel. Counted in istio_xds_* (protocols.xds.Stats).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from pyztunnel import memory
from pyztunnel.identity.channel import ChannelError, TlsChannel, call_metadata, prefixed_headers
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.protocols import xds
from pyztunnel.protocols._pb import discovery_pb2
from pyztunnel.xds.config import HEADER_PREFIX, XdsSettings

_log = logging.getLogger("pyztunnel.xds")

TRIM_AFTER_BYTES = 1 << 20

Handler = Callable[[xds.Update], Awaitable[list[tuple[str, str]]]]


class XdsClient:
    def __init__(
        self,
        settings: XdsSettings,
        auth: CaClientSettings,
        node: Any,
        handle: Handler,
        on_ready: Callable[[], None] = lambda: None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.handle = handle
        self.on_ready = on_ready
        self.state = xds.ClientState(node, backoff=xds.Backoff(jitter=settings.xds_backoff_jitter))
        self.extra_headers = prefixed_headers(environ or {}, HEADER_PREFIX)
        size = settings.xds_max_message_size
        self.channel = TlsChannel(
            settings.xds_address,
            settings.xds_root_ca,
            settings.alt_xds_hostname,
            options=[("grpc.max_receive_message_length", size)],
        )
        self.status = "connecting"  # for /config_dump
        self.last_error = ""
        self.changed = asyncio.Event()  # set after each answer and each stream end (for waiters; they clear it)
        self._logged: str | None = None

    @property
    def address(self) -> str:
        return self.settings.xds_address

    async def run(self) -> None:
        """Stream, and stream again after each end, forever (until cancelled)."""
        while True:
            reason, error = await self._stream()
            # a new connection per stream, as ztunnel dials per attempt: gRPC's own channel backoff (1 s growing
            # to 120 s) must not stand in for ztunnel's 10 ms → 15 s
            await self.channel.reset()
            delay = self.state.end_stream(reason)
            self.status = f"disconnected: {reason.value}"
            self.last_error = error
            self.changed.set()
            self._log_state(
                f"{reason.value}:{error.split(':', 1)[0]}",
                logging.INFO if reason is xds.Termination.RECONNECT else logging.WARNING,
                "XDS stream ended, retrying",
                {"reason": reason.value, "error": error, "retry_in": f"{delay * 1000:.0f}ms", "address": self.address},
            )
            await asyncio.sleep(delay)  # the backoff the state machine chose

    def _log_state(self, key: str, level: int, message: str, fields: dict[str, object]) -> None:
        """One log line per state, not per retry of the same failure."""
        if key != self._logged:
            self._logged = key
            _log.log(level, message, extra={"fields": fields})

    async def _stream(self) -> tuple[xds.Termination, str]:
        got_response = False
        call: grpc.aio.StreamStreamCall[Any, Any] | None = None
        outgoing: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest] = asyncio.Queue()
        timed_out: list[bool] = []

        async def requests() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
            # gRPC drains this in its own task; a failed send then shows as the call's status on read
            while True:
                yield await outgoing.get()

        try:
            metadata = call_metadata(self.auth.auth_token, self.auth.cluster_id, self.extra_headers)
            channel = await self.channel.get()
            for request in self.state.start_stream():
                outgoing.put_nowait(request)
            call = channel.stream_stream(
                xds.METHOD,
                request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=None,  # raw bytes: protocols.xds parses them
            )(requests(), metadata=metadata)
            stream_call = call

            def give_up() -> None:
                timed_out.append(True)
                stream_call.cancel()

            first = asyncio.get_running_loop().call_later(float(self.settings.xds_first_response_timeout), give_up)
            async for data in call:
                first.cancel()
                if not got_response:
                    got_response = True
                    self.status = "connected"
                    self.last_error = ""
                    self._log_state("connected", logging.INFO, "XDS stream established", {"address": self.address})
                large = len(data) >= TRIM_AFTER_BYTES
                outgoing.put_nowait(await self._answer(data))
                if large:
                    del data
                    memory.trim()  # the big response's transient objects are freed: give their pages back
            return xds.Termination.COMPLETE, "the server ended the stream"
        except asyncio.CancelledError:
            if not timed_out or _current_task_cancelling():
                raise
            return xds.Termination.CONNECTION_ERROR, "no response from the server in time"
        except grpc.aio.AioRpcError as exc:
            if timed_out:
                return xds.Termination.CONNECTION_ERROR, "no response from the server in time"
            code, details = exc.code(), exc.details() or ""
            return xds.classify(code.name, details, got_response=got_response), f"{code.name}: {details}"
        except xds.ProtocolError as exc:
            return xds.Termination.ERROR, f"protocol error: {exc}"
        except ChannelError as exc:
            return xds.Termination.CONNECTION_ERROR, str(exc)
        finally:
            if call is not None and not call.done():
                call.cancel()

    async def _answer(self, data: bytes) -> discovery_pb2.DeltaDiscoveryRequest:
        update = self.state.receive(data)
        rejects = await self.handle(update)
        answer = self.state.answer(update, rejects)
        if not answer.acked:
            _log.error(
                "XDS response rejected (NACK)",
                extra={"fields": {"type_url": update.type_url, "nonce": update.nonce, "error": answer.error}},
            )
        else:
            _log.debug(
                "XDS response applied",
                extra={
                    "fields": {
                        "type_url": update.type_url,
                        "size": len(update.upserts),
                        "removes": len(update.removes),
                        "version": update.system_version,
                    }
                },
            )
        if answer.became_ready:
            _log.info("XDS synced", extra={"fields": {"address": self.address}})
            self.on_ready()
        self.changed.set()
        return answer.request

    def dump(self) -> dict[str, object]:
        """The XDS state for /config_dump."""
        state = self.state
        return {
            "address": self.address,
            "status": self.status,
            "ready": state.ready,
            "lastError": self.last_error,
            "types": {
                t: {
                    "resources": len(state.versions[t]),
                    "systemVersion": state.system_versions.get(t, ""),
                    "lastNack": state.last_nack.get(t, ""),
                    "messages": state.stats.messages.get(t, 0),
                }
                for t in state.types
            },
            "acks": state.stats.acks,
            "nacks": state.stats.nacks,
            "terminations": dict(state.stats.terminations),
        }

    async def close(self) -> None:
        await self.channel.close()


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

"""An HBONE connection's numbers (`Limits`, filled from the proxy's declared settings) and the token bucket that
meters what a peer may do without limit otherwise (stream resets, control frames); used by `protocols.hbone_conn`."""

from __future__ import annotations

import dataclasses

from pyztunnel.protocols import hbone


@dataclasses.dataclass(frozen=True)
class Limits:
    """The connection's numbers; the proxy's declared settings fill the ones ztunnel does not fix."""

    ping_interval: float = hbone.PING_INTERVAL
    ping_timeout: float = hbone.PING_TIMEOUT
    close_round_trip: float = hbone.CLOSE_ROUND_TRIP_TIMEOUT
    preface_timeout: float = 10.0
    max_pending_streams: int = hbone.SERVER_MAX_CONCURRENT_STREAMS
    reset_burst: int = 1000
    reset_rate: float = 33.0
    # Frames the peer sends that make us answer or work without a stream (PING, SETTINGS, PRIORITY): a peer that
    # floods them and does not read our ACKs (CVE-2019-9512, -9515, -9513) would grow our write buffer and take CPU.
    control_burst: int = 1000
    control_rate: float = 100.0


class Bucket:
    """A token bucket: `burst` tokens, `rate` more per second."""

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst, self.rate = float(burst), rate
        self.tokens, self.last = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

"""What travels with each migrated connection, sans-IO: its header (kind, both legs' ends, elapsed time, the proxy's
record) and the validation of a received fd against it (migrate.py holds the exchange; docs/migration.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pyztunnel.lifecycle.handoff import Netns, ProtocolError, check_inet_stream, check_netns

KINDS = ("inbound-plaintext", "outbound-passthrough", "inbound-hbone", "outbound-hbone")
# Which legs travel as fds. An HBONE leg stays behind (it lives in TLS and HTTP/2 state): only the app's socket moves
# and the stream is continued by a new CONNECT (protocols/resume.py). Outbound: the app is `down`; inbound: `up`.
LEGS_OF = {
    "inbound-plaintext": (True, True),
    "outbound-passthrough": (True, True),
    "inbound-hbone": (False, True),
    "outbound-hbone": (True, False),
}
TCP_ESTABLISHED = 1

Addr = tuple[str, int]


# Headers ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ends:
    local: Addr
    peer: Addr


@dataclasses.dataclass(frozen=True)
class ConnHeader:
    id: int
    uid: str
    kind: str
    down: Ends | None  # None: that leg is an HBONE stream and does not travel (LEGS_OF)
    up: Ends | None
    elapsed: float
    context: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid,
            "kind": self.kind,
            "down": _ends_json(self.down),
            "up": _ends_json(self.up),
            "elapsed": self.elapsed,
            "context": self.context,
        }


def _ends_json(ends: Ends | None) -> dict[str, Any] | None:
    return None if ends is None else {"local": list(ends.local), "peer": list(ends.peer)}


def _addr(value: Any) -> Addr:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or type(value[1]) is not int
        or not 0 <= value[1] <= 65535
    ):
        raise ProtocolError(f"bad address {value!r}")
    return value[0], value[1]


def _ends(value: Any) -> Ends:
    if not isinstance(value, dict):
        raise ProtocolError(f"bad leg {value!r}")
    return Ends(_addr(value.get("local")), _addr(value.get("peer")))


def parse_header(item: Any) -> ConnHeader:
    if not isinstance(item, dict):
        raise ProtocolError(f"bad connection header {item!r}")
    ident, uid, kind, elapsed, context = (item.get(k) for k in ("id", "uid", "kind", "elapsed", "context"))
    if type(ident) is not int or not isinstance(uid, str) or kind not in KINDS:
        raise ProtocolError(f"bad connection header {item!r}")
    if not isinstance(elapsed, int | float) or isinstance(elapsed, bool) or not 0 <= elapsed < 10**9:
        raise ProtocolError(f"bad elapsed time {elapsed!r}")
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and (v is None or type(v) in (str, int, float, bool)) for k, v in context.items()
    ):
        raise ProtocolError("context must map names to JSON scalars")
    has_down, has_up = LEGS_OF[kind]
    down, up = item.get("down"), item.get("up")
    if (down is not None) != has_down or (up is not None) != has_up:
        raise ProtocolError(f"a {kind} connection carries {'down' if has_down else ''} {'up' if has_up else ''} only")
    return ConnHeader(
        ident,
        uid,
        kind,
        _ends(down) if has_down else None,
        _ends(up) if has_up else None,
        float(elapsed),
        context,
    )


def fds_of(header: ConnHeader) -> int:
    return sum(LEGS_OF[header.kind])


# Validation of a received connection ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConnFacts:
    """What the shell found out about a received fd (migrate_take.probe_conn). `error` when it is not even a socket."""

    family: int = 0
    type: int = 0
    accepting: bool = False
    tcp_state: int = 0
    local: Addr | None = None
    peer: Addr | None = None
    netns: Netns | None = None
    error: str | None = None


def validate_leg(facts: ConnFacts, ends: Ends, expected_netns: Netns) -> str | None:
    """None if the fd is the established connection the header says, in the pod's netns; else why not."""
    why = check_inet_stream(facts.error, facts.family, facts.type)
    if why is not None:
        return why
    if facts.accepting:
        return "a listening socket, not a connection"
    if facts.tcp_state != TCP_ESTABLISHED:
        return f"not an established connection (TCP state {facts.tcp_state})"
    if facts.local != ends.local or facts.peer != ends.peer:
        return f"connection {facts.local}→{facts.peer} is not the announced {ends.local}→{ends.peer}"
    return check_netns(facts.netns, expected_netns)

"""Who may take a proxy's listeners and connections: both ends of a handoff prove they hold the node's handoff key,
sans-IO (the key file: handoff_key.py; where it is checked: handoff.py, migrate.py).

The handoff socket hands out live listening sockets and established connections, so a process that can merely
connect to it must get nothing. Both ends therefore prove, with fresh nonces, that they hold the node's key (32 random
bytes in a root-only file beside the socket, or wherever `PYZTUNNEL_HANDOFF_KEY` points):

    new → old  hello {nonce: Nn}
    old → new  hello {nonce: No, proof: HMAC-SHA256(key, "pyztunnel-handoff old" Nn No)}     the new one checks it
    new → old  request|take {…, proof: HMAC-SHA256(key, "pyztunnel-handoff new" No Nn)}    the old one checks it
                                                                                          before it offers anything

A proof covers the peer's fresh nonce, so none can be replayed, and each role signs its own label, so one end's proof
is never valid for the other. (The socket's mode 0600 and the peer's uid, SO_PEERCRED, are checked first.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

KEY_BYTES = 32
NONCE_BYTES = 16
_HEX_NONCE = re.compile(f"^[0-9a-f]{{{2 * NONCE_BYTES}}}$")
Role = Literal["old", "new"]


class AuthError(Exception):
    pass


def _proof(key: bytes, role: Role, theirs: str, ours: str) -> str:
    message = b"pyztunnel-handoff " + role.encode() + b" " + bytes.fromhex(theirs) + bytes.fromhex(ours)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _nonce_of(msg: Mapping[str, Any]) -> str:
    nonce = msg.get("nonce")
    if not isinstance(nonce, str) or not _HEX_NONCE.match(nonce):
        raise AuthError("hello without a valid nonce")
    return nonce


class Handshake:
    """One end's part of the mutual proof. `role` is this end's: the old instance (gives) or the new one (takes)."""

    def __init__(self, key: bytes, role: Role, nonce: bytes | None = None) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a handoff key has {KEY_BYTES} bytes")
        self._key = key
        self.role: Role = role
        self.nonce = (nonce or os.urandom(NONCE_BYTES)).hex()
        self.peer_nonce: str | None = None

    def hello_fields(self) -> dict[str, str]:
        """What our hello carries: our nonce, and (the old end, which answers) our proof over the peer's."""
        fields = {"nonce": self.nonce}
        if self.role == "old":
            assert self.peer_nonce is not None, "the old end answers a hello"
            fields["proof"] = _proof(self._key, "old", self.peer_nonce, self.nonce)
        return fields

    def proof_field(self) -> dict[str, str]:
        """What the new end adds to its first message after the hellos."""
        assert self.role == "new" and self.peer_nonce is not None
        return {"proof": _proof(self._key, "new", self.peer_nonce, self.nonce)}

    def peer_hello(self, msg: Mapping[str, Any]) -> None:
        """The peer's hello: note its nonce; from the old end, check its proof. Raises AuthError."""
        self.peer_nonce = _nonce_of(msg)
        if self.role == "new":
            self._check(msg, "old")

    def peer_proof(self, msg: Mapping[str, Any]) -> None:
        """The new end's first message after the hellos: check its proof. Raises AuthError."""
        assert self.role == "old"
        self._check(msg, "new")

    def _check(self, msg: Mapping[str, Any], role: Role) -> None:
        assert self.peer_nonce is not None
        proof = msg.get("proof")
        # The peer signs its own nonce last: from its side ours is "theirs".
        expected = _proof(self._key, role, self.nonce, self.peer_nonce)
        if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
            raise AuthError(f"the {role} instance did not prove it holds this node's handoff key")

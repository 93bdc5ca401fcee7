"""What ztunnel's two control-plane clients share (its `src/identity/auth.rs`, `src/tls/control.rs`): the gRPC
channel over TLS to istiod, verified against a root given as a file (reloaded when it changes), inline PEM or
`SYSTEM`; and the call metadata, `authorization: Bearer <token>` (AUTH_TOKEN: a file read per call, or the token
itself), `clusterid`, plus the `<PREFIX>_<name>` environment variables as extra headers (CA_HEADER_*, XDS_HEADER_*).
The CA client (identity.client) and the XDS client (xds.client) both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from pyztunnel.identity.api import DEFAULT_PORT


class ChannelError(Exception):
    """The channel cannot be set up (a bad address, root or token); the message says which."""


def target_of(address: str) -> str:
    """`https://host:port` → `host:port` (gRPC's target); the port defaults to 15012."""
    for scheme in ("https://", "http://"):
        address = address.removeprefix(scheme)
    address = address.rstrip("/")
    if not address:
        raise ChannelError("the control plane address is empty")
    if address.startswith("["):
        return address if "]:" in address else f"{address}:{DEFAULT_PORT}"
    if ":" not in address:
        return f"{address}:{DEFAULT_PORT}"
    if address.count(":") == 1:
        return address
    return f"[{address}]:{DEFAULT_PORT}"  # a bare IPv6 address


def read_token(value: str) -> str:
    """AUTH_TOKEN: the content of the file if it exists, else the value itself (ztunnel's rule)."""
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text().strip()
    except OSError as exc:
        raise ChannelError(f"cannot read AUTH_TOKEN file {value}: {exc}") from None
    return value.strip()


def prefixed_headers(environ: Mapping[str, str], prefix: str) -> list[tuple[str, str]]:
    """`<prefix>NAME=value` environment variables as gRPC metadata `name: value` (lower case, `_` → `-`)."""
    return [(k[len(prefix) :].lower().replace("_", "-"), v) for k, v in environ.items() if k.startswith(prefix)]


def call_metadata(auth_token: str, cluster_id: str, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The metadata of every call to istiod (the token is read now, so a rotated token file is picked up)."""
    return [("authorization", f"Bearer {read_token(auth_token)}"), ("clusterid", cluster_id), *extra]


class TlsChannel:
    """A gRPC channel to `address` over TLS, rebuilt when the root file changes. Close with `await close()`."""

    def __init__(
        self, address: str, root: str, alt_hostname: str = "", options: Sequence[tuple[str, str | int]] = ()
    ) -> None:
        self.address = address
        self.root = root
        self.alt_hostname = alt_hostname
        self.options = list(options)
        self._channel: grpc.aio.Channel | None = None
        self._root_stamp: tuple[int, int] | None = None

    def _load_root(self) -> tuple[bytes | None, tuple[int, int] | None]:
        """(root PEM or None for system roots, file stamp when it came from a file)."""
        value = self.root
        if value == "SYSTEM":
            return None, None
        path = Path(value)
        if path.is_file():
            st = path.stat()
            return path.read_bytes(), (st.st_mtime_ns, st.st_size)
        if "-----BEGIN" in value:
            return value.encode(), None
        raise ChannelError(f"root {value!r} is neither a file nor a PEM certificate")

    def _root_changed(self) -> bool:
        path = Path(self.root)
        if self._root_stamp is None or not path.is_file():
            return False
        st = path.stat()
        return (st.st_mtime_ns, st.st_size) != self._root_stamp

    async def get(self) -> grpc.aio.Channel:
        if self._channel is not None and self._root_changed():
            await self._channel.close()  # the root file was replaced: verify the server with the new one
            self._channel = None
        if self._channel is None:
            root, self._root_stamp = self._load_root()
            options = list(self.options)
            if self.alt_hostname:
                options.append(("grpc.ssl_target_name_override", self.alt_hostname))
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            self._channel = grpc.aio.secure_channel(target_of(self.address), credentials, options)
        return self._channel

    async def reset(self) -> None:
        """Drop the channel (the next `get` dials afresh)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def close(self) -> None:
        await self.reset()

"""Local (unix) sockets: listening with an explicit file mode, and who is on the other end (SO_PEERCRED).

Every unix socket of pyztunnel (ZDS `ztunnel.sock`, the agent's `cni.sock`, the controller's `controller.sock`, the
proxies' `handoff.sock`) is created by `listen_unix`: its mode never depends on the caller's umask. The file is
chmod()ed after bind() and before listen(): until listen() nobody can connect, so there is no window in which a
looser mode admits anyone (a umask switch would also work, but it is process-wide and other threads create files).

`peer_cred` reads the kernel's credentials of the connecting process; `check_same_uid` is the rule every socket that
hands out something live (netns fds, listeners, connections) applies first. The pid is as seen from our pid
namespace: 0 when the peer lives in another one (Kubernetes pods), so it is logged, never trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct
from pathlib import Path

SOCKET_MODE = 0o600  # root components only (every pyztunnel process that uses these sockets runs as root)
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclasses.dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int

    def fields(self) -> dict[str, int]:
        return {"peer.pid": self.pid, "peer.uid": self.uid}


def peer_cred(sock: socket.socket) -> PeerCred:
    """The connecting process's credentials as the kernel recorded them at connect() (not spoofable by the peer)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCred(pid, uid, gid)


def check_same_uid(cred: PeerCred, uid: int | None = None) -> str | None:
    """None if the peer runs as our (effective) uid, else why it is refused."""
    ours = os.geteuid() if uid is None else uid
    if cred.uid != ours:
        return f"peer uid {cred.uid} is not ours ({ours})"
    return None


def listen_unix(
    path: Path,
    kind: int = socket.SOCK_SEQPACKET,
    mode: int = SOCKET_MODE,
    backlog: int = 16,
    replace: bool = True,
) -> socket.socket:
    """A non-blocking, close-on-exec unix listener at `path` with exactly `mode`. `replace` removes a stale file
    first (as istio-cni does); without it an existing file is an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    try:
        os.chmod(path, mode)  # before listen(): nobody can connect yet
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return sock

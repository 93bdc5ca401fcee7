"""The proxy's side of the listener handoff (lifecycle.handoff_io does the protocol): a new instance adopts the
previous instance's in-pod listeners instead of binding its own (one socket, one accept queue, nothing reset), and
once ready serves its own listeners to the next instance.

`Adopter` plugs into `netsock.ListenerSource`: the first listener asked for a pod runs one handoff exchange for that
pod; `confirm(uid)` tells the old instance, once we accept on them, that it may stop accepting. The confirmed
exchange stays open as the lease of those listeners: `end_leases()` (our own drain) or our death hands them back to
the old instance, which then accepts on them again (`PodSetListeners.handoff_reclaimed`), unless it drains itself.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyztunnel.lifecycle import handoff_io
from pyztunnel.lifecycle.handoff import ListenerKey, Netns, PodRequest
from pyztunnel.netns import netns_inode
from pyztunnel.proxy.netsock import Acceptor, NetEnv, PodNetns
from pyztunnel.proxy.podset import PodSet

_log = logging.getLogger("pyztunnel.proxy.handoff")


class Adopter:
    def __init__(self, path: Path, key: bytes, within: float = handoff_io.DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.key = key
        self.within = within
        self.enabled = True
        self._adoptions: dict[str, handoff_io.Adoption] = {}
        self._leases: dict[str, handoff_io.Adoption] = {}
        self.adopted = 0

    async def take(self, uid: str, port: int, env: NetEnv) -> socket.socket | None:
        if not self.enabled or not isinstance(env, PodNetns):
            return None
        adoption = self._adoptions.get(uid)
        if adoption is None:
            request = PodRequest(uid, netns_inode(env.fd))
            adoption = await handoff_io.adopt(self.path, [request], within=self.within, key=self.key)
            self._adoptions[uid] = adoption
        sock = adoption.take(uid, port)
        if sock is not None:
            self.adopted += 1
        return sock

    async def confirm(self, uid: str) -> None:
        adoption = self._adoptions.pop(uid, None)
        if adoption is None:
            return
        await adoption.confirm()
        adoption.close_unused()
        if adoption.leased:
            self._leases[uid] = adoption

    def discard(self, uid: str) -> None:
        for adoption in (self._adoptions.pop(uid, None), self._leases.pop(uid, None)):
            if adoption is not None:
                adoption.close_unused()
                adoption.close()

    def end_leases(self) -> None:
        """We stop accepting (our drain, our exit): the previous instance, if it still runs, may accept again."""
        for adoption in self._leases.values():
            adoption.close()
        self._leases.clear()


class PodSetListeners:
    """The old instance's inventory for `handoff_io.HandoffService`: every running pod's listening sockets, and
    which of them a live new instance accepts on (`leased`)."""

    def __init__(self, pods: PodSet) -> None:
        self.pods = pods
        self.leased: set[ListenerKey] = set()
        self.draining = False

    def _open(self, key: ListenerKey) -> list[Acceptor]:
        pod = self.pods.pods.get(key.uid)
        if pod is None or pod.stopped:
            return []
        return [a for a in pod.acceptors if a.sock.fileno() >= 0 and a.port == key.port]

    def stop_accepting(self) -> None:
        """Our drain begins (sync: signal-driven): stop accepting everywhere; a lease that ends now gives nothing
        back."""
        self.draining = True
        for pod in self.pods.pods.values():
            for acceptor in pod.acceptors:
                acceptor.pause()

    async def close_unshared(self) -> None:
        """A listener we alone hold is closed (it must leave its SO_REUSEPORT group, or its share of new connections
        would wait in its queue until we exit). One we share with a live new instance stays open, paused: it is the
        same socket, and if the new instance dies before we exit, its queue survives on our copy until the restarted
        one adopts it from us (we still hold the name)."""
        for uid, pod in list(self.pods.pods.items()):
            for acceptor in pod.acceptors:
                if acceptor.sock.fileno() >= 0 and ListenerKey(uid, acceptor.port) not in self.leased:
                    await acceptor.close()

    def handoff_inventory(self) -> Mapping[str, tuple[Netns, Mapping[int, socket.socket]]]:
        out: dict[str, tuple[Netns, Mapping[int, socket.socket]]] = {}
        for uid, pod in self.pods.pods.items():
            if isinstance(pod.env, PodNetns):
                out[uid] = (netns_inode(pod.env.fd), {a.port: a.sock for a in pod.acceptors if a.sock.fileno() >= 0})
        return out

    def handoff_released(self, keys: Sequence[ListenerKey]) -> None:
        # Stop accepting (the accept task leaves the loop); never shutdown() a shared listener.
        for key in keys:
            for acceptor in self._open(key):
                acceptor.pause()
                self.leased.add(key)

    def handoff_reclaimed(self, keys: Sequence[ListenerKey]) -> None:
        # The instance that accepted on these is gone: accept again. Draining, we do not: they stay open and paused,
        # their queue waiting for the next new instance (a closed listener stays closed).
        self.leased.difference_update(keys)
        if self.draining:
            return
        for key in keys:
            for acceptor in self._open(key):
                if not acceptor.accepting:
                    acceptor.start()

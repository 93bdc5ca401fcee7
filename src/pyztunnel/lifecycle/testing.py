"""A stand-in for a proxy's listener set, for handoff tests and the handoff benchmark (not used by the proxy).

`TaggedListeners` accepts on a set of listening sockets and answers every connection with its tag (b"old\\n" or
b"new\\n"), so a client can tell which instance served it. It implements `handoff_io.ListenerSource`.

Run as a process (`python -m pyztunnel.lifecycle.testing --handoff PATH --pods N`) it plays the old instance: it binds
N pods × 3 SO_REUSEPORT listeners on 127.0.0.1 (or adopts them with `--adopt`), serves the handoff socket, prints one
JSON line `{"event": "ready", "pods": {uid: [ports]}, "netns": [dev, ino]}`, and obeys commands on stdin:
`pause` (stop accepting, keep the sockets), `close` (close the listeners: ztunnel's behaviour), `queue` (print the
summed accept-queue length), `exit`. Events (`released`, `reclaimed`, `paused`, `closed`, `queue`) are JSON lines on
stdout. Released listeners are paused, not closed, so that a lease that ends (the taker died) can be reclaimed.

`Hammer` is the client side: threads that connect() as fast as they can (optionally inside a netns) and count
answers by tag and failures by exception type.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pyztunnel.aio import TaskGroup, cancel_and_wait, spawn
from pyztunnel.lifecycle import handoff_io
from pyztunnel.lifecycle.accept import AcceptLoop
from pyztunnel.lifecycle.handoff import ListenerKey, Netns, PodRequest
from pyztunnel.netns import netns_inode, netns_path, setns, socket_in_netns

SELF_NETNS = Path("/proc/self/ns/net")


def reuseport_listener(host: str = "127.0.0.1", port: int = 0, backlog: int = 128) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def accept_queue_length(sock: socket.socket) -> int:
    """For a listening socket, TCP_INFO's tcpi_unacked is the number of connections waiting in its accept queue."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


async def poll(condition: Callable[[], bool], within: float, what: str) -> None:
    """Wait until `condition()` holds, checking every millisecond; TimeoutError naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {within}s")
        await asyncio.sleep(0.001)


class Hammer:
    """Threads that connect() to a port as fast as they can and read the answer; counts answers and failures."""

    def __init__(self, port: int, threads: int = 4, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.addr = (host, port)
        self.netns = netns
        self.answers: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"hammer-{i}", daemon=True) for i in range(threads)]

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + sum(self.errors.values())

    def start(self) -> Hammer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        if self.netns is not None:
            # A dedicated thread that ends with the hammer: entering the namespace here changes nothing else.
            fd = os.open(netns_path(self.netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
        while not self._stop.is_set():
            try:
                with socket.create_connection(self.addr, timeout=5) as s:
                    data = b""
                    while chunk := s.recv(16):
                        data += chunk
                outcome, bucket = data.decode().strip() or "empty", self.answers
            except OSError as exc:
                outcome, bucket = type(exc).__name__, self.errors
            with self._lock:
                bucket[outcome] += 1

    async def wait_total(self, n: int, within: float = 60) -> None:
        await poll(lambda: self.total >= n, within, f"{n} connections")


class TaggedListeners:
    def __init__(self, tag: bytes, netns: Netns) -> None:
        self.tag = tag
        self.netns = netns
        self.sockets: dict[ListenerKey, socket.socket] = {}
        self.pod_netns: dict[str, Netns] = {}
        self._loops: dict[ListenerKey, AcceptLoop] = {}
        self.served = 0
        self.released_keys: list[ListenerKey] = []
        self.reclaimed_keys: list[ListenerKey] = []
        self.on_released: asyncio.Event = asyncio.Event()
        self._tasks = TaskGroup("tagged-listeners")

    def add(self, key: ListenerKey, sock: socket.socket, netns: Netns | None = None) -> None:
        self.sockets[key] = sock
        self.pod_netns[key.uid] = netns or self.netns
        self._loops[key] = AcceptLoop(sock, self._answer, f"{key.uid}:{key.port}", tasks=self._tasks)
        self._loops[key].start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.send(self.tag)
        self.served += 1

    async def pause(self, keys: Sequence[ListenerKey] | None = None) -> None:
        """Stop accepting without closing anything."""
        for key in list(self._loops) if keys is None else keys:
            if key in self._loops:
                self._loops[key].pause()

    async def close(self, keys: Sequence[ListenerKey] | None = None) -> None:
        for key in list(self._loops) if keys is None else keys:
            if key in self._loops:
                self._loops.pop(key).close()
                self.sockets.pop(key, None)

    def queue_length(self) -> int:
        return sum(accept_queue_length(s) for s in self.sockets.values() if s.fileno() >= 0)

    # handoff_io.ListenerSource
    def handoff_inventory(self) -> Mapping[str, tuple[Netns, Mapping[int, socket.socket]]]:
        out: dict[str, tuple[Netns, dict[int, socket.socket]]] = {}
        for key, sock in self.sockets.items():
            out.setdefault(key.uid, (self.pod_netns[key.uid], {}))[1][key.port] = sock
        return out

    def describe(self) -> dict[str, dict[str, list[int]]]:
        """uid → {"ports", "netns"}: what a new instance asks for (and what `--adopt` reads)."""
        out: dict[str, dict[str, list[int]]] = {}
        for key in sorted(self.sockets):
            pod = out.setdefault(key.uid, {"ports": [], "netns": list(self.pod_netns[key.uid])})
            pod["ports"].append(key.port)
        return out

    def handoff_released(self, keys: Sequence[ListenerKey]) -> None:
        # Stop accepting; our copy stays (closing it would reset nothing either: the new instance holds the socket).
        self.released_keys.extend(keys)
        self._tasks.spawn(self._release(list(keys)), "release")

    async def _release(self, keys: list[ListenerKey]) -> None:
        await self.pause(keys)
        self.on_released.set()

    def handoff_reclaimed(self, keys: Sequence[ListenerKey]) -> None:
        self.reclaimed_keys.extend(keys)
        for key in keys:
            if key in self._loops:
                self._loops[key].start()
        self.on_released.set()


def _bind_pods(server: TaggedListeners, count: int, netns_prefix: str | None) -> None:
    for i in range(count):
        uid = f"pod-{i}"
        ns_name = f"{netns_prefix}{i}" if netns_prefix else None
        netns = netns_inode(netns_path(ns_name)) if ns_name else server.netns
        for _ in range(3):
            if ns_name:
                sock = socket_in_netns(ns_name)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("0.0.0.0", 0))
                sock.listen(128)
            else:
                sock = reuseport_listener()
            server.add(ListenerKey(uid, sock.getsockname()[1]), sock, netns)


async def _main(args: argparse.Namespace) -> None:
    def emit(**event: object) -> None:
        print(json.dumps(event), flush=True)

    server = TaggedListeners(args.tag.encode() + b"\n", netns_inode(SELF_NETNS))
    adoption: handoff_io.Adoption | None = None
    if args.adopt:
        wanted = args.adopt_pods
        requests = [PodRequest(uid, tuple(p["netns"]), tuple(p["ports"])) for uid, p in wanted.items()]
        started = time.monotonic()
        adoption = await handoff_io.adopt(Path(args.handoff), requests)
        for key, sock in adoption.sockets.items():
            server.add(key, sock, tuple(wanted[key.uid]["netns"]))
        await adoption.confirm()  # the lease stays open while we run
        took = time.monotonic() - started
        emit(event="adopted", adopted=len(adoption.sockets), to_bind=len(adoption.to_bind), handoff_s=took)
    else:
        _bind_pods(server, args.pods, args.netns_prefix)
    service = await handoff_io.serve(Path(args.handoff), server)

    async def watch_released() -> None:
        reported = (0, 0)
        while True:
            await server.on_released.wait()
            server.on_released.clear()
            if len(server.released_keys) != reported[0]:
                emit(event="released", listeners=len(server.released_keys))
            if len(server.reclaimed_keys) != reported[1]:
                emit(event="reclaimed", listeners=len(server.reclaimed_keys))
            reported = (len(server.released_keys), len(server.reclaimed_keys))

    watcher = spawn(watch_released(), "watch-released")
    emit(event="ready", pods=server.describe(), pid=os.getpid())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "pause":
                await server.pause()
                emit(event="paused")
            elif line == "close":
                await server.close()
                emit(event="closed")
            elif line == "queue":
                emit(event="queue", length=server.queue_length())
            elif line == "exit":
                break
    finally:
        await cancel_and_wait(watcher)
        await service.close()
        await server.close()
        if adoption is not None:
            adoption.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handoff", required=True)
    parser.add_argument("--pods", type=int, default=1)
    parser.add_argument("--tag", default="old")
    parser.add_argument(
        "--adopt", help="a JSON file {uid: {ports, netns}} (a ready event's pods) to adopt instead of binding"
    )
    parser.add_argument("--netns-prefix", help="bind pod i's listeners in the namespace PREFIX<i> (root)")
    args = parser.parse_args(argv)
    args.adopt_pods = json.loads(Path(args.adopt).read_text()) if args.adopt else None
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()

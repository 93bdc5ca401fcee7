"""Pod IP allocation per node (pure): 10.244.N.2 upwards within the node's /24.

Allocation continues after the last address handed out and wraps around, so a just-released IP is not reused at
once (a connection to a deleted pod should not land on its successor).
"""

from __future__ import annotations

FIRST_HOST = 2
LAST_HOST = 254


class IpamExhausted(Exception):
    pass


class NodeIpam:
    def __init__(self, node_index: int) -> None:
        self.node_index = node_index
        self._used: set[int] = set()
        self._next = FIRST_HOST

    def _ip(self, host: int) -> str:
        return f"10.244.{self.node_index}.{host}"

    def allocate(self) -> str:
        size = LAST_HOST - FIRST_HOST + 1
        for step in range(size):
            host = FIRST_HOST + (self._next - FIRST_HOST + step) % size
            if host not in self._used:
                self._used.add(host)
                self._next = host + 1 if host < LAST_HOST else FIRST_HOST
                return self._ip(host)
        raise IpamExhausted(f"no free pod IP left on node {self.node_index} ({size} in use)")

    def release(self, ip: str) -> None:
        self._used.discard(self._host(ip))

    def _host(self, ip: str) -> int:
        parts = ip.split(".")
        if len(parts) != 4 or parts[:3] != ["10", "244", str(self.node_index)]:
            raise ValueError(f"{ip} is not in node {self.node_index}'s pod CIDR")
        return int(parts[3])

    @property
    def in_use(self) -> int:
        return len(self._used)

"""Bootstrap: what exists before any pod — the fabric and node namespaces, the CA (with one bearer token per node)
and one agent per node — and its teardown. Each component must become ready in bounded time or `up` fails with the
last lines of its log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable

from pyztunnel.aio import spawn
from pyztunnel.cluster import podnet, probe, topology
from pyztunnel.cluster.objects import Node, Store
from pyztunnel.cluster.process import CRASH_LOOP_RESTARTS, Supervised, pyztunnel_argv, tail
from pyztunnel.cluster.publisher import Publisher, atomic_write
from pyztunnel.netns import NETNS_RUN_DIR

_log = logging.getLogger("pyztunnel.cluster")

COMPONENT_READY_TIMEOUT = 30.0


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    """The spec's `{placeholder}`s of a component's command filled in."""
    out = []
    for arg in argv:
        filled = arg
        for key, value in values.items():
            filled = filled.replace("{" + key + "}", value)
        out.append(filled)
    return out


class Bootstrap:
    def __init__(self, store: Store, publisher: Publisher, agents: podnet.AgentPodNetwork | None) -> None:
        self.store = store
        self.publisher = publisher
        self.agents = agents
        self.fabric_fd = -1

    async def build_fabric(self) -> None:
        """The fabric netns with its bridge, every node netns, their links and routes; each node's run dir."""
        store = self.store
        started = time.monotonic()
        nodes = [topology.NodeAddr(n.name, n.index) for n in store.nodes.values()]
        await topology.build_fabric(store.name, nodes)
        self.fabric_fd = os.open(NETNS_RUN_DIR / topology.fabric_ns(store.name), os.O_RDONLY | os.O_CLOEXEC)
        for node in store.nodes.values():
            node.fd = os.open(NETNS_RUN_DIR / node.netns, os.O_RDONLY | os.O_CLOEXEC)
            node.run_dir.mkdir(parents=True, exist_ok=True)
        _log.info("fabric and %d nodes built in %.2fs", len(nodes), time.monotonic() - started)

    def start_ca(self) -> asyncio.Task[None] | None:
        """Start the CA (when the spec has one); the task returned ends once it serves."""
        if not self.store.spec.ca.enabled:
            return None
        self._write_tokens()
        store = self.store
        argv = pyztunnel_argv(fill(list(store.spec.ca.command), self._placeholders()))
        env = {**os.environ, **store.spec.ca.env, "PYZTUNNEL_CLUSTER": store.name}
        store.ca = Supervised(
            "ca",
            argv,
            netns=topology.fabric_ns(store.name),
            env=env,
            log_path=store.layout.log("ca"),
            on_change=self.publisher.changed,
        )
        store.ca.start()
        return spawn(self._wait_ca(store.ca), "cluster-wait-ca")

    async def start_agents(self) -> None:
        """Start one agent per node (when the spec has agents) and return once every one serves its API."""
        if self.agents is None:
            return
        for node in self.store.nodes.values():
            self._start_agent(node)
        await asyncio.gather(*(self._wait_agent(node) for node in self.store.nodes.values()))

    async def stop(self) -> None:
        """Stop the agents and the CA, close the namespaces' fds (the pods are gone by now)."""
        store = self.store
        stops = [n.agent.stop(5) for n in store.nodes.values() if n.agent is not None]
        if store.ca is not None:
            stops.append(store.ca.stop(5))
        await asyncio.gather(*stops, return_exceptions=True)
        for fd in [self.fabric_fd, *(n.fd for n in store.nodes.values())]:
            if fd >= 0:
                os.close(fd)

    # ----- the components --------------------------------------------------------------------------------------

    def _placeholders(self, node: Node | None = None) -> dict[str, str]:
        store = self.store
        values = {
            "cluster": store.name,
            "state_dir": str(store.layout.root),
            "ca_dir": str(store.layout.ca_dir),
            "workloads": str(store.layout.workloads),
            "ca_address": f"{topology.FABRIC_IP}:{topology.CA_PORT}",
            "trust_domain": store.spec.ca.trustDomain,
        }
        if node is not None:
            values |= {"node": node.name, "run_dir": str(node.run_dir), "node_ip": node.ip}
            values["tcp_migrate_req"] = str(store.spec.agent.tcpMigrateReq)
        return values

    def _write_tokens(self) -> None:
        ca_dir = self.store.layout.ca_dir
        ca_dir.mkdir(parents=True, exist_ok=True)
        tokens = {}
        for node in self.store.nodes.values():
            token = secrets.token_urlsafe(32)
            tokens[token] = node.name
            atomic_write(node.run_dir / "token", token + "\n", mode=0o600)
        atomic_write(ca_dir / "tokens.json", json.dumps(tokens, indent=2) + "\n", mode=0o600)

    async def _wait_ca(self, ca: Supervised) -> None:
        async def up() -> bool:
            ready = await probe.tcp(self.fabric_fd, topology.FABRIC_IP, topology.CA_PORT, 1.0, source=None)
            self.store.ca_ready = ready
            return ready

        await self._wait_component("the CA", up, ca)

    def _start_agent(self, node: Node) -> None:
        spec = self.store.spec.agent
        argv = pyztunnel_argv(fill(list(spec.command), self._placeholders(node)))
        env = {
            **os.environ,
            **spec.env,
            "PYZTUNNEL_CLUSTER": self.store.name,
            "NODE_NAME": node.name,
            "PYZTUNNEL_TCP_MIGRATE_REQ": "true" if spec.tcpMigrateReq else "false",
        }
        node.agent = Supervised(
            f"agent-{node.name}",
            argv,
            netns=node.netns,
            env=env,
            log_path=self.store.layout.log(f"agent-{node.name}"),
            on_change=self.publisher.changed,
        )
        node.agent.start()

    async def _wait_agent(self, node: Node) -> None:
        agents = self.agents
        assert agents is not None and node.agent is not None

        async def up() -> bool:
            node.agent_ready = await agents.ready(node.name)
            return node.agent_ready

        await self._wait_component(f"the agent of {node.name}", up, node.agent)

    async def _wait_component(self, what: str, check: Callable[[], Awaitable[bool]], proc: Supervised) -> None:
        deadline = time.monotonic() + COMPONENT_READY_TIMEOUT
        delay = 0.02
        while not await check():
            if proc.restarts >= CRASH_LOOP_RESTARTS or proc.failed_to_start:
                why = proc.failed_to_start or f"exited {proc.restarts} times"
                raise RuntimeError(f"{what} does not start ({why}); {tail(proc.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} did not become ready in {COMPONENT_READY_TIMEOUT:.0f}s; {tail(proc.log_path)}"
                )
            await asyncio.sleep(delay)  # polling a condition with a deadline
            delay = min(delay * 2, 0.2)
        self.publisher.changed()

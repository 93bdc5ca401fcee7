"""`pyztunnel proxy`: wires the pieces together.

State manager (LOCAL_XDS_PATH and XDS) → index; certificates (the identity store fed by the CA, or static files); per-pod proxies from ZDS
(in-pod) and/or direct loopback listeners; readiness/metrics/admin servers; drain on SIGTERM (stop accepting, GOAWAY,
wait up to the deadline, reset what is left) through lifecycle's Drainer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from pyztunnel.aio import Owners, TaskGroup
from pyztunnel.errors import UserError
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.identity.spiffe import Identity
from pyztunnel.identity.store import CertificateStore
from pyztunnel.lifecycle import drain, faults, handoff_key, handoff_name
from pyztunnel.lifecycle.drainer import Drainer
from pyztunnel.lifecycle.handoff_io import HandoffService
from pyztunnel.observe.metrics import Metrics
from pyztunnel.observe.servers import (
    HttpServer,
    Readiness,
    admin_server,
    listening_socket,
    metrics_server,
    readiness_server,
)
from pyztunnel.proxy.certs import CertSource, StaticCerts
from pyztunnel.proxy.config import ProxySettings
from pyztunnel.proxy.direct import direct_pods, parse_hostport
from pyztunnel.proxy.handoff import Adopter, PodSetListeners
from pyztunnel.proxy.migration import Migration
from pyztunnel.proxy.pod import PodProxy
from pyztunnel.proxy.podset import PodSet
from pyztunnel.proxy.priority import StartupPriority
from pyztunnel.proxy.shared import IndexHolder, Shared
from pyztunnel.proxy.state import StateManager
from pyztunnel.proxy.telemetry import Telemetry
from pyztunnel.proxy.zds_client import READINESS_TASK, ZdsClient
from pyztunnel.settings import declared
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.workloads.model import Protocol
from pyztunnel.xds.config import XdsSettings

_log = logging.getLogger("pyztunnel.proxy.app")

STATE_MANAGER = "state manager"
CERTIFICATES = "workload certificates"


class ProxyApp:
    def __init__(
        self,
        settings: ProxySettings,
        ca_settings: CaClientSettings,
        certs: CertSource | None = None,
        environ: dict[str, str] | None = None,
        xds_settings: XdsSettings | None = None,  # None: no XDS (the CLI loads ztunnel's default, localhost:15012)
        priority: StartupPriority | None = None,
    ) -> None:
        self.settings = settings
        self.priority = priority or StartupPriority(0)
        self.ca_settings = ca_settings
        self.environ = dict(os.environ if environ is None else environ)
        faults.configure(settings.fault, settings.fault_marker)
        self.readiness = Readiness()
        self.metrics = Metrics(tag=settings.version)
        self.servers: list[HttpServer] = []
        self.tasks = TaskGroup("proxy")  # the app's background work: config watch, ZDS, handoff, migration
        # What the app closes at the end, newest first: handoff service, listener leases, servers, migration, pods,
        # certificates.
        self.owners = Owners("proxy")
        self._store: CertificateStore | None = None
        self._cert_wait: asyncio.Task[None] | None = None
        self.certs = certs or self._make_certs()
        self.shared = Shared(
            settings,
            self.certs,
            IndexHolder(),
            telemetry=Telemetry(self.metrics),
            key_dir=ca_settings.key_dir,
            cluster_id=ca_settings.cluster_id,
        )
        self.owners.add("tls contexts", self.shared.tls.close)
        self.podset = PodSet(self.shared, on_change=self._pods_changed)
        self.owners.add("pod proxies", self.podset.close)
        self.direct: list[PodProxy] = direct_pods(self.shared, settings)
        for pod in self.direct:
            self.owners.add(f"direct pod {pod.key}", pod.drain_immediate)
        self.zds: ZdsClient | None = None
        self.state = StateManager(
            settings, xds_settings, ca_settings, self.shared.indexes, self._on_config, self.environ
        )
        self.owners.add("state manager", self.state.close)
        self.metrics.xds = self.state.xds.state.stats if self.state.xds is not None else None
        self.drainer: Drainer | None = None
        self.adopter: Adopter | None = None
        self.handoff_service: HandoffService | None = None
        self.handoff_listeners = PodSetListeners(self.podset)
        self.migration: Migration | None = None
        self.handoff_key: bytes | None = None
        if settings.handoff_socket is not None and (settings.listener_handoff or settings.connection_migration):
            path = Path(settings.handoff_socket)
            self.handoff_key = handoff_key.load_or_create(settings.handoff_key or handoff_key.beside(path))
            # Also with migration off: the registration is how this instance follows the previous one (the name).
            self.migration = Migration(self.pods, path, self.handoff_key, enabled=settings.connection_migration)
            self.owners.add("connection migration", self.migration.close)
        self._succession: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    def _make_certs(self) -> CertSource:
        if self.settings.cert_dir is not None:
            return StaticCerts.from_dir(self.settings.cert_dir)
        from pyztunnel.identity.client import CaClient  # grpc: imported only when a CA is used

        client = CaClient(self.ca_settings, environ=self.environ)
        self.owners.add("ca client", client.close)
        store = CertificateStore(client.fetch)
        self.owners.add("certificate store", store.close)
        self._store = store
        return store

    # ------------------------------------------------------------------ config
    def _on_config(self, index: WorkloadIndex) -> None:
        self._prefetch(index)

    def _prefetch(self, index: WorkloadIndex) -> None:
        """Warm the certificates of this node's mesh workloads; forget those that left (§4)."""
        store = self._store
        if store is None:
            return
        node = self.settings.node_name
        wanted = {
            Identity.for_workload(w.namespace, w.service_account, w.trust_domain)
            for w in (index.workloads_on(node) if node else index.workloads())
            if w.protocol is Protocol.HBONE
        }
        for identity in wanted:
            store.prefetch(identity)
        store.retain(wanted)
        # Ready only once every local identity has its certificate (DESIGN §5.1): the first connection of a pod
        # must not wait for a CSR round trip. An XDS delta that needs no new certificate leaves readiness alone.
        if self._cert_wait is not None and not self._cert_wait.done():
            self._cert_wait.cancel()
        if self._cert_wait is None or any(store.current(i) is None for i in wanted):
            self.readiness.block(CERTIFICATES)
            self._cert_wait = self.tasks.spawn(self._await_certificates(store, sorted(wanted)), "cert-warmup")
        else:
            self.readiness.unblock(CERTIFICATES)

    async def _await_certificates(self, store: CertificateStore, identities: list[Identity]) -> None:
        await asyncio.gather(*(store.wait_available(identity) for identity in identities))
        self.readiness.unblock(CERTIFICATES)
        _log.info("certificates ready", extra={"fields": {"identities": len(identities)}})

    def _pods_changed(self) -> None:
        self.metrics.set_proxy_counts(len(self.podset.pods), len(self.podset.pending))
        self.metrics.proxies_started = self.podset.started_total
        self.metrics.proxies_stopped = self.podset.stopped_total
        if self.zds is not None:
            self.zds.check_ready()

    # ------------------------------------------------------------------ servers
    async def start_servers(self) -> None:
        """Readiness (15021), metrics (15020), admin (127.0.0.1:15000); the address `off` (or empty) turns one off."""
        wanted: list[tuple[str, Callable[[list[socket.socket]], HttpServer], str]] = [
            (
                self.settings.readiness_addr,
                lambda socks: readiness_server(self.readiness, socks, self._config_version),
                "readiness",
            ),
            (self.settings.stats_addr, lambda socks: metrics_server(self.metrics, socks), "metrics"),
            (
                self.settings.admin_addr,
                lambda socks: admin_server(socks, config_dump=self.config_dump, on_quit=self._quit),
                "admin",
            ),
        ]
        for address, make, what in wanted:
            if address in ("", "off"):
                continue
            host, port = parse_hostport(address, f"{what} address")
            try:
                sock = listening_socket(host, port)
            except OSError as exc:
                raise UserError(f"cannot listen on {address} for the {what} server: {exc.strerror or exc}") from None
            server = make([sock])
            await server.start()
            self.servers.append(server)
            self.owners.add(f"{what} server", server.close)

    def _quit(self) -> None:
        if self.drainer is not None:
            self.drainer.quitquitquit()

    def _config_version(self) -> str | None:
        return self.state.version

    def config_dump(self) -> dict[str, object]:
        """ztunnel's /config_dump keys (§6.2)."""
        index = self.shared.indexes.index
        return {
            "workloads": [w.model_dump(by_alias=True, mode="json") for w in index.workloads()],
            "services": [s.model_dump(by_alias=True, mode="json") for s in index.services()],
            "policies": [p.model_dump(by_alias=True, mode="json") for p in index.policies()],
            "stagedServices": {key: {} for key in index.staged_services()},
            "xds": self.state.dump(),
            "staticConfig": self._static_config(),
            "version": self.settings.version,
            "config": {
                d.yaml_key: (str(v) if v is not None and not isinstance(v, bool | int | float | list) else v)
                for d in declared(ProxySettings)
                for v in [getattr(self.settings, d.name)]
            },
            "certificates": self._store.dump() if self._store is not None else [],
            "workloadState": {
                **{uid: {"state": "Up", "info": pod.key} for uid, pod in self.podset.pods.items()},
                **{
                    uid: {"state": "Pending", "info": f"{info.namespace}/{info.name}"}
                    for uid, (info, _) in self.podset.pending.items()
                },
            },
        }

    def _static_config(self) -> str:
        path = self.settings.local_xds_path
        if path is None:
            return ""
        try:
            return local.read(Path(path), self.settings.local_xds_max_bytes)
        except local.ConfigError:
            return ""

    # ------------------------------------------------------------------ run
    async def start(self) -> None:
        if self._store is not None:
            self._store.start()
        self.readiness.block(STATE_MANAGER)
        await self.state.start()  # readiness (503) and admin answer while a big LOCAL_XDS_PATH file is parsed
        if not self.state.sources:
            self._on_config(self.shared.indexes.index)
        for pod in self.direct:
            try:
                await pod.start()
            except OSError as exc:
                raise UserError(f"cannot listen for {pod.env.name}: {exc.strerror or exc}") from None
        if self.settings.inpod_uds is None and self.migration is not None:
            # Direct mode: our listeners are up; take the previous instance's connections, then serve the next one.
            self.migration.attempted = True
            await self.migration.register()
            self._serve_handoff()
        if self.settings.inpod_uds is not None:
            if self.settings.listener_handoff and self.handoff_key is not None:
                assert self.settings.handoff_socket is not None
                self.adopter = Adopter(Path(self.settings.handoff_socket), self.handoff_key)
                self.owners.add("listener leases", self.adopter.end_leases)
                self.shared.listeners.adopter = self.adopter
            self.readiness.block(READINESS_TASK)
            self.zds = ZdsClient(Path(self.settings.inpod_uds), self.podset, self._zds_ready)
        self.tasks.spawn(self._when_synced(), "state-synced")
        if self.priority.lowered:
            self.tasks.spawn(self._full_priority_when_ready(), "startup-priority")
        self.started.set()

    async def _full_priority_when_ready(self) -> None:
        # Ready: the previous instance may hand over its connections right after, and they must not wait for CPU.
        await self.readiness.wait_ready()
        self.priority.restore()

    async def _when_synced(self) -> None:
        """ztunnel's order: the in-pod manager connects to the node agent only after the first state load. And, for
        an upgrade that loses nothing, only once this node's certificates are in: a new instance takes no listener
        (adopted from its predecessor or its own) before it could serve it."""
        await self.state.synced.wait()
        self.readiness.unblock(STATE_MANAGER)
        if self.zds is None:
            return
        await self.readiness.wait_unblocked(CERTIFICATES)
        _log.info("state synced and certificates ready: connecting to the node agent")
        self.tasks.spawn(self.zds.run(), "zds-client")

    def _zds_ready(self, ready: bool) -> None:
        if ready:
            if self.migration is not None and not self.migration.settled:
                # Register for the previous instance's connections before we report ready (it may drain right after).
                if not self.migration.attempted:
                    self.migration.attempted = True
                    self.tasks.spawn(self._take_connections_then_ready(), "migrate-register")
                return
            self.readiness.unblock(READINESS_TASK)
            self._serve_handoff()
        else:
            self.readiness.block(READINESS_TASK)

    async def _take_connections_then_ready(self) -> None:
        assert self.migration is not None
        await self.migration.register()
        if self.zds is not None:
            self.zds.check_ready()  # ready now, unless ZDS went away meanwhile

    def _serve_handoff(self) -> None:
        """Once synced, stop adopting; serve our own listeners (and connections) to the next instance once the
        previous one is finished with us (docs/lifecycle.md, "Who holds the name")."""
        if self.adopter is not None:
            self.adopter.enabled = False
            self.shared.listeners.adopter = None
        if self._succession is not None or self.migration is None:
            return
        self._succession = self.tasks.spawn(self._take_the_name(self.migration), "handoff-succession")

    async def _take_the_name(self, migration: Migration) -> None:
        """The handoff socket's name moves to us only when the previous instance (if any) has sent `done` or is gone:
        until then it holds the listeners, and a restarted new instance must find it there. The move is atomic (a
        rename); the previous instance keeps its own, now unnamed, socket. Another instance that took the name since
        we looked becomes our predecessor instead (handoff_name.claim)."""
        assert self.handoff_key is not None
        while True:
            if migration.intake is not None:
                await migration.intake.done.wait()
            async with handoff_name.claim(migration.path, migration.name_seen) as ours:
                if ours:
                    self.handoff_service = HandoffService(
                        migration.path, self.handoff_listeners, connections=migration.give.handle, key=self.handoff_key
                    )
                    self.owners.add("handoff service", self.handoff_service.close)
                    await self.handoff_service.start()
                    break
            _log.info("another instance took the handoff socket meanwhile; registering with it as its successor")
            await migration.register()
        after = "no previous instance" if migration.intake is None else "the previous instance is finished with us"
        _log.info("serving the handoff socket", extra={"fields": {"path": str(migration.path), "after": after}})

    def drain_deadline(self) -> float:
        ctd = self.settings.connection_termination_deadline
        return drain.drain_deadline(
            float(ctd) if ctd is not None else None, self.settings.termination_grace_period_seconds
        )

    def stop_accepting(self) -> None:
        if self.zds is not None:
            self.zds.stop()
        # ztunnel's readiness/admin/metrics servers stop accepting when the drain starts (§1.2)
        for server in self.servers:
            self.tasks.spawn(server.stop_accepting(), f"{server.name}-stop")
        # Stop accepting now, then close our listener fds as ztunnel drops its listeners: new connections are refused
        # instead of queueing on a socket nobody accepts from. A listener handed off to a newer instance lives on
        # through its copy (closing our descriptor does not touch the shared socket).
        # In-pod listeners shared with a live new instance stay open, paused (PodSetListeners.close_unshared).
        self.handoff_listeners.stop_accepting()
        self.tasks.spawn(self.handoff_listeners.close_unshared(), "close-listeners")
        for pod in self.direct:
            for acceptor in pod.acceptors:
                acceptor.pause()
            self.tasks.spawn(pod.close_listeners(), f"close-listeners-{pod.key}")
        if self.adopter is not None:
            # The previous instance, if it still runs (we are being removed before it), accepts on them again.
            self.adopter.end_leases()

    def goaway(self) -> None:
        if self.migration is not None:
            # Established TCP↔TCP relays go to the new instance, if one registered for them (docs/migration.md).
            self.tasks.spawn(self.migration.drain(), "migrate-give")
        for pod in self.pods():
            pod.goaway()

    def pods(self) -> list[PodProxy]:
        return [*self.direct, *self.podset.pods.values()]

    async def run(self, install_signals: bool = True) -> drain.Outcome:
        """Start, serve until the drain ends; returns how it ended."""
        self.drainer = Drainer(
            self.drain_deadline(),
            stop_accepting=self.stop_accepting,
            goaway=self.goaway,
            connections=self.shared.connections,
        )
        if install_signals:
            self.drainer.install_signal_handlers()
        try:
            await self.start_servers()
            await self.start()
            _log.info("proxy started", extra={"fields": {"pods": len(self.pods())}})
            return await self.drainer.run()
        finally:
            if install_signals:
                self.drainer.remove_signal_handlers()
            await self.close()

    async def close(self) -> None:
        """The app's own tasks end (the drain already waited for what mattered), then everything it owns closes,
        newest first."""
        await self.tasks.close()
        await self.owners.close()

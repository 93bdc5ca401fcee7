"""Two proxies on loopback whose destination side takes its config over XDS (with the file as a second source): a DENY
pushed over XDS closes a live connection it now forbids, as a file change does (ztunnel's PolicyWatcher)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

from pyztunnel.identity.ca import CertificateAuthority
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.proxy.state import StateManager
from pyztunnel.workloads import local
from pyztunnel.workloads.index import WorkloadIndex
from pyztunnel.workloads.model import LocalConfig
from pyztunnel.xds.config import XdsSettings
from pyztunnel.xds.server import XdsServer
from tests.integration.proxy.harness import config_text, echo_server, settings, start_mesh, stop_mesh

DENY = """\
- name: deny-all-from-a
  namespace: b
  scope: Namespace
  action: Deny
  rules: [[[{namespaces: [!Exact a]}]]]
"""


async def test_a_deny_pushed_over_xds_closes_a_live_connection(tmp_path: Path) -> None:
    mesh = await start_mesh(tmp_path)
    ca = CertificateAuthority.create("cluster.local")
    (tmp_path / "root.pem").write_text(ca.root_pem)
    cert, key = ca.issue_server(["localhost"], ["127.0.0.1"], timedelta(hours=1))
    server = XdsServer()
    full = local.parse(config_text(mesh.a_ip, mesh.b_ip), "t.yaml")
    # the file holds workload a, XDS holds workload b: node B needs both sources to serve the connection
    (tmp_path / "local.yaml").write_text(config_text(mesh.a_ip, "127.255.255.254").replace("uid: b-1", "uid: ghost"))
    server.set_config(LocalConfig(workloads=tuple(w for w in full.workloads if w.uid == "b-1")))
    port = await server.start("127.0.0.1:0", key, cert + ca.root_pem)
    mesh.node_b.indexes.set(WorkloadIndex())
    state = StateManager(
        settings(LOCAL_XDS_PATH=str(tmp_path / "local.yaml")),
        XdsSettings(xds_address=f"https://127.0.0.1:{port}", xds_root_ca=str(tmp_path / "root.pem")),
        CaClientSettings(auth_token="t"),
        mesh.node_b.indexes,
        on_change=lambda index: None,
        environ={},
    )
    await state.start()
    try:
        await asyncio.wait_for(state.synced.wait(), 20)
        index = mesh.node_b.indexes.index
        assert index.by_uid["a-1"].workload_ips == (mesh.a_ip,) and index.by_uid["b-1"].workload_ips == (mesh.b_ip,)
        async with contextlib.asynccontextmanager(echo_server)(mesh.b_ip, mesh.app_port):
            reader, writer = await mesh.open_client()
            writer.write(b"before")
            assert await asyncio.wait_for(reader.readexactly(6), 10) == b"before"
            with_deny = local.parse(config_text(mesh.a_ip, mesh.b_ip, DENY), "t.yaml")
            server.set_config(
                LocalConfig(
                    workloads=tuple(w for w in with_deny.workloads if w.uid == "b-1"), policies=with_deny.policies
                )
            )
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            telemetry = mesh.node_b.telemetry
            await asyncio.wait_for(
                telemetry.wait_for(lambda t: t.errors["connection closed due to policy change"] == 1), 10
            )
            assert state.dump()["counts"]["xds"]["policies"] == 1  # type: ignore[index]
    finally:
        await state.close()
        await server.close()
        await stop_mesh(mesh)

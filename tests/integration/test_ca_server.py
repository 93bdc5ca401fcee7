"""The CA's gRPC server over TLS on 127.0.0.1, and the CSR client against it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import struct_pb2

from pyztunnel.identity import certs
from pyztunnel.identity.api import METHOD
from pyztunnel.identity.ca_server import add_node_token, start
from pyztunnel.identity.client import CaClient, CaClientError
from pyztunnel.identity.config import CaClientSettings, CaSettings
from pyztunnel.identity.spiffe import Identity
from pyztunnel.protocols._pb import ca_pb2

CART = Identity("cluster.local", "shop", "cart")  # scheduled on node-a
PAY = Identity("cluster.local", "shop", "pay")  # scheduled on node-b
WORKLOADS = """
workloads:
- {uid: c//v1/Pod/shop/cart-0, name: cart-0, namespace: shop, serviceAccount: cart, trustDomain: cluster.local,
   workloadIps: [10.244.1.2], node: node-a, protocol: HBONE}
- {uid: c//v1/Pod/shop/pay-0, name: pay-0, namespace: shop, serviceAccount: pay, trustDomain: cluster.local,
   workloadIps: [10.244.2.2], node: node-b, protocol: HBONE}
policies:
- name: p
  namespace: shop
  scope: Namespace
  action: Allow
  rules: [[[{principals: [!Exact "cluster.local/ns/shop/sa/cart"]}]]]
"""


@dataclasses.dataclass
class Ca:
    state_dir: Path
    workloads: Path
    port: int
    token_a: str

    def client_settings(self, **overrides: object) -> CaClientSettings:
        base = CaClientSettings(
            ca_address=f"https://127.0.0.1:{self.port}",
            ca_root_ca=str(self.state_dir / "root-cert.pem"),
            auth_token=self.token_a,
            secret_ttl=3600,  # type: ignore[arg-type]
        )
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def ca(tmp_path: Path) -> AsyncIterator[Ca]:
    state_dir, workloads = tmp_path / "ca", tmp_path / "workloads.yaml"
    workloads.write_text(WORKLOADS)
    token_a = add_node_token(state_dir, "node-a")
    add_node_token(state_dir, "node-b")
    settings = CaSettings(
        state_dir=state_dir,
        listen="127.0.0.1:0",
        workloads=workloads,
        max_cert_ttl=7200,  # type: ignore[arg-type]
    )
    server, port, _service = await start(settings)
    try:
        yield Ca(state_dir, workloads, port, token_a)
    finally:
        await server.stop(grace=None)


async def fetch(settings: CaClientSettings, identity: Identity, *, impersonate: bool = True) -> certs.WorkloadCert:
    client = CaClient(settings, impersonate=impersonate, environ={})
    try:
        return await client.fetch(identity)
    finally:
        await client.close()


async def test_fetch_certificate(ca: Ca) -> None:
    cert = await fetch(ca.client_settings(), CART)
    assert cert.leaf_identity() == CART
    assert cert.roots == (ca.state_dir / "root-cert.pem").read_text()
    assert len(cert.chain) == 1
    assert cert.not_after - cert.not_before == timedelta(hours=1)
    key = serialization.load_pem_private_key(cert.key_pem.encode(), None)
    assert key.public_key() == cert.leaf.public_key()
    assert oct((ca.state_dir / "root-key.pem").stat().st_mode & 0o777) == "0o600"


async def test_validity_capped_at_max(ca: Ca) -> None:
    cert = await fetch(ca.client_settings(secret_ttl=86400), CART)
    assert cert.not_after - cert.not_before == timedelta(hours=2)


async def test_token_from_file(ca: Ca, tmp_path: Path) -> None:
    token_file = tmp_path / "istio-token"
    token_file.write_text(ca.token_a + "\n")
    assert (await fetch(ca.client_settings(auth_token=str(token_file)), CART)).leaf_identity() == CART


@pytest.mark.parametrize(
    ("token", "message"), [("", "missing 'authorization: Bearer"), ("not-a-token", "unknown bearer token")]
)
async def test_refuses_bad_tokens(ca: Ca, token: str, message: str) -> None:
    with pytest.raises(CaClientError, match=message) as info:
        await fetch(ca.client_settings(auth_token=token), CART)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_refuses_identity_of_pod_on_another_node(ca: Ca) -> None:
    with pytest.raises(CaClientError, match=r"no pod with identity .*pay is scheduled on node node-a") as info:
        await fetch(ca.client_settings(), PAY)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_rereads_workloads_when_they_change(ca: Ca) -> None:
    moved = WORKLOADS.replace("node: node-b", "node: node-a")
    ca.workloads.write_text(moved)
    st = ca.workloads.stat()
    os.utime(ca.workloads, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even on coarse clocks
    assert (await fetch(ca.client_settings(), PAY)).leaf_identity() == PAY


async def test_rereads_tokens_when_they_change(ca: Ca) -> None:
    token_b2 = add_node_token(ca.state_dir, "node-b")
    assert (await fetch(ca.client_settings(auth_token=token_b2), PAY)).leaf_identity() == PAY


async def test_node_proxy_identity_without_impersonation(ca: Ca) -> None:
    ztunnel = Identity("cluster.local", "istio-system", "ztunnel")
    assert (await fetch(ca.client_settings(), ztunnel, impersonate=False)).leaf_identity() == ztunnel


async def raw_call(ca: Ca, request: ca_pb2.IstioCertificateRequest) -> grpc.aio.AioRpcError:
    root = (ca.state_dir / "root-cert.pem").read_bytes()
    async with grpc.aio.secure_channel(f"127.0.0.1:{ca.port}", grpc.ssl_channel_credentials(root)) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
            response_deserializer=ca_pb2.IstioCertificateResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, metadata=[("authorization", f"Bearer {ca.token_a}")], timeout=10)
    return info.value


def impersonating(identity: Identity) -> struct_pb2.Struct:
    meta = struct_pb2.Struct()
    meta.update({"ImpersonatedIdentity": identity.uri})
    return meta


async def test_refuses_garbage_csr(ca: Ca) -> None:
    err = await raw_call(ca, ca_pb2.IstioCertificateRequest(csr="garbage", metadata=impersonating(CART)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed CSR" in (err.details() or "")


async def test_refuses_csr_for_another_identity(ca: Ca) -> None:
    csr = certs.make_csr(PAY, certs.new_key())
    err = await raw_call(ca, ca_pb2.IstioCertificateRequest(csr=csr, metadata=impersonating(CART)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not spiffe://cluster.local/ns/shop/sa/cart" in (err.details() or "")


async def test_refuses_bad_impersonated_identity(ca: Ca) -> None:
    meta = struct_pb2.Struct()
    meta.update({"ImpersonatedIdentity": "cluster.local/ns/shop/sa/cart"})
    err = await raw_call(ca, ca_pb2.IstioCertificateRequest(csr="x", metadata=meta))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_client_rejects_unknown_ca(ca: Ca, tmp_path: Path) -> None:
    from pyztunnel.identity.ca import CertificateAuthority

    other = tmp_path / "other-root.pem"
    other.write_text(CertificateAuthority.create("cluster.local").root_pem)
    with pytest.raises(CaClientError) as info:
        await fetch(ca.client_settings(ca_root_ca=str(other), csr_timeout=5), CART)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_store_over_real_ca(ca: Ca) -> None:
    from pyztunnel.identity.store import CertificateStore, CertificateUnavailable

    client = CaClient(ca.client_settings(), environ={})
    store = CertificateStore(client.fetch)
    store.start()
    try:
        store.prefetch(CART)
        cert = await asyncio.wait_for(store.wait_available(CART), 10)
        assert await store.get(CART) is cert
        with pytest.raises(CertificateUnavailable, match="PERMISSION_DENIED"):
            await asyncio.wait_for(store.get(PAY), 10)
        assert [d["state"] for d in store.dump()] == ["Available", store.state(PAY)]
    finally:
        await store.close()
        await client.close()


async def test_second_server_on_same_port_fails(ca: Ca) -> None:
    from pyztunnel.errors import UserError

    with pytest.raises(UserError, match=r"cannot listen on 127\.0\.0\.1"):
        await start(CaSettings(state_dir=ca.state_dir, listen=f"127.0.0.1:{ca.port}"))


async def test_alt_ca_hostname_is_what_gets_verified(ca: Ca) -> None:
    ok = ca.client_settings(alt_ca_hostname="istiod.istio-system.svc")
    assert (await fetch(ok, CART)).leaf_identity() == CART
    with pytest.raises(CaClientError) as info:
        await fetch(ca.client_settings(alt_ca_hostname="not-the-ca.example", csr_timeout=5), CART)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_client_reloads_a_replaced_root_file(ca: Ca, tmp_path: Path) -> None:
    from pyztunnel.identity.ca import CertificateAuthority

    root_file = tmp_path / "root.pem"
    good = (ca.state_dir / "root-cert.pem").read_text()
    root_file.write_text(good)
    client = CaClient(ca.client_settings(ca_root_ca=str(root_file), csr_timeout=5), environ={})
    try:
        assert (await client.fetch(CART)).leaf_identity() == CART
        root_file.write_text(CertificateAuthority.create("cluster.local").root_pem + "\n")  # another size: a change
        with pytest.raises(CaClientError) as info:
            await client.fetch(CART)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        root_file.write_text(good)
        assert (await client.fetch(CART)).leaf_identity() == CART
    finally:
        await client.close()

"""Post-handshake checks of pyztunnel.identity.tls on fake SSL objects (every branch, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from pyztunnel.identity import tls
from pyztunnel.identity.spiffe import Identity

PEER = "spiffe://cluster.local/ns/web/sa/frontend"


class FakeSsl:
    def __init__(
        self,
        *,
        version: str = "TLSv1.3",
        alpn: str | None = "h2",
        cipher: str = "TLS_AES_128_GCM_SHA256",
        uris: tuple[str, ...] = (PEER,),
    ) -> None:
        self._version, self._alpn, self._cipher, self._uris = version, alpn, cipher, uris

    def version(self) -> str:
        return self._version

    def selected_alpn_protocol(self) -> str | None:
        return self._alpn

    def cipher(self) -> tuple[str, str, int]:
        return (self._cipher, "TLSv1.3", 128)

    def getpeercert(self) -> dict[str, Any]:
        return {"subjectAltName": (*(("URI", u) for u in self._uris), ("DNS", "x"))}


def check_both(obj: FakeSsl) -> None:
    tls.check_client_peer(obj, "cluster.local")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (FakeSsl(version="TLSv1.2"), "TLS 1.3 only"),
        (FakeSsl(alpn=None), "ALPN None"),
        (FakeSsl(alpn="http/1.1"), "ALPN 'http/1.1'"),
        (FakeSsl(cipher="TLS_CHACHA20_POLY1305_SHA256"), "AES-GCM only"),
        (FakeSsl(uris=()), "no identity in trust domain"),
        (FakeSsl(uris=("spiffe://other/ns/web/sa/frontend",)), "no identity in trust domain"),
        (FakeSsl(uris=("spiffe://cluster.local/ns/web",)), "no identity in trust domain"),
    ],
)
def test_server_side_rejections(obj: FakeSsl, why: str) -> None:
    with pytest.raises(tls.TlsError, match=why):
        check_both(obj)


def test_server_side_returns_first_parsable_identity() -> None:
    obj = FakeSsl(uris=("urn:x", "spiffe://other/ns/a/sa/b", PEER))
    # The trust-domain check passes on the third SAN; the identity is the first parsable one, as ztunnel's.
    assert tls.check_client_peer(obj, "cluster.local") == Identity("other", "a", "b")  # type: ignore[arg-type]


def test_client_side_exact_match() -> None:
    obj = FakeSsl(uris=("spiffe://cluster.local/ns/shop/sa/cart",))
    expected = [Identity("cluster.local", "shop", "cart")]
    assert tls.check_server_peer(obj, expected) == expected[0]  # type: ignore[arg-type]
    with pytest.raises(tls.TlsError, match="none of the expected"):
        tls.check_server_peer(obj, [Identity("cluster.local", "shop", "carts")])  # type: ignore[arg-type]
    with pytest.raises(tls.TlsError, match="none of the expected"):
        tls.check_server_peer(obj, [])  # type: ignore[arg-type]

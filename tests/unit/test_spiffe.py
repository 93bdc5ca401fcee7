from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyztunnel.identity.spiffe import (
    Identity,
    SpiffeError,
    any_in_trust_domain,
    first_identity,
    trust_domain_of,
    try_parse,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spiffe://cluster.local/ns/default/sa/httpbin", Identity("cluster.local", "default", "httpbin")),
        ("spiffe://td.example/ns/shop/sa/cart", Identity("td.example", "shop", "cart")),
        # ztunnel takes the parts verbatim; empty parts are not its parser's concern.
        ("spiffe:///ns//sa/", Identity("", "", "")),
    ],
)
def test_parse_valid(text: str, expected: Identity) -> None:
    assert Identity.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("cluster.local/ns/default/sa/x", "must start with spiffe://"),
        ("SPIFFE://cluster.local/ns/default/sa/x", "must start with spiffe://"),
        ("spiffe:/cluster.local/ns/default/sa/x", "must start with spiffe://"),
        ("spiffe://cluster.local/ns/default/sa", "expected"),
        ("spiffe://cluster.local/ns/default/sa/x/", "expected"),
        ("spiffe://cluster.local/ns/default/sa/x/y", "expected"),
        ("spiffe://cluster.local", "expected"),
        ("spiffe://cluster.local/sa/default/ns/x", "path must be"),
        ("spiffe://cluster.local/ns/default/serviceaccount/x", "path must be"),
        ("spiffe://cluster.local/NS/default/sa/x", "path must be"),
        ("", "must start with spiffe://"),
    ],
)
def test_parse_invalid(text: str, why: str) -> None:
    with pytest.raises(SpiffeError, match=why):
        Identity.parse(text)
    assert try_parse(text) is None


def test_principal_and_defaults() -> None:
    ident = Identity.for_workload("shop", "", None)
    assert ident == Identity("cluster.local", "shop", "default")
    assert ident.principal == "cluster.local/ns/shop/sa/default"
    assert Identity.for_workload("a", "b", "td") == Identity("td", "a", "b")


def test_first_identity_skips_unparsable() -> None:
    uris = ["https://example.com", "spiffe://bad", "spiffe://td/ns/a/sa/b", "spiffe://td/ns/c/sa/d"]
    assert first_identity(uris) == Identity("td", "a", "b")
    assert first_identity(["urn:x"]) is None


def test_trust_domain_helpers() -> None:
    assert trust_domain_of("spiffe://td/ns/a/sa/b") == "td"
    assert trust_domain_of("spiffe://td/ns/a") is None
    assert any_in_trust_domain(["spiffe://other/ns/a/sa/b", "spiffe://td/ns/a/sa/b"], "td")
    assert not any_in_trust_domain(["spiffe://other/ns/a/sa/b", "spiffe://td/ns/a"], "td")


_part = st.text(alphabet=st.characters(exclude_characters="/", exclude_categories=["Cs"]), max_size=20)


@given(_part, _part, _part)
def test_format_then_parse_round_trips(td: str, ns: str, sa: str) -> None:
    identity = Identity(td, ns, sa)
    assert Identity.parse(str(identity)) == identity


@given(st.text(max_size=60))
def test_parse_never_fails_unexpectedly(text: str) -> None:
    parsed = try_parse(text)
    if parsed is not None:
        assert str(parsed) == text  # whatever parses, prints back exactly

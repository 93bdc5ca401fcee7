"""protocols/hpack_plain: every block decodes with hpack's reference decoder to what was encoded, never touches the
dynamic table, and starts with a size update exactly when one is due."""

from __future__ import annotations

from hpack import Decoder, HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given
from hypothesis import strategies as st

from pyztunnel.protocols import hbone
from pyztunnel.protocols.hpack_plain import PlainEncoder, encode_integer

CONNECT = hbone.connect_headers(
    "10.0.0.7:8080", forwarded_for="for=10.0.0.1:43210", baggage_value="k8s.pod.name=a", traceparent_value="00-ab-cd-01"
)


def test_integers_match_rfc_7541_examples() -> None:
    assert encode_integer(10, 5, 0) == b"\x0a"  # C.1.1
    assert encode_integer(1337, 5, 0) == b"\x1f\x9a\x0a"  # C.1.2
    assert encode_integer(42, 8, 0) == b"\x2a"  # C.1.3


def test_connect_block_is_literal_and_leaves_the_peer_table_empty() -> None:
    decoder = Decoder()
    block = PlainEncoder().encode(CONNECT)
    assert block[0] == 0x20  # size update to 0 first
    assert decoder.decode(block, raw=True) == CONNECT
    assert len(decoder.header_table.dynamic_entries) == 0
    assert CONNECT[2][1] in block  # not Huffman-coded: the value's own octets


def test_static_matches_are_one_octet_and_the_update_is_sent_once() -> None:
    encoder = PlainEncoder()
    encoder.encode([(b":status", b"200")])
    assert encoder.encode([(b":status", b"200")]) == b"\x88"  # static index 8
    assert encoder.encode([(":method", "GET"), (":path", "/")]) == b"\x82\x84"


def test_a_table_size_change_is_followed_by_an_update_to_zero() -> None:
    encoder = PlainEncoder()
    encoder.encode([(b":status", b"200")])
    encoder.header_table_size = 0
    assert encoder.header_table_size == 0
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"
    decoder = Decoder()
    decoder.max_allowed_table_size = 0  # a decoder that lowered its limit accepts the block
    assert decoder.decode(b"\x20\x88", raw=True) == [(b":status", b"200")]


def test_sensitive_headers_use_the_never_indexed_form() -> None:
    encoder = PlainEncoder()
    encoder.encode([])
    for header in (NeverIndexedHeaderTuple(b"authorization", b"x"), (b"authorization", b"x", True)):
        block = encoder.encode([header])
        assert block[0] & 0xF0 == 0x10
        decoded = Decoder().decode(block, raw=True)
        assert decoded == [(b"authorization", b"x")]
        assert not decoded[0].indexable
    assert encoder.encode([HeaderTuple(b"authorization", b"x")])[0] & 0xF0 == 0x00


names = st.binary(min_size=1, max_size=300).map(lambda b: bytes(c | 0x61 for c in b.lower()))


@given(
    st.lists(
        st.tuples(st.one_of(names, st.sampled_from([b":authority", b"baggage", b"forwarded"])), st.binary(max_size=400))
    )
)
def test_any_header_list_round_trips(headers: list[tuple[bytes, bytes]]) -> None:
    encoder, decoder = PlainEncoder(), Decoder(max_header_list_size=1 << 20)
    for _ in range(2):  # a second block on the same context: still no table state on either side
        assert decoder.decode(encoder.encode(headers), raw=True) == headers
    assert len(decoder.header_table.dynamic_entries) == 0

"""protocols/records.coalesce: the same bytes in the same order, small neighbours joined up to a TLS record."""

from __future__ import annotations

import random

from pyztunnel.protocols.records import RECORD, coalesce


def test_small_pieces_share_a_record_and_big_ones_stay_alone() -> None:
    header, answer = b"\x00\x00\xfa\x00\x00\x00\x00\x00\x01", b"a" * 250
    assert coalesce([header, answer, b"w" * 13]) == [header + answer + b"w" * 13]
    big = b"b" * RECORD
    assert coalesce([header, big, header, answer]) == [header, big, header + answer]
    assert coalesce([]) == []
    one = b"x" * 100
    assert coalesce([one])[0] is one  # nothing to join: not copied


def test_no_piece_is_longer_than_a_record_unless_it_was_one_and_bytes_keep_their_order() -> None:
    rng = random.Random(5)
    for _ in range(200):
        chunks = [
            rng.randbytes(rng.choice((1, 9, 250, 4000, 9000, 16383, 16384, 70000))) for _ in range(rng.randint(0, 12))
        ]
        out = coalesce(chunks)
        assert b"".join(out) == b"".join(chunks)
        big = {id(c) for c in chunks if len(c) >= RECORD}
        assert all(len(piece) <= RECORD or id(piece) in big for piece in out)
        assert len(out) <= len(chunks)

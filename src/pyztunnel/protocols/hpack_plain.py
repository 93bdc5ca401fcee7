"""An HPACK encoder (RFC 7541) that never uses the dynamic table and never Huffman-codes: what HBONE sends.

Why: an HBONE CONNECT carries per-connection values (`forwarded` with the source port, a random `traceparent`) that
never repeat, so hpack's Encoder spent its time inserting them into the dynamic table (and evicting the last
connection's) and Huffman-coding them: 12 % of the client proxy's CPU per new connection (docs/bench.md). Any
decoder must accept these representations; the peer's decoder also skips Huffman decoding.

Representations used (§6): a header in the static table with its value → indexed (§6.1); a name in the static table →
literal without indexing, indexed name (§6.2.2); otherwise literal without indexing, new name. A header the caller
marks sensitive (hpack's NeverIndexedHeaderTuple or a true third element) → the never-indexed forms (§6.2.3), which
also tell intermediaries not to index it.

Our dynamic table is always empty. Its maximum size still changes with the peer's SETTINGS_HEADER_TABLE_SIZE (h2 sets
`header_table_size`); the first block, and the first after every change, starts with a size update to 0 (§6.3), which
is valid under any limit and keeps a decoder that expects an update after it lowered the limit in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import HeaderTuple
from hpack.table import HeaderTable

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_FULL_INDEX: dict[tuple[bytes, bytes], int] = {}
_NAME_INDEX: dict[bytes, int] = {}
for _i, (_name, _value) in enumerate(_STATIC, start=1):
    _FULL_INDEX.setdefault((_name, _value), _i)
    _NAME_INDEX.setdefault(_name, _i)

_WITHOUT_INDEXING = 0x00
_NEVER_INDEXED = 0x10
_SIZE_UPDATE_TO_ZERO = b"\x20"
_MAX_CACHED_NAMES = 256  # prefixes of names seen; bounded, the names come from our own code


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """§5.1: `value` in a `prefix_bits`-bit prefix whose other bits are `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """§5.2, H = 0: the length in a 7-bit prefix, then the octets."""
    size = len(data)
    return (bytes((size,)) if size < 127 else encode_integer(size, 7, 0)) + data


class PlainEncoder:
    """Drop-in for hpack.Encoder as h2 uses it (`encode`, `header_table_size`)."""

    def __init__(self) -> None:
        self._table_size = 4096
        self._size_update_due = True
        self._name_prefixes: dict[tuple[bytes, int], bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_size = value
        self._size_update_due = True

    def _name_prefix(self, name: bytes, kind: int) -> bytes:
        """The representation's first octets up to the value: fixed per name and kind, so cached."""
        key = (name, kind)
        prefix = self._name_prefixes.get(key)
        if prefix is None:
            index = _NAME_INDEX.get(name)
            prefix = encode_integer(index, 4, kind) if index is not None else bytes((kind,)) + _string(name)
            if len(self._name_prefixes) < _MAX_CACHED_NAMES:
                self._name_prefixes[key] = prefix
        return prefix

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """A header block for `headers` ((name, value), (name, value, sensitive) or HeaderTuple; bytes or str).
        `huffman` is accepted for hpack's signature and ignored: literals are sent as plain octets."""
        parts: list[bytes] = []
        if self._size_update_due:
            parts.append(_SIZE_UPDATE_TO_ZERO)
            self._size_update_due = False
        for header in headers:
            name, value = header[0], header[1]
            if isinstance(name, str):
                name = name.encode("utf-8")
            if isinstance(value, str):
                value = value.encode("utf-8")
            indexable = header.indexable if isinstance(header, HeaderTuple) else len(header) < 3 or not header[2]
            sensitive = not indexable
            if not sensitive:
                index = _FULL_INDEX.get((name, value))
                if index is not None:
                    parts.append(encode_integer(index, 7, 0x80))
                    continue
            parts.append(self._name_prefix(name, _NEVER_INDEXED if sensitive else _WITHOUT_INDEXING))
            parts.append(_string(value))
        return b"".join(parts)

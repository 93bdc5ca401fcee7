"""What goes into one TLS record, sans-IO (issue 14): HTTP/2 output as few records as the bytes need.

uvloop's SSL transport turns every element of `writelines` into its own `SSL_write`, so its own TLS record (and its
own pass through OpenSSL, the memory BIO and the peer's decryption). HBONE output is a list of small pieces: each DATA
frame's 9-byte header beside its payload, WINDOW_UPDATEs, a response's HEADERS. Sent as they are, a relayed 250-byte
answer costs two records, header and payload. `coalesce` joins neighbouring small pieces into pieces of up to one
record (16 KiB, the most TLS puts in one, as ztunnel's rustls does) and leaves a piece that fills a record by itself
alone (joining it would copy it for nothing). Measured with callgrind on bench_mtls's keep-alive path: −32 % of the
proxy's instructions per request (docs/bench.md).
"""

from __future__ import annotations

from collections.abc import Sequence

RECORD = 16 * 1024  # TLS's maximum plaintext per record (RFC 8446 §5.1)


def coalesce(chunks: Sequence[bytes | memoryview], record: int = RECORD) -> list[bytes | memoryview]:
    """The same bytes in the same order, neighbouring pieces smaller than a record joined up to `record` bytes."""
    out: list[bytes | memoryview] = []
    run: list[bytes | memoryview] = []
    size = 0
    for chunk in chunks:
        n = len(chunk)
        if n >= record or size + n > record:
            if run:
                out.append(run[0] if len(run) == 1 else b"".join(run))
                run, size = [], 0
            if n >= record:
                out.append(chunk)
                continue
        run.append(chunk)
        size += n
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out

"""The waypoint's HTTP/1.1 framing (apps/http_hop.py): heads, and where bodies end as their bytes pass."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyztunnel.apps import http_hop


def head(text: str) -> http_hop.Head:
    return http_hop.parse_head(text.replace("\n", "\r\n").encode() + b"\r\n")


def test_a_request_head_and_its_path() -> None:
    h = head("GET /status/418?x=1 HTTP/1.1\nHost: web\nConnection: keep-alive\n")
    assert http_hop.request_path(h) == "/status/418?x=1" and h.get("host") == "web" and h.keep_alive
    assert not head("GET / HTTP/1.0\n").keep_alive and not head("GET / HTTP/1.1\nconnection: close\n").keep_alive
    h.headers.append(("x-pyztunnel-waypoint", "w"))
    assert h.encode().endswith(b"x-pyztunnel-waypoint: w\r\n\r\n")


@pytest.mark.parametrize(
    "raw", [b"garbage\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"GET / HTTP/1.1\r\n : x\r\n\r\n"]
)
def test_what_is_not_http_is_refused(raw: bytes) -> None:
    with pytest.raises(http_hop.HttpError):
        http_hop.parse_head(raw)


def test_bodies_by_length_none_and_until_close() -> None:
    body = http_hop.Body(head("HTTP/1.1 200 OK\ncontent-length: 5\n"), response=True)
    progress = [(body.feed(b"abc"), body.done), (body.feed(b"deNEXT"), body.done)]
    assert progress == [(3, False), (2, True)]
    assert http_hop.Body(head("HTTP/1.1 204 No Content\n"), response=True).done
    assert http_hop.Body(head("HTTP/1.1 200 OK\ncontent-length: 9\n"), response=True, request_method="HEAD").done
    assert http_hop.Body(head("GET / HTTP/1.1\n"), response=False).done
    assert http_hop.Body(head("HTTP/1.1 200 OK\n"), response=True).until_close
    with pytest.raises(http_hop.HttpError):
        http_hop.Body(head("HTTP/1.1 200 OK\ncontent-length: -1\n"), response=True)


CHUNKED = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n"


@given(st.lists(st.integers(1, len(CHUNKED)), max_size=8))
def test_a_chunked_body_ends_exactly_at_its_last_byte_however_it_is_split(cuts: list[int]) -> None:
    data = CHUNKED + b"NEXT MESSAGE"
    points = sorted({0, *cuts, len(data)})
    body = http_hop.Body(head("HTTP/1.1 200 OK\ntransfer-encoding: chunked\n"), response=True)
    used = 0
    for start, end in itertools.pairwise(points):
        used += body.feed(data[start:end])
        if body.done:
            break
    assert body.done and used == len(CHUNKED)


def test_a_bad_chunk_size_is_refused() -> None:
    body = http_hop.Body(head("HTTP/1.1 200 OK\ntransfer-encoding: chunked\n"), response=True)
    with pytest.raises(http_hop.HttpError, match="bad chunk size"):
        body.feed(b"zz\r\n")

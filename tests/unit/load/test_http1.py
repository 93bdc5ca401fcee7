"""The incremental HTTP/1.1 response parser, fed byte by byte and in odd splits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyztunnel.load.http1 import (
    HttpParseError,
    Response,
    ResponseParser,
    Target,
    build_request,
    parse_url,
)

SIMPLE = b"HTTP/1.1 418 I'm a teapot\r\nServer: t\r\nContent-Length: 5\r\n\r\nhello"
HEAD = len(SIMPLE) - 5  # 59


def in_progress(parser: ResponseParser) -> bool:
    return parser.in_progress


def feed_bytewise(parser: ResponseParser, data: bytes) -> list[Response]:
    out = []
    for i in range(len(data)):
        response = parser.feed(data[i : i + 1])
        if response is not None:
            out.append(response)
    return out


def test_content_length_whole_and_bytewise() -> None:
    assert ResponseParser().feed(SIMPLE) == Response(418, HEAD, 5, True)
    assert feed_bytewise(ResponseParser(), SIMPLE) == [Response(418, HEAD, 5, True)]


def test_two_responses_in_sequence_reuse_the_parser() -> None:
    parser = ResponseParser()
    assert parser.feed(SIMPLE) is not None
    assert not in_progress(parser)
    assert parser.feed(SIMPLE[:10]) is None
    assert in_progress(parser)
    assert parser.feed(SIMPLE[10:]) == Response(418, HEAD, 5, True)


def test_chunked_with_extensions_and_trailers() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n"
    )
    assert ResponseParser().feed(data) == Response(200, 47, 11, True)
    assert feed_bytewise(ResponseParser(), data) == [Response(200, 47, 11, True)]


def test_connection_close_and_http10_defaults() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert ResponseParser().feed(closing) == Response(200, len(closing), 0, False)
    http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert ResponseParser().feed(http10) == Response(200, len(http10), 0, False)
    http10_ka = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
    assert ResponseParser().feed(http10_ka) == Response(200, len(http10_ka), 0, True)


def test_body_until_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\nsome") is None
    assert parser.feed(b" body") is None
    assert parser.eof() == Response(200, 19, 9, False)


def test_no_body_statuses_ignore_missing_length() -> None:
    assert ResponseParser().feed(b"HTTP/1.1 204 No Content\r\n\r\n") == Response(204, 27, 0, True)
    assert ResponseParser().feed(b"HTTP/1.1 304 Not Modified\r\n\r\n") == Response(304, 29, 0, True)


def test_interim_100_continue_is_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + SIMPLE
    assert ResponseParser().feed(data) == Response(418, HEAD + 25, 5, True)


def test_eof_mid_response_is_an_error() -> None:
    parser = ResponseParser()
    parser.feed(SIMPLE[:-2])
    with pytest.raises(HttpParseError, match="mid-response"):
        parser.eof()
    assert ResponseParser().eof() is None  # nothing in progress: a clean close


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\x03\x04\x05",
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 42 Low\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
        b"XYZ",  # short, but already not "HTTP/"
    ],
)
def test_garbage_raises(garbage: bytes) -> None:
    with pytest.raises(HttpParseError):
        ResponseParser().feed(garbage)


def test_oversized_headers_raise() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(HttpParseError, match="too large"):
        parser.feed(b"X: " + b"a" * 70000)


def test_parse_url_and_build_request() -> None:
    target = parse_url("http://example.test:8080/status/418?x=1")
    assert target == Target("example.test", 8080, "/status/418?x=1", "example.test:8080")
    assert parse_url("localhost/echo").port == 80  # no scheme: http, like fortio
    request = build_request(target, [("X-A", "b")], keep_alive=False, user_agent="ua")
    assert request == (
        b"GET /status/418?x=1 HTTP/1.1\r\nHost: example.test:8080\r\nUser-Agent: ua\r\nX-A: b\r\nConnection: close\r\n\r\n"
    )
    custom_host = build_request(target, [("Host", "other")], keep_alive=True, user_agent="ua")
    assert b"Host: example.test" not in custom_host
    assert b"Host: other\r\n" in custom_host


@pytest.mark.parametrize("url", ["https://x/", "http://:80/", "http://h:99999/"])
def test_parse_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


@given(
    st.lists(
        st.sampled_from([SIMPLE, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
        min_size=1,
        max_size=5,
    ),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=50),
)
def test_any_split_gives_the_same_responses(responses: list[bytes], cuts: list[int]) -> None:
    """However the bytes are cut into reads, the parser finds the same responses."""
    stream = b"".join(responses)
    expected = [ResponseParser().feed(r) for r in responses]
    parser = ResponseParser()
    got = []
    pos = 0
    sizes = iter(cuts * (len(stream) // max(sum(cuts), 1) + 1))
    while pos < len(stream):
        size = next(sizes)
        response = parser.feed(stream[pos : pos + size])
        pos += size
        while response is not None:
            got.append(response)
            response = parser.feed(b"")
    assert got == expected

"""`pyztunnel load` against servers written here, on 127.0.0.1: codes, every failure kind, retries, exact counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pyztunnel.load.histogram import Histogram
from pyztunnel.load.options import LoadOptions
from pyztunnel.load.run import RunAborted, _run_here
from pyztunnel.load.stats import RunStats

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashing or force-closing proxy does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def status_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """GET /status/NNN answers NNN with a 2-byte body, keep-alive."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        code = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % code)
        await writer.drain()


def options(url: str, **kw: object) -> LoadOptions:
    base: dict[str, object] = {"qps": 0, "connections": 1, "timeout": 2.0, "workers": 1}
    base.update(kw)
    return LoadOptions(url=url, **base)  # type: ignore[arg-type]


async def test_codes_and_exact_count() -> None:
    async with serve(status_server) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/status/418", connections=4, exactly=37))
    assert stats.codes == {418: 37}
    assert stats.calls == 37
    assert stats.warmup == 0  # -n: no warmup, like fortio
    assert stats.sockets == [1, 1, 1, 1]
    assert not stats.error_kinds
    assert stats.errors.count == 0  # 418 counts as OK in fortio


async def test_fewer_calls_than_connections() -> None:
    async with serve(status_server) as port:
        stats = await asyncio.wait_for(_run_here(options(f"http://127.0.0.1:{port}/", connections=5, exactly=3)), 10)
    assert stats.calls == 3
    assert stats.sockets == [1, 1, 1, 0, 0]


async def test_error_code_is_counted_as_error() -> None:
    async with serve(status_server) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/status/503", exactly=5))
    assert stats.codes == {503: 5}
    assert stats.errors.count == 5
    assert not stats.error_kinds  # an HTTP error is not a socket error


async def test_duration_run_with_warmup_and_pacing() -> None:
    async with serve(status_server) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", qps=40, connections=2, duration=0.5))
    assert stats.warmup == 2
    assert 15 <= stats.calls <= 22  # 40 qps for 0.5 s, paced
    assert stats.end - stats.start >= 0.5
    assert set(stats.codes) == {200}


async def test_closed_port_is_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connect is refused
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", exactly=3))
    assert stats.codes == {-1: 3}
    assert stats.error_kinds == {"connect: connection refused": 3}
    assert stats.socket_count == 0


async def test_warmup_failure_aborts_unless_allowed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(RunAborted, match="error -1"):
            await _run_here(options(f"http://127.0.0.1:{port}/", duration=0.2))
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", duration=0.2, allow_initial_errors=True))
    assert stats.calls > 0
    assert set(stats.codes) == {-1}


async def test_reset_mid_response() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        reset(writer)

    async with serve(handler) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", exactly=4))
    assert stats.codes == {-1: 4}
    assert stats.error_kinds == {"closed mid-response": 4}
    assert stats.retried == 0  # bytes of the answer had arrived: never retried


async def test_garbage() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"\x16\x03\x01 definitely not HTTP\r\n\r\n")
        await reader.read()

    async with serve(handler) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", exactly=3))
    assert stats.codes == {-1: 3}
    assert stats.error_kinds == {"garbage": 3}


async def test_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serve(silent) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", exactly=2, timeout=0.2))
    assert stats.codes == {-1: 2}
    assert stats.error_kinds == {"timeout": 2}
    assert all(d >= 0.2 for d in (stats.errors.min, stats.errors.max))


async def close_on_second_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the first request of each connection; closes on the second without a byte (an idle-close race)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")


async def test_keepalive_retry_is_counted() -> None:
    async with serve(close_on_second_request) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", exactly=4))
    assert stats.codes == {200: 4}  # what fortio would show...
    assert stats.retried == 3  # ...and what it would hide: calls 2-4 failed on their reused socket first
    assert stats.retry_kinds == {"closed by peer": 3}
    assert stats.sockets == [4]


async def test_no_retry_shows_the_failures() -> None:
    async with serve(close_on_second_request) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", exactly=4, retry=False))
    assert stats.codes == {200: 2, -1: 2}
    assert stats.retried == 0
    assert stats.error_kinds == {"closed by peer": 2}


async def test_keepalive_false_uses_a_socket_per_call() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with serve(handler) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", exactly=3, keepalive=False))
    assert stats.codes == {200: 3}
    assert stats.sockets == [3]
    assert stats.idle_closed == 0
    assert all(b"Connection: close\r\n" in head for head in seen)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def test_tcp_echo_payload() -> None:
    async with serve(echo) as port:
        stats = await _run_here(options(f"tcp://127.0.0.1:{port}", exactly=10, connections=2))
    assert stats.codes == {"OK": 10}
    assert stats.sockets == [1, 1]
    assert stats.bytes_sent == stats.bytes_received == 24 * 10


async def test_tcp_not_echoing() -> None:
    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper())

    async with serve(wrong) as port:
        stats = await _run_here(options(f"tcp://127.0.0.1:{port}", exactly=2))
    assert stats.codes == {"read not echoing writes": 2}


async def test_stream_detects_a_broken_connection() -> None:
    connections = 0

    async def breaks_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        echoed = 0
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            echoed += len(data)
            if first and echoed > 200_000:
                reset(writer)
                return

    async with serve(breaks_first) as port:
        stats = await _run_here(options(f"tcp://127.0.0.1:{port}", duration=0.6, connections=2, stream=True))
    assert stats.stream.broken == 1
    assert stats.stream.connections == 3  # two, plus the reconnect after the break
    assert stats.stream.bytes_corrupted == 0
    assert stats.stream.bytes_echoed > 200_000
    assert stats.codes["OK"] == 2
    assert sum(n for code, n in stats.codes.items() if str(code).startswith("broken")) == 1
    assert sum(stats.sockets) == 3


async def test_stream_detects_corruption() -> None:
    async def flips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while data := await reader.read(65536):
            if first:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
                first = False
            writer.write(data)
            await writer.drain()

    async with serve(flips) as port:
        stats = await _run_here(options(f"tcp://127.0.0.1:{port}", duration=0.3, stream=True))
    assert stats.stream.bytes_corrupted == 1
    assert stats.stream.corrupted_connections == 1
    assert stats.codes == {"corrupted": 1}


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pyztunnel", "load", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_two_worker_processes_merge_exactly(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    async with serve(status_server) as port:
        code, out, err = await run_cli(
            "-qps",
            "0",
            "-c",
            "5",
            "-n",
            "101",
            "-workers",
            "2",
            "-json",
            str(result),
            f"http://127.0.0.1:{port}/status/418",
        )
    assert code == 0, err
    doc = json.loads(result.read_text())
    assert doc["RetCodes"] == {"418": 101}
    assert doc["DurationHistogram"]["Count"] == 101
    assert doc["Sockets"] == [1, 1, 1, 1, 1]
    assert [line.split("]")[0] for line in out.splitlines() if line.startswith("[")] == ["[0", "[1", "[2", "[3", "[4"]
    assert sum(entry["Calls"] for entry in doc["Timeline"]) == 101
    assert "Code 418 : 101 (100.0 %)" in out
    assert "All done 101 calls (plus 0 warmup)" in out
    assert "Sockets used: 5 (for perfect keepalive, would be 5)" in out


async def test_cli_json_to_stdout_keeps_stdout_pure() -> None:
    async with serve(status_server) as port:
        code, out, err = await run_cli("-n", "3", "-c", "1", "-json", "-", f"http://127.0.0.1:{port}/")
    assert code == 0, err
    assert json.loads(out)["RetCodes"] == {"200": 3}
    assert "All done 3 calls" in err


async def test_cli_bad_flag_is_one_line_exit_2() -> None:
    code, _out, err = await run_cli("-bogus", "http://127.0.0.1:1/")
    assert code == 2
    assert err.strip() == "error: flag provided but not defined: -bogus (see 'pyztunnel load -h')"
    assert "Traceback" not in err


async def test_cli_warmup_abort_exits_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code, _out, err = await run_cli("-t", "1s", f"http://127.0.0.1:{port}/")
    assert code == 1
    assert "Aborting because of error -1" in err


def test_stats_survive_the_worker_wire_format() -> None:
    stats = RunStats()
    stats.record(200, 0.001, 0.5)
    stats.record(-1, 0.002, 1.5, "timeout")
    stats.conn_ids, stats.sockets, stats.conn_ips = [2, 0], [5, 6], ["b", "a"]
    stats.conn_connect = [Histogram(), Histogram()]
    again = RunStats.from_state(stats.to_state())
    again.order_connections()
    assert (again.conn_ids, again.sockets, again.conn_ips) == ([0, 2], [6, 5], ["a", "b"])
    assert again.codes == stats.codes
    assert again.error_kinds == {"timeout": 1}
    assert sorted(again.timeline) == [0, 1]


async def test_idle_close_is_not_an_error() -> None:
    """A server that closes keep-alive connections between paced calls: new sockets, no error, no retry."""

    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()  # then close (finally in serve) without saying Connection: close

    async with serve(one_per_connection) as port:
        stats = await _run_here(options(f"http://127.0.0.1:{port}/", qps=20, exactly=4))
    assert stats.codes == {200: 4}
    assert stats.retried == 0
    assert stats.idle_closed >= 3  # noticed between the paced calls (50 ms apart)
    assert stats.sockets == [4]


async def test_cli_until_interrupted_still_reports() -> None:
    """-t 0 runs until SIGINT; the results are printed anyway (fortio's behaviour)."""
    requests = 0
    enough = asyncio.Event()

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            await reader.readuntil(b"\r\n\r\n")
            requests += 1
            if requests >= 20:
                enough.set()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with serve(counting) as port:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pyztunnel", "load", "-qps", "200", "-c", "2", "-t", "0", "-workers", "2",
            f"http://127.0.0.1:{port}/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.wait_for(enough.wait(), timeout=30)
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err
    text = out.decode()
    assert "Starting at 200 qps with 2 thread(s) [gomax 2] until interrupted" in text
    assert "Interrupted: results cover the run until the interruption" in text
    calls = int(text.split("All done ")[1].split(" calls")[0])
    assert calls >= 18  # 20 requests seen, minus the 2 warmups

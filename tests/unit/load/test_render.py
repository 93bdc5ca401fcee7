"""fortio text and JSON rendering against fixtures (values hand-checked: see test_histogram for the math)."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest

from pyztunnel.load.histogram import Histogram
from pyztunnel.load.options import LoadOptions
from pyztunnel.load.render import go_json, header_lines, result_json, text_report
from pyztunnel.load.stats import RunStats

OPTIONS = LoadOptions(url="http://127.0.0.1:8080/status/418", qps=0, connections=2, duration=2)


def sample() -> RunStats:
    """Five calls over two seconds on two connections; one reset, one retried call, one reconnect."""
    stats = RunStats()
    stats.start, stats.end = 100.0, 102.0
    calls: list[tuple[int, float, float, str | None]] = [
        (418, 0.0005, 100.2, None),
        (418, 0.0015, 100.7, None),
        (200, 0.0105, 101.1, None),
        (-1, 0.05, 101.5, "connection reset"),
        (418, 0.2, 101.9, None),
    ]
    for code, duration, at, kind in calls:
        stats.record(code, duration, at, kind)
    stats.record_retry("closed by peer", 101.5)
    stats.sockets = [2, 1]
    stats.conn_ips = ["127.0.0.1:8080"] * 2
    for i in range(2):
        hist = Histogram()
        hist.record(0.0002 * (i + 1))
        stats.conn_connect.append(hist)
        stats.connect_times.record(0.0002 * (i + 1))
    stats.ip_counts = {"127.0.0.1:8080": 2}
    stats.warmup = 2
    for _ in range(4):
        stats.header_sizes.record(100)
        stats.sizes.record(105)
    return stats


FULL = """\
Ended after 2s : 5 calls. qps=2.5
Aggregated Function Time : count 5 avg 0.0525 +/- 0.07594 min 0.0005 max 0.2 sum 0.2625
# range, mid point, percentile, count
>= 0.0005 <= 0.001 , 0.00075 , 20.00, 1
> 0.001 <= 0.002 , 0.0015 , 40.00, 1
> 0.01 <= 0.011 , 0.0105 , 60.00, 1
> 0.045 <= 0.05 , 0.0475 , 80.00, 1
> 0.18 <= 0.2 , 0.19 , 100.00, 1
# target 50% 0.0105
# target 75% 0.04875
# target 90% 0.19
# target 99% 0.199
# target 99.9% 0.1999
Error cases : count 1 avg 0.05 +/- 0 min 0.05 max 0.05 sum 0.05
# range, mid point, percentile, count
>= 0.05 <= 0.05 , 0.05 , 100.00, 1
# target 50% 0.05
# target 75% 0.05
# target 90% 0.05
# target 99% 0.05
# target 99.9% 0.05
# Socket and IP used for each connection:
[0]   2 socket used, resolved to 127.0.0.1:8080, connection timing : count 1 avg 0.0002 +/- 0 min 0.0002 max 0.0002 sum 0.0002
[1]   1 socket used, resolved to 127.0.0.1:8080, connection timing : count 1 avg 0.0004 +/- 0 min 0.0004 max 0.0004 sum 0.0004
Connection time histogram (s) : count 2 avg 0.0003 +/- 0.0001 min 0.0002 max 0.0004 sum 0.0006
# range, mid point, percentile, count
>= 0.0002 <= 0.0004 , 0.0003 , 100.00, 2
# target 50% 0.0002
# target 75% 0.0003
# target 90% 0.00036
# target 99% 0.000396
# target 99.9% 0.0003996
Sockets used: 3 (for perfect keepalive, would be 2)
Uniform: false, Jitter: false, Catchup allowed: true
IP addresses distribution:
127.0.0.1:8080: 2
Code  -1 : 1 (20.0 %)
Code 200 : 1 (20.0 %)
Code 418 : 3 (60.0 %)
Response Header Sizes : count 4 avg 100 +/- 0 min 100 max 100 sum 400
Response Body/Total Sizes : count 4 avg 105 +/- 0 min 105 max 105 sum 420
Socket errors : connection reset 1
Retried 1 calls on a fresh socket after a reused keep-alive socket failed (closed by peer 1)
Errors by second : 1s: 1 errors 1 retried
All done 5 calls (plus 2 warmup) 52.500 ms avg, 2.5 qps
"""

QUIET = """\
Aggregated Function Time : count 5 avg 0.0525 +/- 0.07594 min 0.0005 max 0.2 sum 0.2625
# target 50% 0.0105
# target 75% 0.04875
# target 90% 0.19
# target 99% 0.199
# target 99.9% 0.1999
Error cases : count 1 avg 0.05 +/- 0 min 0.05 max 0.05 sum 0.05
Sockets used: 3 (for perfect keepalive, would be 2)
Code  -1 : 1 (20.0 %)
Code 200 : 1 (20.0 %)
Code 418 : 3 (60.0 %)
Socket errors : connection reset 1
Retried 1 calls on a fresh socket after a reused keep-alive socket failed (closed by peer 1)
Errors by second : 1s: 1 errors 1 retried
All done 5 calls (plus 2 warmup) 52.500 ms avg, 2.5 qps
"""


def test_text_matches_fixture() -> None:
    assert "\n".join(text_report(OPTIONS, sample())) + "\n" == FULL


def test_quiet_text_matches_fixture() -> None:
    assert "\n".join(text_report(dataclasses.replace(OPTIONS, quiet=True), sample())) + "\n" == QUIET


def test_no_errors_prints_no_data_and_zero_retries() -> None:
    stats = RunStats()
    stats.start, stats.end = 0.0, 1.0
    stats.record(200, 0.001, 0.5)
    lines = text_report(OPTIONS, stats)
    assert "Error cases : no data" in lines
    assert "Retried 0 calls on a fresh socket after a reused keep-alive socket failed" in lines
    assert not any(line.startswith(("Socket errors", "Errors by second")) for line in lines)
    off = text_report(dataclasses.replace(OPTIONS, retry=False), stats)
    assert "Retried 0 calls (retries off: -no-retry)" in off


def test_tcp_text() -> None:
    stats = RunStats()
    stats.start, stats.end = 0.0, 1.0
    stats.record("OK", 0.001, 0.2)
    stats.record("short read", 0.002, 0.4, "short read")
    stats.sockets = [2]
    stats.bytes_sent, stats.bytes_received = 48, 36
    options = LoadOptions(url="tcp://127.0.0.1:9", connections=1)
    lines = text_report(options, stats)
    assert "Sockets used: 2 (for perfect no error run, would be 1)" in lines
    assert "Total Bytes sent: 48, received: 36" in lines
    assert lines[lines.index("Total Bytes sent: 48, received: 36") + 1 :][:2] == [
        "tcp OK : 1 (50.0 %)",
        "tcp short read : 1 (50.0 %)",
    ]


def test_json_fields_and_go_number_format() -> None:
    started = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    text = go_json(result_json(OPTIONS, sample(), started))
    doc = json.loads(text)
    assert doc["RunType"] == "HTTP"
    assert doc["RequestedQPS"] == "max"
    assert doc["RequestedDuration"] == "2s"
    assert doc["ActualDuration"] == 2_000_000_000
    assert doc["ActualQPS"] == 2.5
    assert doc["NumThreads"] == doc["NumConnections"] == 2
    assert doc["RetCodes"] == {"-1": 1, "200": 1, "418": 3}
    assert doc["Sockets"] == [2, 1]
    assert doc["SocketCount"] == 3
    assert doc["URL"] == OPTIONS.url
    assert doc["HTTPReqTimeOut"] == 3_000_000_000
    assert doc["ErrorsDurationHistogram"]["Count"] == 1
    assert doc["DurationHistogram"]["Data"][0] == {"Start": 0.0005, "End": 0.001, "Percent": 20, "Count": 1}
    assert doc["DurationHistogram"]["Percentiles"][0] == {"Percentile": 50, "Value": pytest.approx(0.0105)}
    assert doc["Retried"] == 1
    assert doc["SocketErrors"] == {"connection reset": 1}
    assert doc["StartTime"] == "2026-01-02T03:04:05Z"
    assert doc["Timeline"] == [
        {
            "Second": 0,
            "Calls": 2,
            "Codes": {"418": 2},
            "Errors": 0,
            "Retried": 0,
            "P50": 0.0005,
            "P99": pytest.approx(0.00149),
        },
        {
            "Second": 1,
            "Calls": 3,
            "Codes": {"-1": 1, "200": 1, "418": 1},
            "Errors": 1,
            "Retried": 1,
            "P50": pytest.approx(0.0475),  # 0.045 + (50-33.3)/(66.7-33.3) * 0.005
            "P99": pytest.approx(0.1994),
        },
    ]
    # Go writes 20 and 50, not 20.0 and 50.0; the layout is json.MarshalIndent's two spaces
    assert '"Percent": 20,' in text
    assert '"Percentile": 50,' in text
    assert text.startswith('{\n  "RunType": "HTTP",')


def test_json_empty_histogram_has_null_data_and_no_percentiles() -> None:
    stats = RunStats()
    doc = json.loads(go_json(result_json(OPTIONS, stats, datetime.datetime.now(datetime.UTC))))
    assert doc["ErrorsDurationHistogram"]["Data"] is None
    assert "Percentiles" not in doc["ErrorsDurationHistogram"]


def test_sleep_lines_in_qps_mode() -> None:
    paced = dataclasses.replace(OPTIONS, qps=10)
    stats = sample()
    for _ in range(20):
        stats.sleeps.record(0.1)
    stats.sleeps.record(-0.01)  # 1 of 21 <= -1 ms: 4.8 %, under fortio's 5 % threshold
    lines = text_report(paced, stats)
    assert lines[1] == "Sleep times : count 21 avg 0.094761905 +/- 0.02343 min -0.01 max 0.1 sum 1.99"
    stats.sleeps.record(-0.0005)  # behind by less than 1 ms: not counted as falling behind
    assert text_report(paced, stats)[1].startswith("Sleep times : count 22 ")
    stats.sleeps.record(-0.02)  # 2 of 23: 8.70 %
    lines = text_report(paced, stats)
    assert lines[1].startswith("Aggregated Sleep Time : count 23 ")
    assert lines[2 : 2 + 1] == ["# range, mid point, percentile, count"]
    assert "# target 50% " in "\n".join(lines[:10])
    assert "WARNING 8.70% of sleep were falling behind" in lines
    assert not any("Sleep" in line for line in text_report(OPTIONS, stats))  # max qps: no pacing, no sleep lines


@pytest.mark.parametrize(
    ("changes", "starting"),
    [
        ({}, "Starting at max qps with 2 thread(s) [gomax 2] for 2s"),
        ({"exactly": 7}, "Starting at max qps with 2 thread(s) [gomax 2] for exactly 7 calls (3 per thread + 1)"),
        ({"duration": 0}, "Starting at max qps with 2 thread(s) [gomax 2] until interrupted"),
        ({"qps": 8}, "Starting at 8 qps with 2 thread(s) [gomax 2] for 2s : 8 calls each (total 16)"),
        (
            {"qps": 8, "exactly": 7},
            "Starting at 8 qps with 2 thread(s) [gomax 2] : exactly 7, 3 calls each (total 6 + 1)",
        ),
        ({"qps": 2.5, "duration": 0}, "Starting at 2.5 qps with 2 thread(s) [gomax 2] until interrupted"),
    ],
)
def test_header_lines(changes: dict[str, float], starting: str) -> None:
    options = dataclasses.replace(OPTIONS, **changes)  # type: ignore[arg-type]
    first, second = header_lines(options, 2, 4)
    assert first.startswith("Fortio pyztunnel-")
    assert " running at " in first
    assert first.endswith(f"queries per second, 4->2 procs, {_span(options)}: {OPTIONS.url}")
    assert second == starting


def _span(options: LoadOptions) -> str:
    if options.exactly:
        return f"for {options.exactly} calls"
    return "until interrupted" if options.duration <= 0 else "for 2s"

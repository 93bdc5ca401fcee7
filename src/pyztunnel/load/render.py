"""fortio's text output and JSON result, from merged `RunStats` (sans-IO: strings out).

Line formats follow fortio 1.75 (reference/upgrades.md §8b, §8d). Lines fortio does not have are ours and say things
fortio hides: socket errors by kind, requests retried on a fresh socket, the per-second error timeline.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from pyztunnel import __version__
from pyztunnel.load.gofmt import go_duration, go_g, go_json_float
from pyztunnel.load.histogram import Histogram, HistogramData
from pyztunnel.load.options import LoadOptions
from pyztunnel.load.stats import RunStats

VERSION = f"pyztunnel-{__version__}"


def requested_duration(options: LoadOptions) -> str:
    if options.exactly:
        return f"exactly {options.exactly} calls"
    if options.duration <= 0:
        return "until stop"
    return go_duration(options.duration)


def actual_duration(stats: RunStats) -> float:
    return max(stats.end - stats.start, 0.0)


def actual_qps(stats: RunStats) -> float:
    elapsed = actual_duration(stats)
    return stats.calls / elapsed if elapsed > 0 else 0.0


def header_lines(options: LoadOptions, procs: int, cpus: int) -> list[str]:
    """The two lines fortio prints before the run starts (dropped by -quiet)."""
    if options.exactly:
        span = f"for {options.exactly} calls"
    elif options.duration <= 0:
        span = "until interrupted"
    else:
        span = f"for {go_duration(options.duration)}"
    lines = [
        f"Fortio {VERSION} running at {go_g(options.qps)} queries per second, {cpus}->{procs} procs, {span}: {options.url}"
    ]
    c = options.connections
    start = f"Starting at max qps with {c} thread(s) [gomax {procs}]"
    if not options.max_qps:
        start = f"Starting at {go_g(options.qps)} qps with {c} thread(s) [gomax {procs}]"
    each, left = divmod(options.exactly, c)
    if options.exactly and options.max_qps:
        lines.append(f"{start} for exactly {options.exactly} calls ({each} per thread + {left})")
    elif options.exactly:
        lines.append(f"{start} : exactly {options.exactly}, {each} calls each (total {each * c} + {left})")
    elif options.duration <= 0:
        lines.append(f"{start} until interrupted")
    elif options.max_qps:
        lines.append(f"{start} for {go_duration(options.duration)}")
    else:
        each = int(options.qps * options.duration / c)
        lines.append(f"{start} for {go_duration(options.duration)} : {each} calls each (total {each * c})")
    return lines


def counter_line(title: str, data: HistogramData) -> str:
    return (
        f"{title} : count {data.count} avg {data.avg:.8g} +/- {data.stddev:.4g} min {go_g(data.min)} "
        f"max {go_g(data.max)} sum {data.sum:.9g}"
    )


def histogram_lines(title: str, data: HistogramData, *, quiet: bool = False) -> list[str]:
    """fortio's `HistogramData.Print` (with -quiet: only the counter and `# target` lines)."""
    if not data.data:
        return [f"{title} : no data"]
    lines = [counter_line(title, data)]
    if not quiet:
        lines.append("# range, mid point, percentile, count")
        for i, b in enumerate(data.data):
            sep = ">=" if i == 0 else ">"
            lines.append(
                f"{sep} {b.start:.6g} <= {b.end:.6g} , {(b.start + b.end) / 2:.6g} , {b.percent:.2f}, {b.count}"
            )
    lines.extend(f"# target {go_g(p)}% {value:.6g}" for p, value in data.percentiles)
    return lines


def text_report(options: LoadOptions, stats: RunStats) -> list[str]:
    """Everything fortio prints after the run, in its order, plus our lines before `All done`."""
    percentiles = list(options.percentiles)
    quiet = options.quiet
    elapsed = actual_duration(stats)
    out: list[str] = []
    if not quiet:
        out.append(f"Ended after {go_duration(elapsed)} : {stats.calls} calls. qps={actual_qps(stats):.5g}")
    if not options.max_qps and not quiet and stats.sleeps.count:
        # fortio: the sleep counter, or the sleep histogram and a warning when > 5 % of sleeps were <= -1 ms
        behind = 100.0 * stats.sleeps.buckets[0] / stats.sleeps.count
        if behind > 5:
            out += histogram_lines("Aggregated Sleep Time", stats.sleeps.export([50]))
            out.append(f"WARNING {behind:.2f}% of sleep were falling behind")
        else:
            out.append(counter_line("Sleep times", stats.sleeps.export()))
    out += histogram_lines("Aggregated Function Time", stats.durations.export(percentiles), quiet=quiet)
    if quiet:  # fortio below warning level: only the errors' counter
        out.append(counter_line("Error cases", stats.errors.export()))
    else:
        out += histogram_lines("Error cases", stats.errors.export(percentiles))
    c = options.connections
    if options.tcp:
        out.append(f"Sockets used: {stats.socket_count} (for perfect no error run, would be {c})")
        out.append(f"Total Bytes sent: {stats.bytes_sent}, received: {stats.bytes_received}")
        total = stats.calls or 1
        for key in sorted(stats.codes, key=str):
            n = stats.codes[key]
            out.append(f"tcp {key} : {n} ({100.0 * n / total:.1f} %)")
    else:
        if not quiet:
            out.append("# Socket and IP used for each connection:")
            for i, sockets in enumerate(stats.sockets):
                ip = stats.conn_ips[i] if i < len(stats.conn_ips) else ""
                timing = stats.conn_connect[i].export() if i < len(stats.conn_connect) else Histogram().export()
                out.append(
                    f"[{i}] {sockets:3d} socket used, resolved to {ip}, " + counter_line("connection timing", timing)
                )
            out += histogram_lines("Connection time histogram (s)", stats.connect_times.export(percentiles))
        out.append(f"Sockets used: {stats.socket_count} (for perfect keepalive, would be {c})")
        if not quiet:
            out.append("Uniform: false, Jitter: false, Catchup allowed: true")
            out.append("IP addresses distribution:")
            out += [f"{ip}: {n}" for ip, n in sorted(stats.ip_counts.items())]
        total = stats.calls or 1
        for code in sorted(k for k in stats.codes if isinstance(k, int)):
            n = stats.codes[code]
            out.append(f"Code {code:3d} : {n} ({100.0 * n / total:.1f} %)")
        if not quiet:  # fortio prints the size counters at warning level and above
            out.append(counter_line("Response Header Sizes", stats.header_sizes.export()))
            out.append(counter_line("Response Body/Total Sizes", stats.sizes.export()))
    out += extra_lines(options, stats)
    avg_ms = 1000.0 * stats.durations.avg
    out.append(
        f"All done {stats.calls} calls (plus {stats.warmup} warmup) {avg_ms:.3f} ms avg, {actual_qps(stats):.1f} qps"
    )
    return out


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


def extra_lines(options: LoadOptions, stats: RunStats) -> list[str]:
    """Our lines: what fortio counts silently or not at all."""
    out: list[str] = []
    if stats.error_kinds:
        out.append(f"Socket errors : {_kinds(stats.error_kinds)}")
    if options.retry:
        detail = f" ({_kinds(stats.retry_kinds)})" if stats.retry_kinds else ""
        out.append(f"Retried {stats.retried} calls on a fresh socket after a reused keep-alive socket failed{detail}")
    else:
        out.append("Retried 0 calls (retries off: -no-retry)")
    if stats.idle_closed:
        out.append(f"Keep-alive connections closed by the server between calls: {stats.idle_closed}")
    if options.stream:
        s = stats.stream
        out.append(
            f"Stream : {s.connections} connections, {s.broken} broken, {s.bytes_sent} bytes sent, {s.bytes_echoed} echoed, "
            f"{s.bytes_lost} lost, {s.bytes_corrupted} corrupted (on {s.corrupted_connections} connections)"
        )
    bad = [(i, sec) for i, sec in sorted(stats.timeline.items()) if sec.errors or sec.retried or sec.broken]
    if bad:
        shown = ", ".join(f"{i}s: {sec.errors} errors {sec.retried} retried" for i, sec in bad[:20])
        more = f" (+{len(bad) - 20} more seconds in the JSON Timeline)" if len(bad) > 20 else ""
        out.append(f"Errors by second : {shown}{more}")
    if stats.aborted:
        out.append(f"Aborted: {stats.aborted}")
    if stats.interrupted:
        out.append("Interrupted: results cover the run until the interruption")
    return out


# -- JSON ---------------------------------------------------------------------------------------------------------

_MARK = "\x00gofloat:"


def _prepare(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return _MARK + go_json_float(value)
    if isinstance(value, dict):
        return {str(k): _prepare(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_prepare(v) for v in value]
    return value


def go_json(value: Any) -> str:
    """json.MarshalIndent(value, "", "  ") as Go writes it: floats like 5 and 0.001, not 5.0 and 1e-03."""
    text = json.dumps(_prepare(value), indent=2, ensure_ascii=False)
    return re.sub(r'"\\u0000gofloat:([^"]*)"', r"\1", text)


def histogram_json(data: HistogramData) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Count": data.count,
        "Min": float(data.min),
        "Max": float(data.max),
        "Sum": float(data.sum),
        "Avg": float(data.avg),
        "StdDev": float(data.stddev),
        "Data": [
            {"Start": float(b.start), "End": float(b.end), "Percent": float(b.percent), "Count": b.count}
            for b in data.data
        ]
        or None,
    }
    if data.percentiles:
        out["Percentiles"] = [{"Percentile": float(p), "Value": float(v)} for p, v in data.percentiles]
    return out


def result_json(options: LoadOptions, stats: RunStats, started_at: datetime.datetime) -> dict[str, Any]:
    """fortio's RunnerResults + HTTPRunnerResults (or TCP) field names, plus ours: Timeline, Retried, SocketErrors."""
    percentiles = list(options.percentiles)
    requested = requested_duration(options)
    if stats.interrupted and options.exactly:
        requested += f", interrupted after {stats.calls}"
    result: dict[str, Any] = {
        "RunType": "TCP" if options.tcp else "HTTP",
        "Labels": options.labels,
        "StartTime": started_at.isoformat().replace("+00:00", "Z"),
        "RequestedQPS": "max" if options.max_qps else go_g(options.qps),
        "RequestedDuration": requested,
        "ActualQPS": float(actual_qps(stats)),
        "ActualDuration": round(actual_duration(stats) * 1e9),
        "NumThreads": options.connections,
        "Version": VERSION,
        "DurationHistogram": histogram_json(stats.durations.export(percentiles)),
        "ErrorsDurationHistogram": histogram_json(stats.errors.export(percentiles)),
        "Exactly": options.exactly,
        "Jitter": False,
        "Uniform": False,
        "NoCatchUp": False,
        "RunID": 0,
        "AccessLoggerInfo": "",
        "ID": started_at.strftime("%Y-%m-%d-%H%M%S"),
        "RetCodes": {str(k): v for k, v in sorted(stats.codes.items(), key=lambda kv: str(kv[0]))},
    }
    if stats.aborted:
        result["error"] = stats.aborted
    if options.tcp:
        result.update(
            {
                "Destination": options.url,
                "Payload": None,
                "ReqTimeout": round(options.timeout * 1e9),
                "SocketCount": stats.socket_count,
                "BytesSent": stats.bytes_sent,
                "BytesReceived": stats.bytes_received,
            }
        )
    else:
        result.update(
            {
                "IPCountMap": dict(sorted(stats.ip_counts.items())),
                "URL": options.url,
                "NumConnections": options.connections,
                "Compression": False,
                "DisableFastClient": False,
                "HTTP10": False,
                "H2": False,
                "DisableKeepAlive": not options.keepalive,
                "AllowHalfClose": False,
                "Insecure": False,
                "FollowRedirects": False,
                "HTTPReqTimeOut": round(options.timeout * 1e9),
                "Payload": None,
                "SequentialWarmup": False,
                "ConnReuseRange": [0, 0],
                "Sizes": histogram_json(stats.sizes.export()),
                "HeaderSizes": histogram_json(stats.header_sizes.export()),
                "Sockets": list(stats.sockets),
                "SocketCount": stats.socket_count,
                "ConnectionStats": histogram_json(stats.connect_times.export(percentiles)),
                "AbortOn": 0,
            }
        )
    result["Retried"] = stats.retried
    result["RetriedKinds"] = dict(sorted(stats.retry_kinds.items()))
    result["RetryEnabled"] = options.retry
    result["SocketErrors"] = dict(sorted(stats.error_kinds.items()))
    result["IdleClosed"] = stats.idle_closed
    if options.stream:
        s = stats.stream
        result["Stream"] = {
            "Connections": s.connections,
            "Broken": s.broken,
            "BytesSent": s.bytes_sent,
            "BytesEchoed": s.bytes_echoed,
            "BytesLost": s.bytes_lost,
            "BytesCorrupted": s.bytes_corrupted,
            "CorruptedConnections": s.corrupted_connections,
        }
    result["Timeline"] = [timeline_entry(i, sec) for i, sec in sorted(stats.timeline.items())]
    # When second 0 began, on the host's monotonic clock (shared by every process): lines the timeline up with
    # events measured elsewhere (an upgrade's start and end).
    result["TimelineStart"] = stats.start
    return result


def timeline_entry(index: int, sec: Any) -> dict[str, Any]:
    latency = sec.latency.export()
    entry: dict[str, Any] = {
        "Second": index,
        "Calls": sec.calls,
        "Codes": dict(sorted(sec.codes.items())),
        "Errors": sec.errors,
        "Retried": sec.retried,
        "P50": float(latency.percentile(50)),
        "P99": float(latency.percentile(99)),
    }
    if sec.broken or sec.echoed:
        entry["Broken"] = sec.broken
        entry["BytesEchoed"] = sec.echoed
        entry["BytesLost"] = sec.lost
    return entry

"""The experiment's report: a Markdown table, fortio-style lines per run, a plot. Pure except `write_plot`.

Input is what each run produced: the load generator's fortio-compatible JSON and the time window in which the
upgrade ran (seconds since the load started).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pyztunnel.experiment.scenarios import BASELINE, Scenario


def code_is_ok(code: str) -> bool:
    """fortio's codeIsOK: 2xx or 418 (upgrades.md §8c)."""
    try:
        value = int(code)
    except ValueError:
        return code == "OK"  # the TCP runner's key
    return 200 <= value <= 299 or value == 418


@dataclasses.dataclass(frozen=True)
class Run:
    scenario: Scenario
    connections: int
    repeat: int
    result: Mapping[str, Any]  # fortio JSON (+ our Timeline, Retried)
    upgrade_start_s: float
    upgrade_end_s: float
    upgrade_error: str | None = None  # the rollout stopped: the run measured a partial upgrade
    gateway_errors: int | None = None  # upstream errors in the gateway's error log during the run (None: not counted)

    @property
    def calls(self) -> int:
        return int(self.result.get("DurationHistogram", {}).get("Count", 0))

    @property
    def failed(self) -> int:
        """Requests that did not get an OK answer: non-OK codes and socket errors (Code -1)."""
        return sum(int(n) for code, n in self.result.get("RetCodes", {}).items() if not code_is_ok(str(code)))

    @property
    def retried(self) -> int:
        """Requests fortio would have hidden: retried on a fresh socket after a reused one failed."""
        retried = self.result.get("Retried", 0)
        return int(retried if isinstance(retried, int | float) else len(retried))

    @property
    def connection_errors(self) -> int:
        """Socket errors the load generator saw on its connections to the gateway: requests that failed with one
        (Code -1) and those it retried on a fresh socket after a reused one failed."""
        return int(self.result.get("RetCodes", {}).get("-1", 0)) + self.retried

    @property
    def qps(self) -> float:
        return float(self.result.get("ActualQPS", 0.0))

    @property
    def avg_ms(self) -> float:
        return 1000.0 * float(self.result.get("DurationHistogram", {}).get("Avg", 0.0))

    def percentile_ms(self, p: float) -> float | None:
        for entry in self.result.get("DurationHistogram", {}).get("Percentiles", []) or []:
            if abs(float(entry["Percentile"]) - p) < 1e-9:
                return 1000.0 * float(entry["Value"])
        return None

    @property
    def upgrade_s(self) -> float:
        return self.upgrade_end_s - self.upgrade_start_s


@dataclasses.dataclass(frozen=True)
class Row:
    scenario: Scenario
    connections: int
    runs: list[Run]

    def cells(self) -> list[str]:
        p99 = [v for v in (r.percentile_ms(99) for r in self.runs) if v is not None]
        return [
            self.scenario.title,
            str(self.connections),
            str(len(self.runs)),
            _span(r.calls for r in self.runs),
            _span(r.failed for r in self.runs),
            _span(r.retried for r in self.runs),
            f"{_mean(r.qps for r in self.runs):.1f}",
            f"{_mean(r.avg_ms for r in self.runs):.2f}",
            f"{max(p99):.2f}" if p99 else "n/a",
            _upgrade_cell(self.runs),
        ]


def _span(values: Iterable[int]) -> str:
    """`min–max` over repeats, or the one value when they agree."""
    seen = list(values)
    low, high = min(seen), max(seen)
    return str(low) if low == high else f"{low}–{high}"


def _upgrade_cell(runs: list[Run]) -> str:
    failed = sum(1 for r in runs if r.upgrade_error)
    mean = f"{_mean(r.upgrade_s for r in runs):.1f}"
    return f"{mean} ({failed} failed)" if failed else mean


def _mean(values: Iterable[float]) -> float:
    seen = list(values)
    return sum(seen) / len(seen)


HEADER = [
    "scenario",
    "-c",
    "runs",
    "calls",
    "failed (min–max)",
    "retried (min–max)",
    "qps",
    "avg ms",
    "p99 ms",
    "upgrade s",
]


def rows(runs: Iterable[Run]) -> list[Row]:
    grouped: dict[tuple[str, int], list[Run]] = {}
    order: list[tuple[str, int]] = []
    for run in runs:
        key = (run.scenario.key, run.connections)
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        grouped[key].append(run)
    return [Row(grouped[k][0].scenario, k[1], grouped[k]) for k in order]


def markdown_table(runs: Iterable[Run]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows(runs)]
    return "\n".join(lines) + "\n"


def mechanism_header(gateway_retry: bool) -> list[str]:
    gateway = "gateway retried" if gateway_retry else "gateway upstream errors"
    return ["scenario", "mechanisms on", "failed", "failed %", "vs ztunnel", "connection errors", gateway, "upgrade s"]


def mechanism_tables(runs: Iterable[Run], gateway_retry: bool) -> str:
    """The per-mechanism failure table (issue 4's headline), one per connection count: failed requests per upgrade
    with each mechanism on or off, against ztunnel's behaviour (every mechanism off) measured in the same run."""
    out = []
    by_connections: dict[int, list[Row]] = {}
    for row in rows(runs):
        by_connections.setdefault(row.connections, []).append(row)
    header = mechanism_header(gateway_retry)
    gateway = "retried by the gateway" if gateway_retry else "each answered 502 by the gateway (its retry is off)"
    for connections, group in by_connections.items():
        baseline = next((r for r in group if r.scenario.key == BASELINE), None)
        repeats = {len(r.runs) for r in group}
        per = "per upgrade" if repeats == {1} else "per upgrade, min–max over repeats"
        out += [
            f"### Failed requests {per}, measured at {connections} connections",
            "",
            "Failed: requests without an OK answer. Connection errors: the load generator's socket errors on its",
            "connections to the gateway (Code -1 + hidden retries). Gateway upstream errors: its error log's failed",
            f"upstream (HBONE) requests, {gateway}. vs ztunnel: failed / failed of `{BASELINE}` in the same run.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        out += ["| " + " | ".join(mechanism_cells(r, baseline)) + " |" for r in group]
        out.append("")
    return "\n".join(out)


def mechanism_cells(row: Row, baseline: Row | None) -> list[str]:
    failed = [r.failed for r in row.runs]
    percent = [100.0 * r.failed / r.calls if r.calls else 0.0 for r in row.runs]
    gateway = [r.gateway_errors for r in row.runs if r.gateway_errors is not None]
    return [
        row.scenario.key,
        ", ".join(row.scenario.mechanisms) or "none (ztunnel)",
        _span(failed),
        _span_pct(percent),
        _ratio(_mean(failed), _mean(r.failed for r in baseline.runs)) if baseline else "n/a",
        _span(r.connection_errors for r in row.runs),
        _span(gateway) if gateway else "n/a",
        _upgrade_cell(row.runs),
    ]


def _span_pct(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.3f}" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f}–{high:.3f}"


def _ratio(ours: float, ztunnel: float) -> str:
    """ours/ztunnel's failures; no ratio when ztunnel's behaviour failed nothing."""
    if ztunnel == 0:
        return f"{ours:g} vs 0"
    return f"{ours / ztunnel:.2f}×"


def fortio_summary(run: Run) -> str:
    """The lines of fortio's text output an operator reads first, rebuilt from the JSON."""
    total = run.calls or 1
    codes = sorted(
        run.result.get("RetCodes", {}).items(), key=lambda kv: int(kv[0]) if kv[0].lstrip("-").isdigit() else 0
    )
    lines = [f"Code {int(code):3d} : {n} ({100.0 * int(n) / total:.1f} %)" for code, n in codes]
    sockets = run.result.get("SocketCount", 0)
    lines.append(f"Sockets used: {sockets} (for perfect keepalive, would be {run.connections})")
    warmup = run.result.get("NumThreads", run.connections)
    lines.append(f"All done {run.calls} calls (plus {warmup} warmup) {run.avg_ms:.3f} ms avg, {run.qps:.1f} qps")
    return "\n".join(lines)


def timeline(run: Run) -> tuple[list[float], list[int], list[int]]:
    """(second, calls, errors) per second of the run, from our Timeline extension of fortio's JSON."""
    seconds, calls, errors = [], [], []
    for i, entry in enumerate(run.result.get("Timeline", []) or []):
        seconds.append(float(entry.get("Second", i)))
        calls.append(int(entry.get("Calls", 0)))
        errors.append(int(entry.get("Errors", 0)))
    return seconds, calls, errors


def write_plot(runs: list[Run], path: Path) -> None:
    """qps and errors over time for each scenario and -c, the upgrade window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = rows(runs)
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.6 * max(1, len(groups))), squeeze=False, sharex=False)
    for ax, row in zip(axes[:, 0], groups, strict=True):
        run = row.runs[0]
        seconds, calls, errors = timeline(run)
        ax.plot(seconds, calls, color="tab:blue", label="calls/s")
        ax.axvspan(run.upgrade_start_s, run.upgrade_end_s, color="tab:orange", alpha=0.2, label="upgrade")
        ax.set_ylabel("calls/s")
        ax2 = ax.twinx()
        ax2.bar(seconds, errors, color="tab:red", alpha=0.7, width=0.8, label="errors")
        ax2.set_ylabel("errors")
        ax2.set_ylim(bottom=0, top=max([1, *errors]) * 1.2)
        ax.set_title(f"{row.scenario.title}, -c {row.connections} (failed {run.failed}, retried {run.retried})")
        ax.legend(loc="lower left", fontsize="small")
    axes[-1, 0].set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""The advisor's report: text, JSON and ready-to-apply snippets (pure: data in, strings out)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from pyztunnel.advise.parse import Connection, ParseResult
from pyztunnel.advise.recommend import (
    Distribution,
    Exposure,
    Recommendation,
    exposure,
    recommend,
    rollout_seconds,
)
from pyztunnel.load.gofmt import go_duration


@dataclasses.dataclass(frozen=True)
class AdviseOptions:
    quantile: float = 99.9
    margin_percent: float = 10.0
    current_grace: int = 30
    nodes: int = 1
    node_startup: float = 10.0
    top: int = 20


@dataclasses.dataclass(frozen=True)
class ServiceRow:
    service: str
    distribution: Distribution
    errors: int


@dataclasses.dataclass(frozen=True)
class Advice:
    parsed: ParseResult
    inputs: tuple[str, ...]
    overall: Distribution
    services: list[ServiceRow]
    recommendation: Recommendation
    current: Exposure
    recommended: Exposure
    options: AdviseOptions
    errors: int

    @property
    def rollout_current(self) -> float:
        return rollout_seconds(self.options.current_grace, self.options.nodes, self.options.node_startup)

    @property
    def rollout_recommended(self) -> float:
        return rollout_seconds(self.recommendation.grace, self.options.nodes, self.options.node_startup)


def analyse(parsed: ParseResult, inputs: tuple[str, ...], options: AdviseOptions) -> Advice:
    """Needs at least one connection (the caller reports an empty input)."""
    durations = sorted(c.duration for c in parsed.connections)
    by_service: dict[str, list[Connection]] = defaultdict(list)
    for connection in parsed.connections:
        by_service[connection.service].append(connection)
    services = [
        ServiceRow(name, Distribution.of(sorted(c.duration for c in conns)), sum(1 for c in conns if c.error))
        for name, conns in by_service.items()
    ]
    services.sort(key=lambda row: (-row.distribution.count, row.service))
    rec = recommend(durations, options.quantile, options.margin_percent)
    return Advice(
        parsed,
        inputs,
        Distribution.of(durations),
        services,
        rec,
        exposure(durations, options.current_grace),
        exposure(durations, rec.grace),
        options,
        sum(1 for c in parsed.connections if c.error),
    )


def seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 100:
        return f"{value:.3g}s"
    return go_duration(round(value))


def helm_snippet(grace: int) -> str:
    return (
        "# Helm (istio/ztunnel chart): values.yaml\n"
        f"terminationGracePeriodSeconds: {grace}\n"
        "# or on the command line:\n"
        f"helm upgrade ztunnel istio/ztunnel -n istio-system --reuse-values --set terminationGracePeriodSeconds={grace}\n"
    )


def sail_snippet(grace: int) -> str:
    return (
        "# Sail operator: the ZTunnel resource (cluster-scoped, named default)\n"
        "apiVersion: sailoperator.io/v1\n"
        "kind: ZTunnel\n"
        "metadata:\n"
        "  name: default\n"
        "spec:\n"
        "  values:\n"
        "    ztunnel:\n"
        f"      terminationGracePeriodSeconds: {grace}\n"
    )


def skipped_summary(parsed: ParseResult) -> str:
    total = sum(parsed.skipped.values())
    if not total:
        return "0 skipped"
    reasons = ", ".join(f"{n} {reason}" for reason, n in parsed.skipped.most_common())
    return f"{total} skipped: {reasons}"


def text(advice: Advice) -> str:
    o = advice.options
    parsed = advice.parsed
    d = advice.overall
    rec = advice.recommendation
    lines = [
        f"Read {d.count} connections from {len(advice.inputs)} input(s), {parsed.lines} lines "
        f"({skipped_summary(parsed)}; {parsed.blank} blank)",
    ]
    if advice.errors:
        lines.append(f"{advice.errors} of them ended with an error (error=… in the access log)")
    lines += [
        "",
        "Connection durations (connection complete):",
        f"  p50 {seconds(d.p50)}  p90 {seconds(d.p90)}  p99 {seconds(d.p99)}  p99.9 {seconds(d.p999)}  max {seconds(d.max)}",
        "",
        f"Per destination service (top {min(o.top, len(advice.services))} of {len(advice.services)} by connections):",
    ]
    width = max([len(r.service) for r in advice.services[: o.top]] + [7])
    lines.append(f"  {'service':<{width}}  {'conns':>8}  {'p50':>8}  {'p99':>8}  {'p99.9':>8}  {'max':>8}")
    for row in advice.services[: o.top]:
        r = row.distribution
        lines.append(
            f"  {row.service:<{width}}  {r.count:>8}  {seconds(r.p50):>8}  {seconds(r.p99):>8}  {seconds(r.p999):>8}  {seconds(r.max):>8}"
        )
    lines += ["", f"Recommended terminationGracePeriodSeconds: {rec.grace}"]
    lines += [f"  {line}" for line in rec.explain()]
    for label, exp in (("Current", advice.current), ("Recommended", advice.recommended)):
        lines.append(
            f"{label} setting {exp.grace} s (drain {exp.drain} s): {exp.longer_than_drain} connections "
            f"({100 * exp.share_longer:.3g} %) last longer than the drain; of the connections open at a random "
            f"upgrade moment, {100 * exp.share_reset_random:.3g} % would be reset"
        )
    lines.append(
        f"Rollout over {o.nodes} node(s), one at a time (at most grace + {o.node_startup:g} s startup per node): "
        f"now up to {go_duration(advice.rollout_current)}, with {rec.grace} s up to {go_duration(advice.rollout_recommended)}"
    )
    lines += ["", helm_snippet(rec.grace), sail_snippet(rec.grace).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _dist(d: Distribution) -> dict[str, Any]:
    return {"count": d.count, "p50": d.p50, "p90": d.p90, "p99": d.p99, "p99.9": d.p999, "max": d.max}


def _exposure(e: Exposure) -> dict[str, Any]:
    return {
        "termination_grace_period_seconds": e.grace,
        "drain_seconds": e.drain,
        "connections_longer_than_drain": e.longer_than_drain,
        "share_longer_than_drain": e.share_longer,
        "share_reset_at_random_moment": e.share_reset_random,
    }


def as_json(advice: Advice) -> dict[str, Any]:
    rec = advice.recommendation
    return {
        "inputs": list(advice.inputs),
        "lines": advice.parsed.lines,
        "connections": advice.overall.count,
        "connection_errors": advice.errors,
        "skipped": dict(advice.parsed.skipped.most_common()),
        "blank_lines": advice.parsed.blank,
        "durations_seconds": _dist(advice.overall),
        "services": [
            {"service": row.service, "errors": row.errors, **_dist(row.distribution)} for row in advice.services
        ],
        "recommendation": {
            "termination_grace_period_seconds": rec.grace,
            "quantile": rec.quantile,
            "quantile_seconds": rec.quantile_value,
            "margin_percent": rec.margin_percent,
            "drain_seconds": rec.drain_seconds,
            "resulting_drain_seconds": rec.resulting_drain,
            "explanation": rec.explain(),
        },
        "current": _exposure(advice.current),
        "recommended": _exposure(advice.recommended),
        "rollout": {
            "nodes": advice.options.nodes,
            "node_startup_seconds": advice.options.node_startup,
            "current_seconds": advice.rollout_current,
            "recommended_seconds": advice.rollout_recommended,
        },
        "snippets": {"helm": helm_snippet(rec.grace), "sail": sail_snippet(rec.grace)},
    }

"""Prometheus text and OpenMetrics encoding that keeps each sample's label order.

prometheus-client's own encoders sort label names alphabetically; ztunnel's (the Rust prometheus-client) writes them
in the order the label set declares them, which is part of the compatibility contract (reference/ztunnel.md §6.1).
Integer values print bare (`1`, as ztunnel), floats as prometheus-client prints them. Pure: metric families in, bytes out.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if openmetrics else text


def _value(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def encode_families(families: Iterable[Metric], openmetrics: bool = False) -> bytes:
    lines: list[str] = []
    for family in families:
        # Prometheus text names a counter family by its sample name (`x_total`); OpenMetrics by the bare name.
        name = family.name
        if not openmetrics and family.type == "counter":
            name += "_total"
        kind = family.type if openmetrics or family.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        lines.append(f"# HELP {name} {_escape_help(family.documentation, openmetrics)}")
        lines.append(f"# TYPE {name} {kind}")
        for sample in family.samples:
            if sample.name.endswith("_created") and not openmetrics:
                continue
            if sample.labels:
                labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels.items())
                lines.append(f"{sample.name}{{{labels}}} {_value(sample.value)}")
            else:
                lines.append(f"{sample.name} {_value(sample.value)}")
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode()


def encode(registry: Collector, openmetrics: bool = False) -> bytes:
    return encode_families(registry.collect(), openmetrics)

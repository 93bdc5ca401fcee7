from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyztunnel.errors import UserError
from pyztunnel.experiment import report
from pyztunnel.experiment.scenarios import seed_scenarios, select


def fortio_json(codes: dict[str, int], avg: float = 0.02, p99: float = 0.1, retried: int = 0) -> dict[str, Any]:
    count = sum(codes.values())
    return {
        "RetCodes": codes,
        "DurationHistogram": {"Count": count, "Avg": avg, "Percentiles": [{"Percentile": 99, "Value": p99}]},
        "ActualQPS": count / 60.0,
        "SocketCount": 100,
        "NumThreads": 100,
        "Retried": retried,
        "Timeline": [{"Second": i, "Calls": 10, "Errors": 1 if i == 3 else 0} for i in range(6)],
    }


def test_scenarios_follow_the_seeds() -> None:
    full = seed_scenarios(60)
    assert [s.key for s in full] == ["ztunnel", "long-grace", "max-conn-age", "drain", "pyztunnel"]
    assert full[0].grace_s == 30 and full[0].drain_s == 25  # Helm's default grace → ztunnel's 25 s drain
    assert full[1].grace_s == 120 and full[1].duration_factor == pytest.approx(200 / 60)
    assert full[2].gateway_keepalive_time_s is not None and full[2].gateway_keepalive_time_s < full[2].drain_s
    assert full[4].listener_handoff and full[4].tcp_migrate_req
    assert not any(s.listener_handoff or s.tcp_migrate_req for s in full[:4])
    quick = seed_scenarios(12)
    assert all(s.grace_s >= 6 for s in quick) and quick[1].grace_s == 24


def test_select_by_key_or_number() -> None:
    scenarios = seed_scenarios(60)
    assert [s.key for s in select(scenarios, "1,pyztunnel")] == ["ztunnel", "pyztunnel"]
    with pytest.raises(UserError, match="unknown scenario 'x'"):
        select(scenarios, "x")


def test_failed_counts_non_ok_codes_and_socket_errors() -> None:
    s = seed_scenarios(60)[0]
    run = report.Run(s, 100, 0, fortio_json({"418": 990, "503": 4, "-1": 2, "200": 4}), 10.0, 14.5)
    assert run.failed == 6 and run.calls == 1000 and run.upgrade_s == 4.5
    assert run.percentile_ms(99) == pytest.approx(100.0)


def test_markdown_table_groups_repeats() -> None:
    s = seed_scenarios(60)[0]
    runs = [
        report.Run(s, 1000, 0, fortio_json({"418": 1000, "503": 4}), 1, 2),
        report.Run(s, 1000, 1, fortio_json({"418": 1000, "503": 6}, retried=2), 1, 2),
    ]
    table = report.markdown_table(runs)
    lines = table.strip().splitlines()
    assert len(lines) == 3
    assert "| 4–6 |" in lines[2] and "| 0–2 |" in lines[2] and "| 1000 | 2 |" in lines[2]


def test_fortio_summary_lines() -> None:
    s = seed_scenarios(60)[0]
    run = report.Run(s, 100, 0, fortio_json({"418": 995, "-1": 5}), 0, 1)
    text = report.fortio_summary(run)
    assert "Code  -1 : 5 (0.5 %)" in text
    assert "Code 418 : 995 (99.5 %)" in text
    assert "Sockets used: 100 (for perfect keepalive, would be 100)" in text


def test_timeline_reads_the_load_generators_keys() -> None:
    run = report.Run(seed_scenarios(60)[0], 100, 0, fortio_json({"418": 60}), 1, 3)
    seconds, calls, errors = report.timeline(run)
    assert seconds == [0, 1, 2, 3, 4, 5] and calls == [10] * 6 and errors == [0, 0, 0, 1, 0, 0]


def test_plot_is_written(tmp_path: Path) -> None:
    s = seed_scenarios(60)
    runs = [
        report.Run(s[0], 100, 0, fortio_json({"418": 60}), 1, 3),
        report.Run(s[4], 100, 0, fortio_json({"418": 60}), 1, 3),
    ]
    out = tmp_path / "plot.png"
    report.write_plot(runs, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

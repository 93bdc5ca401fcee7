from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pyztunnel.cluster import spec
from pyztunnel.errors import UserError
from pyztunnel.experiment import report
from pyztunnel.experiment.runner import scenario_spec
from pyztunnel.experiment.scenarios import MATRIX, seed_scenarios, select


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
    full = select(seed_scenarios(60), None)
    assert [s.key for s in full] == ["ztunnel", "long-grace", "max-conn-age", "drain", "pyztunnel"]
    assert full[0].grace_s == 30 and full[0].drain_s == 25  # Helm's default grace → ztunnel's 25 s drain
    assert full[1].grace_s == 120 and full[1].duration_factor == pytest.approx(200 / 60)
    assert full[2].gateway_keepalive_time_s is not None and full[2].gateway_keepalive_time_s < full[2].drain_s
    assert full[4].mechanisms == ["handoff", "migrate_req", "migration", "hbone_resume"]
    assert not any(s.mechanisms for s in full[:4]), "ztunnel's behaviour and the seeds' remedies keep ours off"
    quick = seed_scenarios(12)
    assert all(s.grace_s >= 6 for s in quick) and quick[1].grace_s == 24


def test_select_by_key_or_number() -> None:
    scenarios = seed_scenarios(60)
    assert [s.key for s in select(scenarios, "1,pyztunnel")] == ["ztunnel", "pyztunnel"]
    assert [s.key for s in select(scenarios, "pyztunnel,1")] == ["pyztunnel", "ztunnel"]
    with pytest.raises(UserError, match=r"unknown scenario 'x'.*mechanisms"):
        select(scenarios, "x")


def test_mechanism_matrix_turns_each_mechanism_on_in_turn() -> None:
    matrix = select(seed_scenarios(20), "mechanisms")
    assert [s.key for s in matrix] == list(MATRIX)
    assert [s.mechanisms for s in matrix] == [
        [],
        ["handoff"],
        ["migrate_req"],
        ["handoff", "migration"],  # migration rides on the handoff socket
        ["handoff", "migration", "hbone_resume"],  # a resumed stream needs its app-side leg migrated
        ["handoff", "migrate_req", "migration", "hbone_resume"],
    ]
    # Only the mechanisms differ: same grace, strategy, gateway and length as ztunnel's behaviour.
    assert {(s.grace_s, s.strategy, s.gateway_keepalive_time_s, s.duration_factor) for s in matrix} == {
        (matrix[0].grace_s, "rolling", None, 1.0)
    }


def test_groups_combine_without_running_a_scenario_twice() -> None:
    scenarios = seed_scenarios(60)
    both = [s.key for s in select(scenarios, "seeds,mechanisms")]
    assert both == ["ztunnel", "long-grace", "max-conn-age", "drain", "pyztunnel", *MATRIX[1:-1]]
    assert [s.key for s in select(scenarios, "all")] == [s.key for s in scenarios]
    assert len(set(both)) == len(both) == len(scenarios)


@pytest.mark.parametrize("key", MATRIX)
def test_scenario_spec_sets_every_switch(key: str) -> None:
    scenario = next(s for s in seed_scenarios(20) if s.key == key)
    doc = yaml.safe_load(scenario_spec(spec.load(None), scenario, gateway_retry=True).text)
    env = doc["proxy"]["env"]
    on = set(scenario.mechanisms)
    assert env["PYZTUNNEL_LISTENER_HANDOFF"] == str("handoff" in on).lower()
    assert env["PYZTUNNEL_CONNECTION_MIGRATION"] == str("migration" in on).lower()
    assert env["PYZTUNNEL_HBONE_RESUME"] == str("hbone_resume" in on).lower()
    assert doc["agent"]["tcpMigrateReq"] == (1 if "migrate_req" in on else 0)
    assert env["PYZTUNNEL_TCP_MIGRATE_REQ"] == str("migrate_req" in on).lower()
    gateway = next(d for d in doc["deployments"] if d["name"] == "gateway")
    assert gateway["env"]["PROXY_NEXT_UPSTREAM"] == "error timeout"


def test_scenario_switches_are_the_proxys_own_settings() -> None:
    """The variables the scenarios set are the proxy's declared ones, and each reaches its field; a variable the proxy
    does not declare is ignored (settings.load reads only declared ones), so an older proxy starts anyway."""
    from pyztunnel import settings
    from pyztunnel.proxy.config import ProxySettings

    fields = {
        "PYZTUNNEL_LISTENER_HANDOFF",
        "PYZTUNNEL_CONNECTION_MIGRATION",
        "PYZTUNNEL_HBONE_RESUME",
        "PYZTUNNEL_TCP_MIGRATE_REQ",
    }
    by_env = {d.info.env: d.name for d in settings.declared(ProxySettings) if d.info.env in fields}
    assert set(by_env) == fields
    assert all(getattr(settings.load(ProxySettings, environ={}), f) for f in by_env.values()), "defaults: on"
    loaded = settings.load(ProxySettings, environ={"PYZTUNNEL_NO_SUCH": "x", **dict.fromkeys(fields, "false")})
    assert not any(getattr(loaded, f) for f in by_env.values())


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


def test_connection_errors_are_socket_errors_and_hidden_retries() -> None:
    run = report.Run(seed_scenarios(60)[0], 100, 0, fortio_json({"418": 990, "502": 7, "-1": 3}, retried=5), 0, 1)
    assert run.failed == 10 and run.connection_errors == 8


def matrix_runs(connections: int = 1000, gateway_errors: int | None = 12) -> list[report.Run]:
    by_key = {s.key: s for s in seed_scenarios(20)}

    def one(key: str, codes: dict[str, int], retried: int = 0, repeat: int = 0) -> report.Run:
        return report.Run(
            by_key[key], connections, repeat, fortio_json(codes, retried=retried), 5, 15.5, None, gateway_errors
        )

    return [
        one("ztunnel", {"418": 9800, "502": 150, "-1": 50}, retried=1000),
        one("handoff", {"418": 9900, "502": 100}, retried=1000),
        one("migration", {"418": 9998, "502": 2}),
        one("pyztunnel", {"418": 10000}),
    ]


def table_rows(text: str) -> dict[str, list[str]]:
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("scenario",):
            found[cells[0]] = cells
    return found


def test_mechanism_table_against_ztunnel() -> None:
    text = report.mechanism_tables(matrix_runs(), gateway_retry=True)
    assert "measured at 1000 connections" in text and "per upgrade" in text
    header = next(line for line in text.splitlines() if line.startswith("| scenario"))
    assert [c.strip() for c in header.strip("|").split("|")] == report.mechanism_header(gateway_retry=True)
    assert header.count("gateway retried") == 1
    rows = table_rows(text)
    assert list(rows) == ["ztunnel", "handoff", "migration", "pyztunnel"]
    assert rows["ztunnel"][1:7] == ["none (ztunnel)", "200", "2.000", "1.00×", "1050", "12"]
    assert rows["handoff"][1:6] == ["handoff", "100", "1.000", "0.50×", "1000"]
    assert rows["migration"][1:6] == ["handoff, migration", "2", "0.020", "0.01×", "0"]
    assert rows["pyztunnel"][1:6] == ["handoff, migrate_req, migration, hbone_resume", "0", "0.000", "0.00×", "0"]
    assert rows["pyztunnel"][7] == "10.5"
    # Without the gateway's retry its upstream errors are still counted: each was a 502 to the client.
    assert table_rows(report.mechanism_tables(matrix_runs(), gateway_retry=False))["ztunnel"][6] == "12"


def test_mechanism_table_without_gateway_retry_or_baseline() -> None:
    runs = [r for r in matrix_runs(100, gateway_errors=None) if r.scenario.key != "ztunnel"]
    text = report.mechanism_tables(runs, gateway_retry=False)
    assert "measured at 100 connections" in text and "| gateway upstream errors |" in text
    rows = table_rows(text)
    assert rows["handoff"][4] == "n/a" and rows["handoff"][6] == "n/a"


def test_mechanism_tables_one_per_connection_count_with_repeats() -> None:
    by_key = {s.key: s for s in seed_scenarios(20)}
    runs = [
        report.Run(by_key[key], c, rep, fortio_json({"418": 1000, "502": fail}), 1, 2)
        for c in (1000, 100)
        for key, fail in (("ztunnel", 0), ("pyztunnel", 0))
        for rep in (0, 1)
    ]
    runs.append(report.Run(by_key["handoff"], 100, 0, fortio_json({"418": 1000, "502": 3}), 1, 2))
    text = report.mechanism_tables(runs, gateway_retry=True)
    assert text.index("at 1000 connections") < text.index("at 100 connections")
    assert text.count("min–max over repeats") == 2
    second = table_rows(text[text.index("at 100 connections") :])
    assert second["handoff"][4] == "3 vs 0" and second["pyztunnel"][4] == "0 vs 0"

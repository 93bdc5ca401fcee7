"""`pyztunnel advise` end to end on generated logs: .gz, stdin, JSON, plot, and bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyztunnel.cli import main


def access_line(duration_ms: int, service: str = "cart.shop.svc.cluster.local", direction: str = "outbound") -> str:
    return (
        "2026-01-01T00:00:00.000000Z\tinfo\taccess\tconnection complete\tsrc.addr=10.1.0.5:40000 "
        f'dst.service="{service}" direction="{direction}" bytes_sent=1 bytes_recv=2 duration="{duration_ms}ms"\n'
    )


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0), out, err


@pytest.fixture
def gz_log(tmp_path: Path) -> Path:
    """1000 connections: 990 short, 10 long (100 s .. 190 s), plus noise lines."""
    path = tmp_path / "ztunnel.log.gz"
    lines = [access_line(20) for _ in range(990)]
    lines += [
        access_line(100_000 + 10_000 * i, service="db.shop.svc.cluster.local", direction="inbound") for i in range(10)
    ]
    lines += ["2026-01-01T00:00:00.000000Z\tinfo\tztunnel::proxy\tready\n", "\x00\x01 junk\n"]
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    return path


def test_gz_json(gz_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(["advise", str(gz_log), "--json", "--nodes", "5"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["connections"] == 1000
    assert doc["skipped"] == {"other log line (not an access log)": 1, "binary or undecodable": 1}
    assert doc["durations_seconds"]["max"] == 190.0
    rec = doc["recommendation"]
    assert rec["quantile_seconds"] == 180.0  # rank 999 of 1000
    assert rec["drain_seconds"] == 198  # 180 × 1.1
    assert rec["termination_grace_period_seconds"] == 203
    assert doc["current"]["connections_longer_than_drain"] == 10
    assert doc["recommended"]["connections_longer_than_drain"] == 0
    assert doc["rollout"]["current_seconds"] == 5 * (30 + 10)
    assert doc["rollout"]["recommended_seconds"] == 5 * (203 + 10)
    assert [s["service"] for s in doc["services"]] == ["cart.shop.svc.cluster.local", "db.shop.svc.cluster.local"]
    assert "terminationGracePeriodSeconds: 203" in doc["snippets"]["sail"]


def test_text_report_plot_and_direction(gz_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "durations.png"
    code, out, _err = run(["advise", str(gz_log), "--plot", str(png), "--direction", "inbound"], capsys)
    assert code == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "Read 10 connections" in out
    assert "Recommended terminationGracePeriodSeconds: " in out
    assert "spec:\n  values:\n    ztunnel:\n      terminationGracePeriodSeconds: " in out
    assert "--set terminationGracePeriodSeconds=" in out


def test_stdin() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pyztunnel", "advise", "-", "--json"],
        input="".join(access_line(5000) for _ in range(3)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recommendation"]["termination_grace_period_seconds"] == 7  # 5.5 s → drain 6


def test_empty_input_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    code, _out, err = run(["advise", str(empty)], capsys)
    assert code == 1
    assert "the input is empty" in err


def test_no_access_lines_exits_1_with_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 20 + b"\nhello\n")
    code, _out, err = run(["advise", str(junk)], capsys)
    assert code == 1
    assert "no 'connection complete' access log lines" in err
    assert "binary or undecodable" in err


def test_truncated_gzip_is_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cut.gz"
    data = gzip.compress("".join(access_line(1000) for _ in range(2000)).encode())
    path.write_bytes(data[: len(data) // 2])
    code, out, _err = run(["advise", str(path), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["skipped"]["corrupt gzip data (rest of the file unread)"] == 1
    assert 0 < doc["connections"] < 2000


def test_unreadable_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(["advise", str(tmp_path / "missing.log")], capsys)
    assert code == 2
    assert err.strip() == f"error: cannot read {tmp_path / 'missing.log'}: No such file or directory"

"""`pyztunnel load` against a real nginx on 127.0.0.1 (the seeds' target shape: /status/418)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.nginx_util import nginx

pytestmark = pytest.mark.integration


def test_load_against_nginx(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    with nginx() as port:
        url = f"http://127.0.0.1:{port}/status/418"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pyztunnel",
                "load",
                "-qps",
                "0",
                "-c",
                "20",
                "-n",
                "2000",
                "-json",
                str(result),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(result.read_text())
    assert doc["RetCodes"] == {"418": 2000}
    assert doc["SocketCount"] == 20
    assert doc["ErrorsDurationHistogram"]["Count"] == 0
    assert doc["Retried"] == 0
    assert "Code 418 : 2000 (100.0 %)" in proc.stdout

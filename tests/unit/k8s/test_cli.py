"""`pyztunnel k8s manifests`: the objects on stdout, ready for `kubectl apply -f -`; bad input is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.k8s.cases import EXAMPLES


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pyztunnel", "k8s", "manifests", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, input=stdin)


def test_prints_the_objects_in_the_namespace() -> None:
    out = run("-n", "ztunnel", "-f", str(EXAMPLES / "sail-ztunnel-values.yaml"), "--set", "logLevel=debug")
    assert out.returncode == 0, out.stderr
    account, daemonset = yaml.safe_load_all(out.stdout)
    assert account["kind"] == "ServiceAccount" and daemonset["kind"] == "DaemonSet"
    assert {account["metadata"]["namespace"], daemonset["metadata"]["namespace"]} == {"ztunnel"}
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 300
    assert spec["containers"][0]["image"] == "registry.example.com/mesh/pyztunnel:0.1.0"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["RUST_LOG"] == "info,access=debug", "ztunnel.* (the Sail CR's) wins over top-level --set"
    assert env["LOG_FORMAT"] == "json"


def test_values_from_stdin() -> None:
    out = run("-f", "-", stdin="updateStrategy: {type: OnDelete}\n")
    assert out.returncode == 0, out.stderr
    assert list(yaml.safe_load_all(out.stdout))[1]["spec"]["updateStrategy"]["type"] == "OnDelete"


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (("--set", "nope=1"), None, "invalid values: nope"),
        (("--set", "a.b"), None, "--set a.b: key 'b' has no value"),
        (("-f", "/no/such/file.yaml"), None, "/no/such/file.yaml: cannot read values"),
        (("-f", "-"), "a: [\n", "-:2: not valid YAML"),
        (("-f", "-"), "- a\n- b\n", "values must be a mapping"),
        (("-f", "-"), "ztunnel: {updateStrategy: {type: Sometimes}}\n", "ztunnel.updateStrategy.type"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], stdin: str | None, says: str) -> None:
    out = run(*args, stdin=stdin)
    assert out.returncode == 2
    assert says in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_an_oversized_values_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (5 * 1024 * 1024) + "\n")
    out = run("-f", str(big))
    assert out.returncode == 2 and "larger than 4 MiB" in out.stderr

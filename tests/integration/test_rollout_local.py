"""LocalBackend and `pyztunnel upgrade` against the controller API served from a fake cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyztunnel.cli import cli, main
from pyztunnel.errors import UserError
from pyztunnel.rollout.backend import TemplateChange
from pyztunnel.rollout.local import ClusterUnavailable, LocalBackend
from pyztunnel.rollout.plan import Plan
from pyztunnel.rollout.strategies import Rollout
from pyztunnel.rollout.testing import FakeCluster
from tests.integration.fake_controller import daemonset, fake_controller

NODES = ["n1", "n2"]


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYZTUNNEL_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def fake(base: Path) -> Iterator[FakeCluster]:
    cluster = FakeCluster(NODES, {"httpbin": 2, "gateway": 1}, version="v1")
    cluster.auto_replace = True  # the controller replaces a deleted proxy from the template
    with fake_controller(cluster, base / "t" / "controller.sock"):
        yield cluster


def test_backend_maps_the_api(fake: FakeCluster) -> None:
    async def go() -> None:
        async with LocalBackend("t") as backend:
            assert [n.name for n in await backend.nodes()] == NODES
            await backend.cordon("n1")
            assert [n.schedulable for n in await backend.nodes()] == [False, True]
            pods = await backend.pods_on("n1")
            assert pods and all(p.owner in ("Deployment/httpbin", "Deployment/gateway") for p in pods)
            await backend.evict(pods[0])
            assert pods[0].name not in {p.name for p in await backend.pods_on("n2")}
            await backend.uncordon("n1")
            await backend.set_template(TemplateChange(version="v9", strategy="RollingUpdate"))
            created = await backend.create_proxy("n2")
            assert await backend.wait_proxy_ready(created.name, 5)
            assert sorted((p.version, p.updated) for p in await backend.proxies("n2")) == [("v1", False), ("v9", True)]
            await backend.delete_proxy(created.name)
            assert not await backend.wait_proxy_ready(created.name, 1)
            # replace_proxy surges in the lossless order: the new proxy Ready before the old one is deleted.
            fake.calls.clear()
            new = await backend.replace_proxy("n1", surge=True, within=5)
            assert new.version == "v9"
            assert [op for op, _ in fake.calls] == ["create_proxy", "delete_proxy"]  # readiness is polled
            assert [(p.version, p.ready) for p in await backend.proxies("n1")] == [("v9", True)]

    asyncio.run(go())


@pytest.mark.parametrize("plan", [Plan("v2"), Plan("v2", strategy="drain", grace_seconds=60)])
def test_rollout_through_the_api(fake: FakeCluster, plan: Plan) -> None:
    async def go() -> None:
        async with LocalBackend("t") as backend:
            await Rollout(backend, plan).run()

    asyncio.run(go())
    assert fake.versions() == {n: ["v2"] for n in NODES}
    assert all(fake.schedulable.values())
    assert fake.current.version == "v2"


def test_upgrade_command_shows_progress_and_records_state(fake: FakeCluster, base: Path) -> None:
    result = CliRunner().invoke(cli, ["upgrade", "--version", "v2", "--name", "t"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "upgrade to v2 done on 2 node(s)" in result.output
    for node in NODES:
        assert node in result.output
    state = json.loads((base / "t" / "rollout.json").read_text())
    assert state["status"] == "done" and {n: r["status"] for n, r in state["progress"].items()} == dict.fromkeys(
        NODES, "done"
    )


def test_upgrade_failure_is_one_line_and_resumable(fake: FakeCluster, base: Path) -> None:
    fake.broken_versions.add("v2")
    result = CliRunner().invoke(cli, ["upgrade", "--version", "v2", "--name", "t", "--ready-timeout", "1s"])
    assert isinstance(result.exception, UserError) and result.exception.exit_code == 2  # main() exits with it
    assert "not ready within 1s: " in str(result.exception)
    assert "deleted it, the old proxy keeps serving" in str(result.exception)
    assert "cordoned nodes: none" in result.output and "resume state (" in result.output
    assert "failed" in result.output and "n1" in result.output  # the final table stays, showing where it stopped
    assert fake.versions() == {n: ["v1"] for n in NODES}
    fake.broken_versions.clear()
    again = CliRunner().invoke(cli, ["upgrade", "--version", "v2", "--name", "t"], catch_exceptions=False)
    assert again.exit_code == 0 and "resuming the rollout to v2" in again.output
    assert fake.versions() == {n: ["v2"] for n in NODES}


def test_no_cluster_running_exits_2_saying_what_to_do(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["upgrade", "--version", "v2", "--name", "nothere"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not running" in err and "pyztunnel cluster up --name nothere" in err


def test_no_cluster_message(base: Path) -> None:
    async def go() -> None:
        async with LocalBackend("nothere") as backend:
            await backend.nodes()

    with pytest.raises(ClusterUnavailable, match="pyztunnel cluster up --name nothere"):
        asyncio.run(go())


def test_bad_options_are_user_errors(base: Path) -> None:
    result = CliRunner().invoke(cli, ["upgrade", "--version", "v2", "--max-surge", "0", "--max-unavailable", "0"])
    assert result.exit_code != 0 and "cannot both be 0" in str(result.exception)
    result = CliRunner().invoke(cli, ["upgrade"])
    assert "--version (or --image, or --rollback) is required" in str(result.exception)


def test_a_failed_rollout_restores_the_whole_template_not_only_the_version(fake: FakeCluster) -> None:
    """#11 item 7: the old revert put back the version and kept the rest of the rollout's template (here its grace;
    on the cluster an env), so the next proxy came up with it."""
    fake.current = dataclasses.replace(fake.current, body={**fake.current.body, "env": {"A": "1"}})
    before = daemonset(fake)
    fake.broken_versions.add("v2")
    result = CliRunner().invoke(
        cli, ["upgrade", "--version", "v2", "--name", "t", "--ready-timeout", "1s", "--grace", "5"]
    )
    assert isinstance(result.exception, UserError)
    assert daemonset(fake) == before  # version, grace and env: all of it


def test_rollback_restores_the_template_before_the_last_rollout(fake: FakeCluster) -> None:
    fake.current = dataclasses.replace(fake.current, body={**fake.current.body, "env": {"A": "1"}})
    before = daemonset(fake)
    assert CliRunner().invoke(cli, ["upgrade", "--version", "v2", "--name", "t"], catch_exceptions=False).exit_code == 0
    fake.current = dataclasses.replace(fake.current, body={**fake.current.body, "env": {"A": "1", "BROKEN": "1"}})
    back = CliRunner().invoke(cli, ["upgrade", "--rollback", "--name", "t"], catch_exceptions=False)
    assert back.exit_code == 0 and "rollback to v1 done on 2 node(s)" in back.output
    assert daemonset(fake) == before
    assert fake.versions() == {n: ["v1"] for n in NODES}

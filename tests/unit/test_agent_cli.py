"""The `pyztunnel agent` command's settings: flags, environment, derived socket paths."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pyztunnel import settings
from pyztunnel.agent.cli import agent
from pyztunnel.agent.config import AgentSettings


def test_help_lists_the_settings() -> None:
    result = CliRunner().invoke(agent, ["--help"])
    assert result.exit_code == 0
    for flag in ("--run-dir", "--ztunnel-uds-address", "--tcp-migrate-req / --no-tcp-migrate-req", "--bridge"):
        assert flag in result.output


def test_socket_paths_follow_the_run_dir() -> None:
    config = settings.load(AgentSettings, cli={"run_dir": "/run/pyztunnel/demo/nodes/n1"}, environ={})
    assert config.zds_socket == Path("/run/pyztunnel/demo/nodes/n1/ztunnel.sock")
    assert config.api_socket == Path("/run/pyztunnel/demo/nodes/n1/cni.sock")
    assert config.tcp_migrate_req is True


def test_flags_and_environment() -> None:
    config = settings.load(
        AgentSettings,
        cli={"tcp_migrate_req": False},
        environ={"ZTUNNEL_UDS_ADDRESS": "/tmp/z.sock", "PYZTUNNEL_ZDS_TIMEOUT": "250ms"},
    )
    assert config.tcp_migrate_req is False
    assert config.zds_socket == Path("/tmp/z.sock")
    assert float(config.zds_timeout) == 0.25

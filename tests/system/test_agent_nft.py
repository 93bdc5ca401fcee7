"""libnftables in a thread inside a netns, and the `nft` fallback (root)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from pyztunnel.agent import nftables, rules
from pyztunnel.netns import run_in_netns

NS = "pzt-tnft-a"


@pytest.fixture
def netns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def listed(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("via", ["library", "program"])
def test_install_is_idempotent_and_stays_in_the_netns(netns: str, via: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if via == "program":
        monkeypatch.setattr(nftables, "_library", lambda: None)
    assert not run_in_netns(netns, lambda: nftables.table_exists("inet", rules.TABLE))
    run_in_netns(netns, lambda: rules.install_in_current_netns(dns_capture=True))
    first = listed(netns)
    run_in_netns(netns, lambda: rules.install_in_current_netns(dns_capture=True))
    assert listed(netns) == first  # replaced, not duplicated
    assert first.count("redirect to :15001") == 2 and "redirect to :15053" in first
    assert run_in_netns(netns, lambda: nftables.table_exists("inet", rules.TABLE))
    host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"inet {rules.TABLE}" not in host  # the host netns never gets a rule
    rules_out = subprocess.run(["ip", "-n", netns, "rule"], capture_output=True, text=True).stdout
    assert rules_out.count("fwmark 0x111/0xfff lookup 100") == 1


def test_errors_are_reported(netns: str) -> None:
    with pytest.raises(nftables.NftError, match="syntax error"):
        run_in_netns(netns, lambda: nftables.run("this is not nft"))

"""The chart's generated files are current, and the hand-written template names the variables the proxy declares."""

from __future__ import annotations

import re

import pytest
import yaml

from pyztunnel import __version__
from pyztunnel.identity.config import CaClientSettings
from pyztunnel.k8s import chartgen
from pyztunnel.k8s.manifests import env_of
from pyztunnel.proxy.config import ProxySettings
from tests.unit.k8s.cases import CHART


def test_generated_chart_files_are_current() -> None:
    assert chartgen.stale() == [], "run python -m pyztunnel.k8s.chartgen and commit the result"


def test_check_fails_on_a_stale_file(tmp_path: pytest.TempPathFactory) -> None:
    chartgen.write(tmp_path)  # type: ignore[arg-type]
    (tmp_path / "values.yaml").write_text("stale")  # type: ignore[operator]
    assert chartgen.stale(tmp_path) == ["values.yaml"]  # type: ignore[arg-type]


def test_chart_stands_in_for_istios_ztunnel_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["name"] == "ztunnel"
    assert chart["version"] == chart["appVersion"] == __version__


@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (CaClientSettings, "ca_address"),
        (ProxySettings, "termination_grace_period_seconds"),
        (ProxySettings, "pod_name"),
        (ProxySettings, "node_name"),
    ],
)
def test_the_template_sets_the_variables_the_proxy_declares(cls: type, field: str) -> None:
    template = (CHART / "templates" / "daemonset.yaml").read_text()
    assert re.search(rf"- name: {env_of(cls, field)}\n", template)

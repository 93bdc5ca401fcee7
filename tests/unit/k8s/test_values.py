"""Values: Istio's names and defaults; the three shapes a user may give (top level, global.*, a Sail CR's
ztunnel.*) merged in Istio's order; bad values refused in one line."""

from __future__ import annotations

from typing import Any

import pytest

from pyztunnel.errors import UserError
from pyztunnel.k8s.values import defaults, effective, merge_overwrite, proxy_switches
from pyztunnel.proxy.config import ProxySettings


def test_defaults_are_istios() -> None:
    values = effective({})
    assert values.terminationGracePeriodSeconds == 30
    assert values.updateStrategy.type == "RollingUpdate"
    assert values.updateStrategy.rollingUpdate is not None
    assert (values.updateStrategy.rollingUpdate.maxSurge, values.updateStrategy.rollingUpdate.maxUnavailable) == (1, 0)
    assert values.resources == {"requests": {"cpu": "200m", "memory": "512Mi"}}
    assert (values.logLevel, values.logAsJson, values.istioNamespace) == ("info", False, "istio-system")
    assert values.podAnnotations == {"prometheus.io/port": "15020", "prometheus.io/scrape": "true"}


def test_precedence_defaults_global_top_level_ztunnel() -> None:
    user: dict[str, Any] = {
        "global": {"hub": "g", "tag": "g", "logAsJson": True},
        "hub": "top",
        "tag": "top",
        "ztunnel": {"tag": "sail", "env": {"B": "2"}},
        "env": {"A": "1"},
    }
    values = effective(user)
    assert (values.hub, values.tag, values.logAsJson) == ("top", "sail", True)
    assert values.env == {"A": "1", "B": "2"}, "maps merge key by key"


def test_a_sail_cr_s_values_apply_unchanged() -> None:
    values = effective({"ztunnel": {"terminationGracePeriodSeconds": 300, "updateStrategy": {"type": "OnDelete"}}})
    assert values.terminationGracePeriodSeconds == 300
    assert values.updateStrategy.type == "OnDelete"


def test_merge_replaces_lists_and_scalars_even_when_empty_or_false() -> None:
    assert merge_overwrite({"a": [1, 2], "b": True, "c": {"d": 1}}, {"a": [], "b": False, "c": {"e": 2}}) == {
        "a": [],
        "b": False,
        "c": {"d": 1, "e": 2},
    }


def test_pyztunnel_values_are_the_proxys_declared_switches() -> None:
    switches = {d.yaml_key: d.default for d in proxy_switches()}
    assert {"listenerHandoff", "tcpMigrateReq", "connectionMigration", "hboneResume"} <= set(switches)
    assert defaults()["pyztunnel"] == {"handoffDir": "/var/run/pyztunnel", **switches}
    declared = {field for field in ProxySettings.__dataclass_fields__}
    assert {d.name for d in proxy_switches()} <= declared


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"nope": 1}, "nope: Extra inputs are not permitted"),
        ({"ztunnel": {"updateStrategy": {"type": "Never"}}}, "ztunnel.updateStrategy.type"),
        ({"terminationGracePeriodSeconds": -1}, "terminationGracePeriodSeconds"),
        ({"terminationGracePeriodSeconds": "30"}, "valid integer"),
        ({"env": {"A": [1]}}, "env.A"),
        ({"pyztunnel": {"listenerHandoff": "yes"}}, "pyztunnel.listenerHandoff"),
        ({"ztunnel": {"tag": None}}, "tag"),
    ],
)
def test_bad_values_are_one_line(user: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match="invalid values") as caught:
        effective(user)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_global_keys_are_accepted_and_unused() -> None:
    assert effective({"global": {"defaultResources": {}, "logging": {"level": "x"}}}) == effective({})

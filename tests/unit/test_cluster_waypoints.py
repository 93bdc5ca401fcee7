"""A spec's waypoint (services[].useWaypoint): validated like the rest of the spec, and rendered as istiod sends it
(the service names its waypoint; the pods behind it name the implicit policy admitting only the waypoint)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pyztunnel.cluster import render, spec, waypoints
from pyztunnel.errors import UserError
from pyztunnel.workloads import local

WAYPOINT = {
    "name": "waypoint",
    "namespace": "default",
    "serviceAccount": "waypoint",
    "mesh": False,
    "command": ["pyztunnel", "waypoint"],
}


def doc_with_waypoint(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(spec.default_text())
    doc["deployments"].append({**WAYPOINT, **changes.get("deployment", {})})
    doc["services"].append(
        {
            "name": "waypoint",
            "namespace": "default",
            "selector": {"app": "waypoint"},
            "ports": [{"port": changes.get("port", 15008)}],
        }
    )
    httpbin = next(s for s in doc["services"] if s["name"] == "httpbin")
    httpbin["useWaypoint"] = changes.get("use", "waypoint")
    return doc


def parse(doc: dict[str, Any]) -> spec.LoadedSpec:
    return spec.parse(yaml.safe_dump(doc, sort_keys=False), "spec.yaml")


def test_a_service_behind_a_waypoint_is_rendered_as_istiod_sends_it() -> None:
    loaded = parse(doc_with_waypoint())
    httpbin_spec = next(s for s in loaded.spec.services if s.name == "httpbin")
    assert waypoints.waypoint_of(loaded.spec, httpbin_spec) == ("waypoint", ("waypoint",))
    assert waypoints.is_waypoint(loaded.spec, next(d for d in loaded.spec.deployments if d.name == "waypoint"))
    views = [
        render.ServiceView(
            "httpbin", "default", "10.96.0.11", ((8000, 8080),), {"app": "httpbin"}, "waypoint", ("waypoint",)
        )
    ]
    pods = [
        render.WorkloadView("httpbin-a", "default", "httpbin", "10.244.1.2", "node-1", True, True, {"app": "httpbin"})
    ]
    doc = render.render_workloads(pods, views, "cluster.local")
    (svc,) = doc["services"]
    assert svc["waypoint"] == {"destination": "default/waypoint.default.svc.cluster.local", "hboneMtlsPort": 15008}
    (workload,) = doc["workloads"]
    assert workload["authorizationPolicies"] == ["default/istio_allow_waypoint_default_waypoint"]
    (policy,) = doc["policies"]
    assert policy["scope"] == "WorkloadSelector" and policy["action"] == "Allow"
    assert policy["rules"] == [[[{"principals": [{"Exact": "cluster.local/ns/default/sa/waypoint"}]}]]]
    config = local.parse(yaml.safe_dump(doc), "rendered")  # what the proxies load (and the control plane sends)
    assert config.services[0].waypoint is not None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use": "nosuch"}, "no service 'nosuch' in namespace 'default'"),
        ({"use": "httpbin"}, "'httpbin' cannot be a waypoint: it uses a waypoint itself"),
        ({"port": 8080}, "has no port 15008 (HBONE)"),
        ({"deployment": {"mesh": True}}, "must run outside the mesh (mesh: false)"),
    ],
)
def test_bad_waypoint_references_are_one_line_with_their_place(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match="useWaypoint") as error:
        parse(doc_with_waypoint(**changes))
    assert message in str(error.value) and "spec.yaml:" in str(error.value)

"""Validation of the pod description the agent API receives."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from pyztunnel.agent.pods import BadPod, PodSpec, veth_name

GOOD: dict[str, Any] = {
    "uid": "7c1d0c9e-0a3b-4d59-9a59-3c0e4e9b1f00",
    "name": "httpbin-1",
    "namespace": "default",
    "serviceAccount": "httpbin",
    "netns": "pzt-demo-pod-httpbin-1",
    "ip": "10.244.1.5",
    "prefixLen": 24,
    "gateway": "10.244.1.1",
    "mesh": True,
}


def test_parses_and_round_trips() -> None:
    spec = PodSpec.from_json(GOOD)
    assert spec.netns == Path("/run/netns/pzt-demo-pod-httpbin-1")
    assert spec.ip == ipaddress.IPv4Address("10.244.1.5") and spec.mesh
    assert PodSpec.from_json(spec.to_json()) == spec
    assert PodSpec.from_json({**GOOD, "netns": "/proc/1/ns/net"}).netns == Path("/proc/1/ns/net")


def test_defaults() -> None:
    doc = {k: v for k, v in GOOD.items() if k not in ("serviceAccount", "mesh")}
    spec = PodSpec.from_json(doc)
    assert spec.service_account == "default" and spec.mesh is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uid": ""}, "bad uid"),
        ({"uid": "a/b"}, "bad uid"),
        ({"name": "has space"}, "bad name"),
        ({"ip": "10.244.1.300"}, "bad address"),
        ({"ip": 5}, "must be a string"),
        ({"prefixLen": 33}, "prefixLen"),
        ({"prefixLen": True}, "prefixLen"),
        ({"gateway": "10.245.0.1"}, "gateway"),
        ({"gateway": "10.244.1.5"}, "gateway"),
        ({"mesh": "yes"}, "mesh"),
        ({"netns": ""}, "empty netns"),
    ],
)
def test_rejects(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BadPod, match=message):
        PodSpec.from_json({**GOOD, **change})


def test_rejects_missing_and_non_objects() -> None:
    with pytest.raises(BadPod, match="missing field 'ip'"):
        PodSpec.from_json({k: v for k, v in GOOD.items() if k != "ip"})
    with pytest.raises(BadPod, match="JSON object"):
        PodSpec.from_json([GOOD])


def test_veth_name_is_short_and_stable() -> None:
    name = veth_name(GOOD["uid"])
    assert name == veth_name(GOOD["uid"]) and name.startswith("v") and len(name) == 9  # ≤ 15, the limit of a link name
    assert name != veth_name(GOOD["uid"] + "x")
    int(name[1:], 16)

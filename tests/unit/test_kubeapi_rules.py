"""The stand-in's pure parts: selectors and patches as the API server applies them; the k8s backend's mapping."""

from __future__ import annotations

import pytest

from pyztunnel.k8s import backend_objects as objects
from pyztunnel.kubeapi.errors import ApiError
from pyztunnel.kubeapi.patch import apply, json_patch, merge_patch, strategic_merge_patch
from pyztunnel.kubeapi.selectors import field_matcher, label_matcher
from pyztunnel.rollout.backend import TemplateChange

POD = {
    "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web", "tier": "a"}},
    "spec": {"nodeName": "n1"},
    "status": {"phase": "Running"},
}


def test_label_selectors() -> None:
    for text, want in [
        ("app=web", True),
        ("app==web,tier!=b", True),
        ("app in (x, web)", True),
        ("tier notin (a)", False),
        ("app", True),
        ("!app", False),
        ("", True),
        ("app=db", False),
    ]:
        assert label_matcher(text)(POD) is want, text
    with pytest.raises(ApiError):
        label_matcher("app in web")(POD)


def test_field_selectors() -> None:
    assert field_matcher("spec.nodeName=n1,status.phase=Running", "pods")(POD)
    assert not field_matcher("metadata.name!=p", "pods")(POD)
    with pytest.raises(ApiError, match=r"field label not supported: spec\.foo"):
        field_matcher("spec.foo=1", "pods")
    with pytest.raises(ApiError):
        field_matcher("spec.nodeName=n1", "daemonsets")


def test_patches() -> None:
    target = {"spec": {"unschedulable": True, "taints": [1]}, "metadata": {"labels": {"a": "1"}}}
    assert merge_patch(target, {"spec": {"unschedulable": None}}) == {
        "spec": {"taints": [1]},
        "metadata": {"labels": {"a": "1"}},
    }
    ds = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "istio-proxy",
                            "image": "x:1",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        },
                        {"name": "side", "image": "s:1"},
                    ]
                }
            }
        }
    }
    patched = strategic_merge_patch(
        ds,
        {
            "spec": {
                "template": {
                    "spec": {
                        "$setElementOrder/containers": [{"name": "istio-proxy"}, {"name": "side"}],
                        "containers": [{"name": "istio-proxy", "image": "x:2", "env": [{"name": "B", "value": "3"}]}],
                    }
                }
            }
        },
    )
    c = patched["spec"]["template"]["spec"]["containers"]
    assert c[0]["image"] == "x:2" and c[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]
    assert c[1] == {"name": "side", "image": "s:1"}
    replaced = strategic_merge_patch(
        {"spec": {"template": {"a": 1, "b": 2}}}, {"spec": {"template": {"$patch": "replace", "a": 3}}}
    )
    assert replaced == {"spec": {"template": {"a": 3}}}
    assert json_patch(
        {"spec": {"x": [1, 2]}},
        [{"op": "replace", "path": "/spec/x/1", "value": 9}, {"op": "add", "path": "/spec/y", "value": 1}],
    ) == {"spec": {"x": [1, 9], "y": 1}}
    with pytest.raises(ApiError) as bad:
        apply("application/apply-patch+yaml", {}, {})
    assert bad.value.code == 415


def test_daemonset_patch_changes_tag_grace_env_and_strategy() -> None:
    ds = {
        "spec": {
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "istio-proxy",
                            "image": "gcr.io/istio-release/ztunnel:1.30.3",
                            "env": [{"name": "TERMINATION_GRACE_PERIOD_SECONDS", "value": "30"}],
                        }
                    ]
                }
            },
        }
    }
    patch = objects.daemonset_patch(ds, TemplateChange(version="1.31.0", strategy="OnDelete", grace_seconds=90))
    assert patch == {
        "spec": {
            "updateStrategy": {"type": "OnDelete", "rollingUpdate": None},
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 90,
                    "containers": [
                        {
                            "name": "istio-proxy",
                            "image": "gcr.io/istio-release/ztunnel:1.31.0",
                            "env": [{"name": "TERMINATION_GRACE_PERIOD_SECONDS", "value": "90"}],
                        }
                    ],
                }
            },
        }
    }
    assert objects.with_tag("localhost:5000/zt@sha256:abc", "2") == "localhost:5000/zt:2"
    assert objects.image_tag("localhost:5000/zt") == "latest"

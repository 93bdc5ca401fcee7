"""`pyztunnel k8s manifests` output passes Kubernetes' OpenAPI schemas (kubernetes-validate, pinned in
requirements.lock) for the three newest minor versions it bundles, strict (no unknown field), for every value set of
cases.py. (`kubectl apply --dry-run=client --validate=false` would check nothing: it is not used.)"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils

from tests.unit.k8s.cases import CASES, Case
from tests.unit.k8s.test_helm_parity import python_render


def newest_minor_versions(count: int = 3) -> list[str]:
    minors = sorted({tuple(int(p) for p in v.split(".")[:2]) for v in utils.all_versions()})
    return [f"{major}.{minor}" for major, minor in minors[-count:]]


VERSIONS = newest_minor_versions()


def test_the_pinned_validator_bundles_kubernetes_1_37() -> None:
    assert VERSIONS == ["1.35", "1.36", "1.37"], "kubernetes-validate changed: update the pin and this list"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rendered_objects_pass_the_schema(case: Case, version: str) -> None:
    for obj in python_render(case):
        assert kubernetes_validate.validate(obj, version, strict=True) == version


def _daemonset() -> dict[str, Any]:
    return python_render(Case("defaults"))[1]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda ds: ds["spec"]["template"]["spec"]["containers"][0].update(livenessProbes=[]),
        lambda ds: ds["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="30"),
        lambda ds: ds["spec"]["updateStrategy"].update(rollingUpdate={"maxSurge": [1]}),
    ],
    ids=["unknown-field", "wrong-type", "wrong-nested-type"],
)
def test_the_validation_can_fail(breakage: Any) -> None:
    daemonset = _daemonset()
    breakage(daemonset)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)

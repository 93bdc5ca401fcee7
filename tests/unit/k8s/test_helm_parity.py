"""The two renderers agree: `helm template ztunnel deploy/chart` (a real helm, from scripts/tools.lock) and
`pyztunnel k8s manifests` give the same objects for every value set of cases.py, and both refuse bad values.

Compared as data (key order and YAML quoting are the printers' business), with the one intended difference masked:
`app.kubernetes.io/managed-by` says Helm or pyztunnel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyztunnel.errors import UserError
from pyztunnel.k8s import manifests
from pyztunnel.k8s.cli import user_values
from pyztunnel.k8s.values import effective
from tests.conftest import require
from tests.unit.k8s.cases import CASES, CHART, Case

NAMESPACE = "istio-system"


def _helm() -> str:
    beside = Path(sys.executable).parent / "helm"  # .venv/bin/helm, where make install puts it
    helm = str(beside) if beside.exists() else shutil.which("helm")
    require(helm is not None, "helm (make install extracts it from scripts/tools.lock into .venv/bin)")
    assert helm is not None
    return helm


def _normalised(docs: list[Any]) -> list[Any]:
    out = []
    for doc in docs:
        if not doc:
            continue
        text = json.dumps(doc, sort_keys=True)
        out.append(
            json.loads(
                text.replace('"app.kubernetes.io/managed-by": "Helm"', '"app.kubernetes.io/managed-by": "pyztunnel"')
            )
        )
    return out


def helm_template(case: Case) -> subprocess.CompletedProcess[str]:
    argv = [_helm(), "template", "ztunnel", str(CHART), "-n", NAMESPACE, *case.helm_args()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def python_render(case: Case) -> list[dict[str, Any]]:
    values = effective(user_values(tuple(map(str, case.files)), case.sets, case.set_strings))
    return manifests.render(values, NAMESPACE)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_helm_and_python_render_the_same_objects(case: Case) -> None:
    result = helm_template(case)
    assert result.returncode == 0, result.stderr
    from_helm = _normalised(list(yaml.safe_load_all(result.stdout)))
    from_python = _normalised(python_render(case))
    assert from_python == from_helm
    expected_kinds = [] if "resourceScope=cluster" in case.sets else ["ServiceAccount", "DaemonSet"]
    assert [d["kind"] for d in from_python] == expected_kinds


def test_cluster_scope_renders_nothing_in_either() -> None:
    case = Case("cluster-scope", sets=("resourceScope=cluster",))
    result = helm_template(case)
    assert result.returncode == 0, result.stderr
    assert _normalised(list(yaml.safe_load_all(result.stdout))) == python_render(case) == []


@pytest.mark.parametrize(
    "sets",
    [
        ("nope=1",),
        ("terminationGracePeriodSeconds=thirty",),
        ("ztunnel.updateStrategy.type=Sometimes",),
        ("imagePullPolicy=Sometimes",),
        ("ztunnel.pyztunnel.listenerHandoff=maybe",),
        ("podAnnotations.x=1",),  # annotations are strings: Helm's --set makes 1 an integer
    ],
)
def test_both_refuse_the_same_bad_values(sets: tuple[str, ...]) -> None:
    case = Case("bad", sets=sets)
    assert helm_template(case).returncode != 0
    with pytest.raises(UserError, match="invalid values"):
        python_render(case)


def test_helm_lint_passes() -> None:
    result = subprocess.run([_helm(), "lint", str(CHART)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

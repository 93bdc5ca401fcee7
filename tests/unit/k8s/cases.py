"""Value sets rendered by both renderers and validated against Kubernetes' schemas: the defaults, a Sail ZTunnel
CR's values, OnDelete, a custom image, nearly every value at once, and --set forms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "chart"
EXAMPLES = REPO / "deploy" / "examples"
HERE = Path(__file__).resolve().parent / "values"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    files: tuple[Path, ...] = ()
    sets: tuple[str, ...] = ()
    set_strings: tuple[str, ...] = ()

    def helm_args(self) -> list[str]:
        args: list[str] = []
        for path in self.files:
            args += ["-f", str(path)]
        for expression in self.sets:
            args += ["--set", expression]
        for expression in self.set_strings:
            args += ["--set-string", expression]
        return args


CASES = [
    Case("defaults"),
    Case("sail-values", files=(EXAMPLES / "sail-ztunnel-values.yaml",)),
    Case("ondelete", files=(EXAMPLES / "ondelete.yaml",)),
    Case("custom-image", files=(EXAMPLES / "custom-image.yaml",)),
    Case("everything", files=(HERE / "everything.yaml",)),
    Case(
        "set-forms",
        files=(EXAMPLES / "ondelete.yaml",),
        sets=(
            "tag=1.30,variant=distroless",
            r"podAnnotations.example\.com/x=on",
            "tolerations[0].operator=Exists,tolerations[0].effect=NoSchedule",
            "imagePullSecrets={a,b}",
            "ztunnel.terminationGracePeriodSeconds=45",
            "global.network=west",
            "env.FLAG=true,env.COUNT=7",
            "pyztunnel.listenerHandoff=false",
            "updateStrategy.rollingUpdate=null",
        ),
        set_strings=("env.LEVEL=10",),
    ),
    Case("revision-and-scope", sets=("revision=stable", "resourceScope=namespace")),
]

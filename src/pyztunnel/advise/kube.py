"""`pyztunnel advise --kubeconfig`: the proxy pods' logs read through the API server (as `kubectl logs`), the
DaemonSet's grace and node count as the current values, and `--apply`: the recommended
terminationGracePeriodSeconds patched into the DaemonSet (and its env TERMINATION_GRACE_PERIOD_SECONDS), or into
the Sail `ZTunnel` that owns it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pyztunnel.advise.parse import AccessLogParser
from pyztunnel.errors import UserError
from pyztunnel.rollout.backend import BackendError, TemplateChange

LOG_TAIL_LINES = 100000


@dataclasses.dataclass(frozen=True)
class KubeSource:
    kubeconfig: Path
    context: str | None
    daemonset: str | None


@dataclasses.dataclass
class KubeFacts:
    where: str
    pods: list[str]
    grace: int
    nodes: int


async def read_logs(source: KubeSource, parser: AccessLogParser) -> KubeFacts:
    from pyztunnel.k8s.backend import connect

    try:
        async with connect(source.kubeconfig, source.context, source.daemonset) as backend:
            template = await backend.template()
            proxies = await backend.proxies()
            for proxy in proxies:
                path = f"/api/v1/namespaces/{backend.namespace}/pods/{proxy.name}/log"
                text = await backend.text(path, {"tailLines": str(LOG_TAIL_LINES)})
                for line in text.splitlines():
                    parser.feed_line(line)
            nodes = len({p.node for p in proxies}) or 1
            return KubeFacts(backend.where, [p.name for p in proxies], template.grace_seconds, nodes)
    except BackendError as exc:
        raise UserError(str(exc)) from None


async def apply_grace(source: KubeSource, grace: int) -> str:
    from pyztunnel.k8s.backend import connect

    try:
        async with connect(source.kubeconfig, source.context, source.daemonset) as backend:
            await backend.set_template(TemplateChange(grace_seconds=grace))
            owner = "the Sail ZTunnel resource" if backend.sail is not None else backend.where
            return f"terminationGracePeriodSeconds {grace} applied to {owner} (its pods take it as they are replaced)"
    except BackendError as exc:
        raise UserError(str(exc)) from None

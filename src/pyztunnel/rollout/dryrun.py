"""`upgrade --dry-run`: what the rollout would do, read from the cluster, changing nothing."""

from __future__ import annotations

from pyztunnel.rollout.backend import ClusterBackend
from pyztunnel.rollout.drainfilter import plan_drain
from pyztunnel.rollout.plan import Plan


async def plan_lines(backend: ClusterBackend, plan: Plan, where: str) -> list[str]:
    current = await backend.template()
    nodes = sorted(plan.nodes) if plan.nodes else sorted(n.name for n in await backend.nodes())
    target = plan.target.version if plan.target else (plan.image or plan.version)
    what = "roll back to" if plan.target else "upgrade to"
    lines = [f"dry run: {what} {target} ({plan.strategy}) on {where}; nothing is changed"]
    lines.append(
        f"template: {current.version} ({current.strategy}, grace {current.grace_seconds}s) → {target}"
        + (" (the whole earlier template)" if plan.target else "")
        + (f", grace {plan.grace_seconds}s" if plan.grace_seconds is not None else "")
    )
    canary = plan.canary
    if canary is not None:
        first = nodes[: canary.count]
        then = "roll them back and halt" if canary.auto_rollback else "halt"
        lines.append(
            f"canary: {', '.join(first)} first, then {canary.bake_seconds:g}s of bake on their proxies' metrics "
            f"(halt above: {canary.thresholds.max_failed} failed connections, {canary.thresholds.max_error_closes} "
            f"error closes, {canary.thresholds.max_restarts} restarts, {canary.thresholds.max_flaps} readiness flaps); "
            f"bad verdict: restore the previous template and {then}"
        )
    if plan.strategy == "rolling":
        if backend.rolls_itself:
            lines.append(
                f"patch the DaemonSet (RollingUpdate maxSurge {plan.max_surge}, maxUnavailable {plan.max_unavailable}),"
                " then follow it as 'kubectl rollout status' does; stop at a node whose new pod is not Ready within "
                f"{plan.ready_timeout:g}s"
            )
        else:
            lines.append(
                f"per node, {plan.max_surge} at a time: new proxy beside the old, Ready within {plan.ready_timeout:g}s,"
                " then the old one SIGTERMed"
            )
            lines += [f"  {n}" for n in nodes]
        return lines
    lines.append("strategy → OnDelete; then one node at a time:")
    for node in nodes:
        drain = plan_drain(await backend.pods_on(node), plan.drain.flags)
        proxies = [p.name for p in await backend.proxies(node)]
        evict = ", ".join(p.ref for p in drain.evict) or "nothing"
        lines.append(
            f"  {node}: cordon; evict {evict}; delete {', '.join(proxies) or 'no proxy'}; wait for the new "
            f"proxy Ready; uncordon"
        )
        refusal = drain.error()
        if refusal:
            lines.append(f"    would stop here: {refusal}")
        lines += [f"    {w}" for w in drain.warning_lines()]
    if current.strategy != "OnDelete":
        lines.append(f"then the strategy back to {current.strategy}")
    return lines

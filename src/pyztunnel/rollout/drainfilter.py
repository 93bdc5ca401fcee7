"""Which pods a node drain evicts: `kubectl drain`'s filters, in its order and with its words (kubectl
pkg/drain/filters.go). Pure: pods and flags in, a plan out.

1. pods already being deleted: skipped;
2. DaemonSet pods: an error unless --ignore-daemonsets (then skipped with a warning); one whose DaemonSet is gone is
   evicted with a warning (kubectl deletes it);
3. mirror pods (static pods): skipped;
4. pods with emptyDir volumes: an error unless --delete-emptydir-data (then evicted with a warning);
5. pods without a controller (or whose controller is gone): an error unless --force (then evicted with a warning).
"""

from __future__ import annotations

import dataclasses

from pyztunnel.rollout.backend import Pod

DAEMONSET_FATAL = "DaemonSet-managed Pods (use --ignore-daemonsets to ignore)"
DAEMONSET_WARNING = "ignoring DaemonSet-managed Pods"
LOCAL_STORAGE_FATAL = "Pods with local storage (use --delete-emptydir-data to override)"
LOCAL_STORAGE_WARNING = "deleting Pods with local storage"
UNMANAGED_FATAL = "Pods that declare no controller (use --force to override)"
UNMANAGED_WARNING = "deleting Pods that declare no controller"


@dataclasses.dataclass(frozen=True)
class DrainFlags:
    ignore_daemonsets: bool = True
    delete_emptydir_data: bool = False
    force: bool = False


@dataclasses.dataclass
class DrainPlan:
    evict: list[Pod] = dataclasses.field(default_factory=list)
    skipped: list[Pod] = dataclasses.field(default_factory=list)
    warnings: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # kubectl's warning → pod refs
    errors: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # kubectl's fatal reason → pod refs

    def error(self) -> str | None:
        """kubectl's one-line refusal, e.g. 'cannot delete Pods with local storage (use --delete-emptydir-data to
        override): default/cache-1'; None if the node can be drained."""
        if not self.errors:
            return None
        return ", ".join(f"cannot delete {why}: {', '.join(refs)}" for why, refs in self.errors.items())

    def warning_lines(self) -> list[str]:
        return [f"Warning: {why}: {', '.join(refs)}" for why, refs in self.warnings.items()]


def plan_drain(pods: list[Pod], flags: DrainFlags) -> DrainPlan:
    plan = DrainPlan()
    for pod in pods:
        if pod.terminating:
            plan.skipped.append(pod)
            continue
        if pod.owner_kind == "DaemonSet":
            if pod.owner_missing:
                plan.warnings.setdefault(UNMANAGED_WARNING, []).append(pod.ref)
                plan.evict.append(pod)
            elif flags.ignore_daemonsets:
                plan.warnings.setdefault(DAEMONSET_WARNING, []).append(pod.ref)
                plan.skipped.append(pod)
            else:
                plan.errors.setdefault(DAEMONSET_FATAL, []).append(pod.ref)
            continue
        if pod.mirror:
            plan.skipped.append(pod)
            continue
        refused = False
        if pod.emptydir:
            if flags.delete_emptydir_data:
                plan.warnings.setdefault(LOCAL_STORAGE_WARNING, []).append(pod.ref)
            else:
                plan.errors.setdefault(LOCAL_STORAGE_FATAL, []).append(pod.ref)
                refused = True
        if pod.owner is None or pod.owner_missing:
            if flags.force:
                plan.warnings.setdefault(UNMANAGED_WARNING, []).append(pod.ref)
            else:
                plan.errors.setdefault(UNMANAGED_FATAL, []).append(pod.ref)
                refused = True
        if not refused:
            plan.evict.append(pod)
    return plan

"""The rollout's pure rules: kubectl drain's filters and words, kubectl rollout status, the per-node deadline, the
canary's verdict, the resume check (#11 item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyztunnel.rollout.backend import Pod, ProxyPod, RolloutView
from pyztunnel.rollout.canary import CanaryJudge, Sample, Thresholds, error_counts
from pyztunnel.rollout.drainfilter import DrainFlags, plan_drain
from pyztunnel.rollout.plan import Plan, RolloutFailed, RolloutRefused
from pyztunnel.rollout.status import NodeTracker, NotRollingUpdate, ProgressDeadline, rollout_status
from pyztunnel.rollout.store import FileState, RolloutStore
from pyztunnel.rollout.strategies import Rollout
from pyztunnel.rollout.testing import FakeCluster

RS = "ReplicaSet/web-5d8"


def pods() -> list[Pod]:
    return [
        Pod("web-1", "n1", owner=RS),
        Pod("cache-1", "n1", owner=RS, emptydir=True),
        Pod("debug", "n1"),
        Pod("kube-proxy-x", "n1", owner="DaemonSet/kube-proxy", namespace="kube-system"),
        Pod("gone-ds-x", "n1", owner="DaemonSet/old", owner_missing=True),
        Pod("etcd-n1", "n1", mirror=True, namespace="kube-system"),
        Pod("leaving", "n1", owner=RS, terminating=True),
    ]


def test_drain_refuses_in_kubectls_words() -> None:
    plan = plan_drain(pods(), DrainFlags())
    assert plan.error() == (
        "cannot delete Pods with local storage (use --delete-emptydir-data to override): default/cache-1, "
        "cannot delete Pods that declare no controller (use --force to override): default/debug"
    )
    assert [p.name for p in plan.evict] == ["web-1", "gone-ds-x"]
    assert {p.name for p in plan.skipped} == {"kube-proxy-x", "etcd-n1", "leaving"}
    assert "Warning: ignoring DaemonSet-managed Pods: kube-system/kube-proxy-x" in plan.warning_lines()


def test_drain_flags_allow_with_warnings_and_daemonsets_refused_without_ignore() -> None:
    plan = plan_drain(pods(), DrainFlags(ignore_daemonsets=True, delete_emptydir_data=True, force=True))
    assert plan.error() is None
    assert {p.name for p in plan.evict} == {"web-1", "cache-1", "debug", "gone-ds-x"}
    assert "Warning: deleting Pods with local storage: default/cache-1" in plan.warning_lines()
    assert "Warning: deleting Pods that declare no controller: default/debug, default/gone-ds-x" in plan.warning_lines()
    strict = plan_drain(pods(), DrainFlags(ignore_daemonsets=False, delete_emptydir_data=True, force=True))
    assert strict.error() == (
        "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): kube-system/kube-proxy-x"
    )


def view(
    gen: int, observed: int, desired: int, updated: int, available: int, strategy: str = "RollingUpdate"
) -> RolloutView:
    return RolloutView("ztunnel", gen, observed, desired, updated, available, strategy, ())


def test_rollout_status_is_kubectls_rule() -> None:
    assert rollout_status(view(2, 1, 3, 3, 3), "ztunnel") == (
        "Waiting for daemon set spec update to be observed...",
        False,
    )
    assert rollout_status(view(2, 2, 3, 1, 3), "ztunnel") == (
        'Waiting for daemon set "ztunnel" rollout to finish: 1 out of 3 new pods have been updated...',
        False,
    )
    assert rollout_status(view(2, 2, 3, 3, 2), "ztunnel") == (
        'Waiting for daemon set "ztunnel" rollout to finish: 2 of 3 updated pods are available...',
        False,
    )
    assert rollout_status(view(2, 2, 3, 3, 3), "ztunnel") == ('daemon set "ztunnel" successfully rolled out', True)
    with pytest.raises(NotRollingUpdate):
        rollout_status(view(2, 2, 3, 3, 3, "OnDelete"), "ztunnel")


def test_node_tracker_deadline_counts_from_when_the_new_pod_was_first_seen() -> None:
    tracker = NodeTracker(["n1", "n2"], ready_timeout=10)
    old = ProxyPod("z-old", "n1", "v1", True, "h1", False)
    new = ProxyPod("z-new", "n1", "v2", False, "h2", True)
    states = tracker.observe([old, new], now=100)
    assert [s.phase for s in states] == ["wait-ready", "pending"]
    assert tracker.overdue(tracker.observe([old, new], now=109), 109) is None
    late = tracker.overdue(tracker.observe([old, new], now=111), 111)
    assert late is not None and late.node == "n1" and late.proxy == new
    ready = ProxyPod("z-new", "n1", "v2", True, "h2", True)
    assert [s.phase for s in tracker.observe([ready], now=112)] == ["done", "pending"]


def test_progress_deadline_counts_from_the_last_change_of_anything_shown() -> None:
    tracker = NodeTracker(["n1", "n2"], ready_timeout=10)
    progress = ProgressDeadline(30, now=0)
    old = ProxyPod("z-old", "n2", "v1", True, "h1", False)
    done = ProxyPod("z-new", "n1", "v2", True, "h2", True)
    stuck = view(2, 2, 2, 1, 2)
    assert not progress.observe(None, [], 29)  # nothing seen yet counts from the start
    assert not progress.observe(stuck, tracker.observe([done, old], 20), 20)
    assert not progress.observe(
        stuck, tracker.observe([done, old], 50), 50
    )  # n2 has no new pod: no deadline of its own
    assert progress.observe(stuck, tracker.observe([done, old], 51), 51)
    moving = ProxyPod("z-new2", "n2", "v2", False, "h2", True)
    assert not progress.observe(stuck, tracker.observe([done, old, moving], 52), 52)  # n2's new pod appeared
    assert not progress.observe(view(2, 2, 2, 2, 2), tracker.observe([done, old, moving], 53), 53)


METRICS = """# TYPE istio_tcp_connections_failed counter
istio_tcp_connections_failed_total{reporter="source",destination_service="a"} {failed}
# TYPE istio_tcp_connections_closed counter
istio_tcp_connections_closed_total{reporter="source",response_flags="-"} 40
istio_tcp_connections_closed_total{reporter="source",response_flags="UF"} {errors}
"""


def text(failed: int, errors: int) -> str:
    return METRICS.replace("{failed}", str(failed)).replace("{errors}", str(errors))


def test_canary_counts_failures_and_error_closes_from_zero() -> None:
    assert error_counts(text(3, 2)) == (3, 2)
    judge = CanaryJudge(Thresholds(max_failed=2))
    judge.feed(Sample("z", True, 0, text(1, 0)))
    assert not judge.verdict().halt
    judge.feed(Sample("z", True, 0, text(3, 0)))
    verdict = judge.verdict()
    assert verdict.halt and verdict.reasons == ("connection failures 3 > 2 (istio_tcp_connections_failed_total)",)
    errors = CanaryJudge(Thresholds())
    errors.feed(Sample("z", True, 0, text(0, 1)))
    assert errors.verdict().reasons[0].startswith("error closes 1 > 0")


def test_canary_restarts_flaps_resets_and_unreachable() -> None:
    judge = CanaryJudge(Thresholds(max_failed=100, max_restarts=1, max_flaps=0))
    judge.feed(Sample("z", True, 0, text(50, 0)))
    judge.feed(Sample("z", True, 1, text(2, 0)))  # restarted: the counter starts again; 50 + 2 counted
    assert judge.verdict().counts["connection failures"] == 52 and not judge.verdict().halt
    judge.feed(Sample("z", False, 1, text(2, 0)))
    assert judge.verdict().reasons == ("readiness flaps 1 > 0 (Ready → not Ready)",)
    gone = CanaryJudge(Thresholds(max_scrape_failures=2))
    gone.feed(Sample("z", True, 0, None))
    assert not gone.verdict().halt
    gone.feed(Sample("z", True, 0, "garbage line"))
    assert gone.verdict().reasons == ("metrics unreachable 2 times in a row",)


async def test_resume_refuses_a_different_request_and_an_unknown_node(tmp_path: Path) -> None:
    """#11 item 8: after a failed run, `upgrade --version 9 --nodes node-99` resumed the old rollout and rolled
    every node; now the request is compared with the saved one and refused in one line, changing nothing."""
    fake = FakeCluster(["n1", "n2", "n3"], {"web": 2}, version="v1")
    fake.broken_versions.add("v9")
    store = RolloutStore(FileState(tmp_path / "rollout.json"))
    with pytest.raises(RolloutFailed):
        await Rollout(fake, Plan("v9", ready_timeout=1), store).run()
    fake.broken_versions.clear()
    calls = len(fake.calls)
    with pytest.raises(RolloutRefused) as refused:
        await Rollout(fake, Plan("v9", nodes=("node-99",)), store).run()
    assert "this request differs in --nodes (saved: all nodes, now: node-99)" in str(refused.value)
    assert len(fake.calls) == calls and fake.versions() == {n: ["v1"] for n in ("n1", "n2", "n3")}
    with pytest.raises(RolloutRefused, match=r"--max-surge \(saved: 1, now: 2\)"):
        await Rollout(fake, Plan("v9", max_surge=2), store).run()
    await store.state.save(None)  # --restart
    with pytest.raises(RolloutRefused, match="no node named 'node-99'"):
        await Rollout(fake, Plan("v9", nodes=("node-99",)), store).run()
    done = await Rollout(fake, Plan("v9"), store).run()
    assert done.status == "done" and fake.versions() == {n: ["v9"] for n in ("n1", "n2", "n3")}

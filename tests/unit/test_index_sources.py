"""One index, two sources (LOCAL_XDS_PATH and XDS), updated incrementally: the same lookups as an index built from
scratch from what is in force."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyztunnel.workloads import local
from pyztunnel.workloads.index import LOCAL, XDS, WorkloadIndex
from pyztunnel.workloads.model import Action, Authorization, LocalConfig, Protocol, Scope, Service, Workload

SVC = "default/web.default.svc.cluster.local"


def wl(uid: str, ip: str, *, node: str = "n1", services: dict[str, dict[int, int]] | None = None) -> Workload:
    return Workload(
        uid=uid,
        name=uid,
        namespace="default",
        workload_ips=(ip,),
        node=node,
        protocol=Protocol.HBONE,
        services=services if services is not None else {SVC: {80: 8080}},
    )


def svc(vip: str = "10.96.0.10") -> Service:
    return Service(
        name="web", namespace="default", hostname="web.default.svc.cluster.local", vips=(f"/{vip}",), ports={80: 80}
    )


def deny(name: str, namespace: str = "default") -> Authorization:
    return Authorization(name=name, namespace=namespace, scope=Scope.NAMESPACE, action=Action.DENY)


def test_both_sources_are_combined() -> None:
    index = WorkloadIndex(LocalConfig(workloads=(wl("a", "10.0.0.1"),)))
    index.apply(XDS, workloads=[wl("b", "10.0.0.2")], services=[svc()], policies=[deny("p")])
    assert index.workload_by_ip("10.0.0.1").uid == "a"  # type: ignore[union-attr]
    assert index.workload_by_ip("10.0.0.2").uid == "b"  # type: ignore[union-attr]
    service = index.service_by_vip("10.96.0.10")
    assert service is not None
    assert sorted(e.workload.uid for e in index.endpoints(service, 80)) == ["a", "b"]
    assert [p.key for p in index.policies_for(wl("x", "10.0.0.9"))] == ["default/p"]
    assert index.counts()[XDS] == {"workloads": 1, "services": 1, "policies": 1}


def test_xds_wins_a_shared_key_and_its_removal_uncovers_the_file() -> None:
    index = WorkloadIndex(LocalConfig(workloads=(wl("a", "10.0.0.1"),)))
    index.apply(XDS, workloads=[wl("a", "10.0.0.5")])
    assert index.workload_by_ip("10.0.0.1") is None
    assert index.by_uid["a"].workload_ips == ("10.0.0.5",)
    index.apply(XDS, remove_workloads=["a"])
    assert index.by_uid["a"].workload_ips == ("10.0.0.1",)
    assert index.workload_by_ip("10.0.0.5") is None


def test_an_update_moves_every_derived_entry() -> None:
    index = WorkloadIndex()
    index.apply(XDS, workloads=[wl("a", "10.0.0.1", node="n1")], services=[svc("10.96.0.10")])
    index.apply(XDS, workloads=[wl("a", "10.0.0.2", node="n2", services={})], services=[svc("10.96.0.11")])
    assert index.workload_by_ip("10.0.0.1") is None and index.workload_by_ip("10.0.0.2") is not None
    assert list(index.workloads_on("n1")) == [] and [w.uid for w in index.workloads_on("n2")] == ["a"]
    assert index.service_by_vip("10.96.0.10") is None
    service = index.service_by_vip("10.96.0.11")
    assert service is not None and index.endpoints(service, 80) == []


def test_two_workloads_on_one_ip_the_later_wins_and_the_earlier_comes_back() -> None:
    index = WorkloadIndex()
    index.apply(XDS, workloads=[wl("old", "10.0.0.1"), wl("new", "10.0.0.1")])
    assert index.workload_by_ip("10.0.0.1").uid == "new"  # type: ignore[union-attr]
    index.apply(XDS, remove_workloads=["new"])
    assert index.workload_by_ip("10.0.0.1").uid == "old"  # type: ignore[union-attr]


def test_a_workload_naming_an_unknown_service_is_staged() -> None:
    index = WorkloadIndex()
    index.apply(XDS, workloads=[wl("a", "10.0.0.1")])
    assert index.staged_services() == [SVC]
    index.apply(XDS, services=[svc()])
    assert index.staged_services() == []
    assert [e.target_port for e in index.endpoints(svc(), 80)] == [8080]


def test_replacing_the_file_removes_what_it_no_longer_has() -> None:
    index = WorkloadIndex(local.parse("workloads: [{uid: a, namespace: n, workloadIps: ['10.0.0.1']}]", "x"))
    index.apply(XDS, workloads=[wl("b", "10.0.0.2")])
    changes = index.replace(LOCAL, local.parse("workloads: [{uid: c, namespace: n, workloadIps: ['10.0.0.3']}]", "x"))
    assert changes.workloads == 2
    assert sorted(w.uid for w in index.workloads()) == ["b", "c"]
    assert not index.replace(LOCAL, local.parse("workloads: [{uid: c, namespace: n, workloadIps: ['10.0.0.3']}]", "x"))


# --- incremental equals rebuilt ------------------------------------------------------------------------------------

UIDS = st.sampled_from(["a", "b", "c", "d"])
IPS = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
OP = st.one_of(
    st.tuples(st.just("put"), st.sampled_from([LOCAL, XDS]), UIDS, IPS, st.booleans()),
    st.tuples(st.just("del"), st.sampled_from([LOCAL, XDS]), UIDS, IPS, st.booleans()),
    st.tuples(st.just("svc"), st.sampled_from([LOCAL, XDS]), st.just(""), IPS, st.booleans()),
    st.tuples(st.just("pol"), st.sampled_from([LOCAL, XDS]), UIDS, st.just(""), st.booleans()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(OP, max_size=30))
def test_incremental_updates_equal_a_rebuilt_index(ops: list[tuple[str, str, str, str, bool]]) -> None:
    index = WorkloadIndex()
    held: dict[str, dict[str, dict[str, object]]] = {s: {"w": {}, "s": {}, "p": {}} for s in (LOCAL, XDS)}
    for op, source, uid, ip, flag in ops:
        if op == "put":
            w = wl(uid, ip, services={SVC: {80: 8080}} if flag else {})
            index.apply(source, workloads=[w])
            held[source]["w"][uid] = w
        elif op == "del":
            index.apply(source, remove_workloads=[uid])
            held[source]["w"].pop(uid, None)
        elif op == "svc":
            s = svc("10.96.0.10" if flag else "10.96.0.11")
            index.apply(source, services=[s])
            held[source]["s"][s.key] = s
        else:
            p = deny(uid, "default" if flag else "other")
            index.apply(source, policies=[p])
            held[source]["p"][p.key] = p
    merged = {kind: {**held[LOCAL][kind], **held[XDS][kind]} for kind in ("w", "s", "p")}
    rebuilt = WorkloadIndex(
        LocalConfig.model_construct(
            workloads=tuple(merged["w"].values()),
            services=tuple(merged["s"].values()),
            policies=tuple(merged["p"].values()),
        )
    )
    assert sorted(w.key for w in index.workloads()) == sorted(w.key for w in rebuilt.workloads())
    assert index.by_uid == rebuilt.by_uid
    assert set(index.by_ip) == set(rebuilt.by_ip)
    assert set(index.services_by_vip) == set(rebuilt.services_by_vip)
    probe = wl("probe", "10.9.9.9")
    assert sorted(p.key for p in index.policies_for(probe)) == sorted(p.key for p in rebuilt.policies_for(probe))
    for service in rebuilt.services():
        assert sorted(e.workload.uid for e in index.endpoints(service, 80)) == sorted(
            e.workload.uid for e in rebuilt.endpoints(service, 80)
        )

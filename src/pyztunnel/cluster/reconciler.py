"""The reconciler: the ReplicaSet, scheduler and DaemonSet controllers of the local cluster.

It keeps each deployment at its replica count (new pods on the least-loaded schedulable node, scale-down removes
not-ready then newest pods), one proxy pod per node from the DaemonSet template, and owns that template: `PUT
/v1/daemonset` merges into it (a JSON merge patch: `env` key by key), `?replace=1` makes it whole (a rollback restores
the previous template that way). Pods it creates go to the kubelet.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from typing import Any

from pydantic import ValidationError

from pyztunnel.cluster import topology
from pyztunnel.cluster.kubelet import Kubelet
from pyztunnel.cluster.objects import DAEMONSET, DEPLOYMENT, Node, Pod, Store
from pyztunnel.cluster.publisher import Publisher
from pyztunnel.cluster.scheduling import Candidate, pick_node
from pyztunnel.cluster.spec import DeploymentSpec, ProxySpec, ReadinessProbe

_log = logging.getLogger("pyztunnel.cluster")

PROXY_NAMESPACE = "istio-system"
PROXY_APP = "ztunnel"
PROXY_READY_PORT = 15021
PROXY_READY_PATH = "/healthz/ready"


class InvalidTemplate(ValueError):
    """A DaemonSet update the spec's rules refuse; the message starts with the field."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def random_suffix() -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' pod-name alphabet
    return "".join(secrets.choice(alphabet) for _ in range(5))


class Reconciler:
    def __init__(self, store: Store, publisher: Publisher, kubelet: Kubelet) -> None:
        self.store = store
        self.publisher = publisher
        self.kubelet = kubelet
        self._pods_allowed = False  # bootstrap: once the agents serve
        self._proxies_allowed = False  # bootstrap: once the CA serves too (a proxy's first CSR must not fail)

    def allow_pods(self) -> None:
        self._pods_allowed = True
        self.reconcile()

    def allow_proxies(self) -> None:
        self._proxies_allowed = True
        self.reconcile()

    # ----- the desired state, as the API changes it ------------------------------------------------------------

    def scale(self, deployment: str, replicas: int) -> None:
        self.store.replicas[deployment] = replicas
        self.reconcile()
        self.publisher.changed()

    def cordon(self, node: Node, cordoned: bool) -> None:
        node.cordoned = cordoned
        self.publisher.changed()
        self.reconcile()  # uncordoning may let unscheduled pods in

    def update_daemonset(self, patch: dict[str, Any], *, replace: bool = False) -> ProxySpec:
        """Merge `patch` into the template (RFC 7386: `env` and `updateStrategy` merge key by key, a null removes a
        variable; a field set to null goes back to its default), or with `replace` make `patch` the whole template
        (fields it leaves out take their defaults). Running proxies keep the template they were made from."""
        try:
            updated = ProxySpec.model_validate(
                patch if replace else merge_patch(self.store.daemonset.model_dump(), patch)
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidTemplate(f"{where}: {first['msg']}") from None
        self.store.daemonset = updated
        self.publisher.changed()
        return updated

    def delete(self, pod: Pod, grace: float) -> asyncio.Task[None]:
        """Terminate a pod; its owner replaces it at once (as the ReplicaSet and DaemonSet controllers do)."""
        task = self.kubelet.terminate(pod, grace)
        self.reconcile()
        return task

    # ----- reconciliation --------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring pods to the desired state: one proxy per node, each deployment at its replica count."""
        store = self.store
        if not store.active:
            return
        if store.daemonset.enabled and self._proxies_allowed:
            for node in store.nodes.values():
                if not any(p.live for p in store.proxies(node)):
                    self.create_proxy(node, store.daemonset.version)
        for dep in store.spec.deployments if self._pods_allowed else []:
            live = [p for p in store.app_pods(dep.name) if p.live]
            want = store.replicas[dep.name]
            for _ in range(want - len(live)):
                if self._create_app_pod(dep) is None:
                    break
            if len(live) > want:
                # Scale down: not-ready pods first, then the newest (as the ReplicaSet controller ranks them).
                live.sort(key=lambda p: (p.ready, -p.created_at))
                for pod in live[: len(live) - want]:
                    self.kubelet.terminate(pod, pod.grace)

    def _create_app_pod(self, dep: DeploymentSpec) -> Pod | None:
        store = self.store
        same: dict[str, int] = {}
        total: dict[str, int] = {}
        for p in store.app_pods():
            if not p.live:
                continue
            total[p.node.name] = total.get(p.node.name, 0) + 1
            if p.owner == dep.name:
                same[p.node.name] = same.get(p.node.name, 0) + 1
        candidates = [Candidate(n.name, not n.cordoned, n.labels) for n in store.nodes.values()]
        chosen = pick_node(
            candidates, same_deployment=same, total=total, node_selector=dep.nodeSelector, node_name=dep.nodeName
        )
        if chosen is None:
            _log.warning("deployment %s: no schedulable node fits; pod stays unscheduled", dep.name)
            return None
        return self._add_pod(
            name=self._new_name(dep.name),
            namespace=dep.namespace,
            owner_kind=DEPLOYMENT,
            owner=dep.name,
            node=store.nodes[chosen],
            mesh=dep.mesh,
            service_account=dep.serviceAccount,
            labels=dep.pod_labels,
            grace=dep.terminationGracePeriodSeconds,
            probe=dep.readinessProbe,
            command=list(dep.command),
            env=dict(dep.env),
            files=dict(dep.files),
        )

    def _config_source_env(self) -> dict[str, str]:
        """A proxy's config: the control plane's delta ADS (or, with none, workloads.yaml)."""
        plane = self.store.control_plane
        if plane is None:
            return {"LOCAL_XDS_PATH": str(self.store.layout.workloads), "XDS_ADDRESS": ""}
        return {**plane.proxy_env(), "INSTANCE_IP": "$(POD_IP)"}  # ztunnel's XDS node id

    def create_proxy(self, node: Node, version: str) -> Pod:
        """A proxy pod on `node` from the DaemonSet template, with this version (a surge when one runs already)."""
        ds = self.store.daemonset
        layout = self.store.layout
        nd = node.run_dir
        env = {
            "INPOD_UDS": str(nd / "ztunnel.sock"),
            **self._config_source_env(),
            "CA_ADDRESS": f"https://{topology.FABRIC_IP}:{topology.CA_PORT}",
            "CA_ROOT_CA": str(layout.ca_dir / "root-cert.pem"),
            "AUTH_TOKEN": str(nd / "token"),
            "NODE_NAME": node.name,
            "TRUST_DOMAIN": self.store.spec.ca.trustDomain,
            "TERMINATION_GRACE_PERIOD_SECONDS": str(ds.terminationGracePeriodSeconds),
            "PYZTUNNEL_HANDOFF_SOCKET": str(nd / "handoff.sock"),
            "PYZTUNNEL_VERSION": version,
            **ds.env,
        }
        probe_spec = ReadinessProbe.model_validate(
            {"httpGet": {"path": PROXY_READY_PATH, "port": PROXY_READY_PORT}, "periodSeconds": 0.5}
        )
        return self._add_pod(
            name=self._new_name(PROXY_APP),
            namespace=PROXY_NAMESPACE,
            owner_kind=DAEMONSET,
            owner=PROXY_APP,
            node=node,
            mesh=False,
            service_account=PROXY_APP,
            labels={"app": PROXY_APP},
            grace=ds.terminationGracePeriodSeconds,
            probe=probe_spec,
            command=list(ds.command),
            env=env,
            files={},
            version=version,
        )

    def _new_name(self, prefix: str) -> str:
        name = f"{prefix}-{random_suffix()}"
        while name in self.store.pods:
            name = f"{prefix}-{random_suffix()}"
        return name

    def _add_pod(self, **kw: Any) -> Pod:
        node: Node = kw["node"]
        pod = Pod(
            uid=str(uuid.uuid4()), ip=node.ipam.allocate(), netns=topology.pod_ns(self.store.name, kw["name"]), **kw
        )
        self.store.pods[pod.name] = pod
        pod.generation = self.publisher.changed()
        self.kubelet.start(pod)
        _log.info("pod %s scheduled on %s with IP %s", pod.name, node.name, pod.ip)
        return pod

"""Waypoints in the local cluster: a service's `useWaypoint: <service>` (Istio's `istio.io/use-waypoint` label) puts
the named service's pods (`pyztunnel waypoint`, outside the mesh, HBONE on 15008) in front of it.

What the control plane then sends, as istiod does:
- the service's Address resource carries `waypoint: <ns>/<waypoint hostname>` (HBONE port 15008), so every proxy
  sends traffic for the service's VIP to the waypoint;
- each pod behind it names the implicit policy `istio_allow_waypoint_<ns>_<waypoint>` (an ALLOW of the waypoint's
  service accounts, istio/istio's `implicitWaypointPolicy`), so their proxies admit only the waypoint. That is the
  current ztunnel's rule: ztunnel itself no longer checks "from the waypoint" inbound (it did before istio/ztunnel
  PR #873, 2024); the control plane expresses it as a policy.
The waypoint pods get what a proxy gets to reach the control plane and the CA (their node's token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyztunnel.cluster.spec import ClusterSpec, DeploymentSpec, ServiceSpec, matches, waypoint_deployments


def _by_key(spec: ClusterSpec) -> dict[tuple[str, str], ServiceSpec]:
    return {(s.namespace, s.name): s for s in spec.services}


def waypoint_of(spec: ClusterSpec, svc: ServiceSpec) -> tuple[str, tuple[str, ...]] | None:
    """(the waypoint service's name, its pods' service accounts) of a service that uses one."""
    if svc.useWaypoint is None:
        return None
    waypoint = _by_key(spec).get((svc.namespace, svc.useWaypoint))
    if waypoint is None:
        return None
    return waypoint.name, tuple(sorted({d.serviceAccount for d in waypoint_deployments(spec, waypoint)}))


def is_waypoint(spec: ClusterSpec, deployment: DeploymentSpec) -> bool:
    used = {(s.namespace, s.useWaypoint) for s in spec.services if s.useWaypoint}
    return any(
        (w.namespace, w.name) in used
        and matches(w.selector, deployment.pod_labels)
        and w.namespace == deployment.namespace
        for w in spec.services
    )


def policy_name(namespace: str, waypoint: str) -> str:
    """istiod's name (`_` cannot appear in Kubernetes names, so it never collides with a user's policy)."""
    return f"istio_allow_waypoint_{namespace}_{waypoint}"


def implicit_policy(
    pod_namespace: str, waypoint_namespace: str, waypoint: str, accounts: Sequence[str], trust_domain: str
) -> dict[str, Any]:
    """The ALLOW of the waypoint's identities, in the pods' namespace (LOCAL_XDS form)."""
    principals = [{"Exact": f"{trust_domain}/ns/{waypoint_namespace}/sa/{sa}"} for sa in accounts]
    return {
        "name": policy_name(waypoint_namespace, waypoint),
        "namespace": pod_namespace,
        "scope": "WorkloadSelector",
        "action": "Allow",
        "rules": [[[{"principals": principals}]]],
    }


def pod_env(control_plane_env: Mapping[str, str], ca_address: str, ca_dir: Path, node_run_dir: Path) -> dict[str, str]:
    """What a waypoint pod needs to reach the control plane and the CA."""
    return {
        **control_plane_env,
        "CA_ADDRESS": ca_address,
        "CA_ROOT_CA": str(ca_dir / "root-cert.pem"),
        "AUTH_TOKEN": str(node_run_dir / "token"),
    }


def view_fields(spec: ClusterSpec, svc: ServiceSpec) -> dict[str, Any]:
    """The waypoint fields of a service's render.ServiceView."""
    found = waypoint_of(spec, svc)
    return {"waypoint": found[0], "waypoint_accounts": found[1]} if found is not None else {}

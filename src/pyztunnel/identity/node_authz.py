"""Which identity a node may obtain: istiod's node authorizer for `ImpersonatedIdentity`, as a pure decision.

A node proxy authenticated as node N may get the certificate of identity I only if a workload with identity I is
scheduled on N (reference §4), or if I is one of the node-proxy identities every node may hold. The workloads come
from a LOCAL_XDS YAML file (reference §5); only `node`, `namespace`, `serviceAccount`, `trustDomain` are read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import yaml

from pyztunnel import yamlfile
from pyztunnel.identity.api import IMPERSONATED_IDENTITY
from pyztunnel.identity.ca import csr_identity
from pyztunnel.identity.spiffe import Identity, SpiffeError


class WorkloadsError(ValueError):
    """The workloads file cannot be used."""


class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that reads ztunnel's tagged values (`!Exact "…"` in policies) as plain values."""


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_TolerantLoader.add_multi_constructor("!", _untagged)


def identities_by_node(yaml_text: str) -> dict[str, frozenset[Identity]]:
    """node name → identities of the workloads scheduled there. Workloads without a node are ignored."""
    try:
        doc = yamlfile.load(yaml_text, _TolerantLoader) or {}
    except yamlfile.YamlError as exc:
        raise WorkloadsError(str(exc)) from None
    if not isinstance(doc, dict):
        raise WorkloadsError("top level must be a mapping with 'workloads'")
    workloads = doc.get("workloads") or []
    if not isinstance(workloads, list):
        raise WorkloadsError("'workloads' must be a list")
    out: dict[str, set[Identity]] = {}
    for index, workload in enumerate(workloads):
        if not isinstance(workload, dict):
            raise WorkloadsError(f"workloads[{index}] must be a mapping")
        node, namespace = workload.get("node"), workload.get("namespace")
        if not node or not namespace:
            continue
        identity = Identity.for_workload(
            str(namespace), _opt_str(workload.get("serviceAccount")), _opt_str(workload.get("trustDomain"))
        )
        out.setdefault(str(node), set()).add(identity)
    return {node: frozenset(ids) for node, ids in out.items()}


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class Grant:
    identity: Identity


@dataclasses.dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str


def decide(
    *,
    node: str,
    csr_pem: str,
    metadata: Mapping[str, Any],
    trust_domain: str,
    on_node: Mapping[str, frozenset[Identity]],
    node_proxy_identities: Iterable[Identity],
) -> Grant | Refusal:
    """The identity an authenticated node's request is granted, or why not (a gRPC status and a message).

    With `ImpersonatedIdentity` the node asks for that identity; without it, for the identity in its CSR. Whether
    the CSR matches the granted identity is the signer's check (`ca.check_csr`).
    """
    requested = metadata.get(IMPERSONATED_IDENTITY)
    if requested is not None:
        if not isinstance(requested, str):
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{IMPERSONATED_IDENTITY} must be a string")
        try:
            identity = Identity.parse(requested)
        except SpiffeError as exc:
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    else:
        found = csr_identity(csr_pem)
        if found is None:
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, "CSR must ask for exactly one SPIFFE identity")
        identity = found
    if identity.trust_domain != trust_domain:
        return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"{identity} is not in this CA's trust domain {trust_domain}")
    if identity in set(node_proxy_identities) or identity in on_node.get(node, frozenset()):
        return Grant(identity)
    return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"no pod with identity {identity} is scheduled on node {node}")

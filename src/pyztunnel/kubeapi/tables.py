"""What kubectl reads besides the objects: legacy discovery (`/api`, `/apis`, each group-version's resource list,
including `pods/eviction` so kubectl drain evicts) and `meta.k8s.io/v1` Tables, so `kubectl get` prints its usual
columns (nodes' STATUS with SchedulingDisabled, pods -o wide, daemonsets)."""

from __future__ import annotations

import datetime
import time
from typing import Any

from pyztunnel.kubeapi.daemonset import terminating
from pyztunnel.kubeapi.store import KINDS, Kind

SUBRESOURCE_KIND = {
    "eviction": ("policy", "v1", "Eviction", ["create"]),
    "log": ("", "v1", "Pod", ["get"]),
    "proxy": ("", "v1", "Pod", ["get"]),
    "status": (None, None, None, ["get", "patch", "update"]),
}


def api_versions(server: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    }


def group_list() -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for k in KINDS:
        if k.group and k.version not in groups.setdefault(k.group, []):
            groups[k.group].append(k.version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": g,
                "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
            }
            for g, vs in groups.items()
        ],
    }


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    kinds = [k for k in KINDS if k.group == group and k.version == version]
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for k in kinds:
        resources.append(
            {
                "name": k.plural,
                "singularName": k.singular,
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": list(k.verbs),
                "shortNames": list(k.short),
            }
        )
        for sub in k.subresources:
            g, v, kind, verbs = SUBRESOURCE_KIND[sub]
            entry: dict[str, Any] = {
                "name": f"{k.plural}/{sub}",
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": kind or k.kind,
                "verbs": verbs,
            }
            if g is not None:
                entry["group"], entry["version"] = g, v
            resources.append(entry)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _age(obj: dict[str, Any]) -> str:
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    s = max(0, int(time.time() - then))
    if s < 120:
        return f"{s}s"
    if s < 3 * 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    return f"{s // 3600}h"


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": kind, "format": fmt, "description": "", "priority": priority}


def _node_row(n: dict[str, Any]) -> list[Any]:
    ready = next(
        (c.get("status") for c in (n.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
        "Unknown",
    )
    status = "Ready" if ready == "True" else "NotReady"
    if (n.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = n["metadata"].get("labels") or {}
    roles = ",".join(sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))) or "<none>"
    version = ((n.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
    address = ((n.get("status") or {}).get("addresses") or [{"address": "<none>"}])[0]["address"]
    return [n["metadata"]["name"], status, roles, _age(n), version, address]


def _pod_row(p: dict[str, Any]) -> list[Any]:
    status = p.get("status") or {}
    containers = status.get("containerStatuses") or []
    total = len((p.get("spec") or {}).get("containers") or [])
    ready = sum(1 for c in containers if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in containers)
    phase = status.get("phase") or "Pending"
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting:
            phase = waiting.get("reason", phase)
    if terminating(p):
        phase = "Terminating"
    return [
        p["metadata"]["name"],
        f"{ready}/{total}",
        phase,
        restarts,
        _age(p),
        status.get("podIP") or "<none>",
        (p.get("spec") or {}).get("nodeName") or "<none>",
        "<none>",
        "<none>",
    ]


def _ds_row(d: dict[str, Any]) -> list[Any]:
    s = d.get("status") or {}
    selector = (
        ",".join(
            f"{k}={v}" for k, v in ((d["spec"].get("template") or {}).get("spec") or {}).get("nodeSelector", {}).items()
        )
        or "<none>"
    )
    containers = ((d["spec"].get("template") or {}).get("spec") or {}).get("containers") or []
    return [
        d["metadata"]["name"],
        s.get("desiredNumberScheduled", 0),
        s.get("currentNumberScheduled", 0),
        s.get("numberReady", 0),
        s.get("updatedNumberScheduled", 0),
        s.get("numberAvailable", 0),
        selector,
        _age(d),
        ",".join(c["name"] for c in containers),
        ",".join(c.get("image", "") for c in containers),
    ]


COLUMNS = {
    "nodes": (
        [
            _col("Name", fmt="name"),
            _col("Status"),
            _col("Roles"),
            _col("Age"),
            _col("Version"),
            _col("Internal-IP", priority=1),
        ],
        _node_row,
    ),
    "pods": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "integer"),
            _col("Age"),
            _col("IP", priority=1),
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ],
        _pod_row,
    ),
    "daemonsets": (
        [
            _col("Name", fmt="name"),
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _col("Node Selector"),
            _col("Age"),
            _col("Containers", priority=1),
            _col("Images", priority=1),
        ],
        _ds_row,
    ),
}


def table(kind: Kind, objects: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    columns, row = COLUMNS.get(
        kind.plural, ([_col("Name", fmt="name"), _col("Age")], lambda o: [o["metadata"]["name"], _age(o)])
    )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": [{"cells": row(o), "object": o} for o in objects],
    }

"""The mapping between Kubernetes objects (as JSON dicts) and the rollout's types, pure: pod facts for the drain
filters, a proxy pod's revision, readiness, restarts and last termination, the template of a DaemonSet (or of the
Sail `ZTunnel` that owns it), image tags, and the patches that change them."""

from __future__ import annotations

import datetime
from typing import Any

from pyztunnel.rollout.backend import Pod, ProxyPod, Template, TemplateChange

HASH_LABEL = "controller-revision-hash"
REVISION_HASH_LABEL = "controller.kubernetes.io/hash"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
PROXY_CONTAINER = "istio-proxy"  # the chart's container name; otherwise the first container
GRACE_ENV = "TERMINATION_GRACE_PERIOD_SECONDS"
STATE_ANNOTATION = "pyztunnel.io/rollout"
SAIL_GROUP = "sailoperator.io"


def epoch(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    text = stamp.rstrip("Z").split(".")[0]
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def is_ready(pod: dict[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def pod_of(obj: dict[str, Any], missing_daemonsets: set[str]) -> Pod:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    ref = controller_of(obj)
    owner = f"{ref['kind']}/{ref['name']}" if ref else None
    ns = meta.get("namespace", "default")
    return Pod(
        meta["name"],
        spec.get("nodeName", ""),
        float(spec.get("terminationGracePeriodSeconds", 30)),
        owner,
        namespace=ns,
        uid=meta.get("uid", ""),
        mirror=MIRROR_ANNOTATION in (meta.get("annotations") or {}),
        emptydir=any("emptyDir" in v for v in spec.get("volumes") or []),
        terminating="deletionTimestamp" in meta,
        owner_missing=owner is not None
        and owner.startswith("DaemonSet/")
        and f"{ns}/{ref['name']}" in missing_daemonsets,  # type: ignore[index]
    )


def container(template_spec: dict[str, Any]) -> dict[str, Any]:
    containers = template_spec.get("containers") or [{}]
    return next((c for c in containers if c.get("name") == PROXY_CONTAINER), containers[0])


def image_tag(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def with_tag(image: str, tag: str) -> str:
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    repo = last.split(":", 1)[0]
    return f"{head}/{repo}:{tag}" if head else f"{repo}:{tag}"


def proxy_of(obj: dict[str, Any], current_hash: str) -> ProxyPod:
    meta, status = obj["metadata"], obj.get("status") or {}
    spec = obj.get("spec") or {}
    statuses = status.get("containerStatuses") or []
    main = container(spec)
    mine = next((c for c in statuses if c.get("name") == main.get("name")), statuses[0] if statuses else {})
    terminated = (mine.get("lastState") or {}).get("terminated") or (mine.get("state") or {}).get("terminated")
    last = ""
    if terminated:
        last = f"exit code {terminated.get('exitCode')}" + (
            f" ({terminated['reason']})" if terminated.get("reason") else ""
        )
    revision = (meta.get("labels") or {}).get(HASH_LABEL, "")
    return ProxyPod(
        meta["name"],
        spec.get("nodeName", ""),
        image_tag(main.get("image", "")),
        is_ready(obj) and "deletionTimestamp" not in meta,
        revision=revision,
        updated=bool(current_hash) and revision == current_hash,
        restarts=int(mine.get("restartCount", 0)),
        last_exit=last,
        created=epoch(meta.get("creationTimestamp")),
        terminating="deletionTimestamp" in meta,
    )


def waiting_reason(obj: dict[str, Any]) -> str:
    for c in (obj.get("status") or {}).get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
    return ""


def current_hash(revisions: list[dict[str, Any]]) -> str:
    """The hash of the ControllerRevision with the highest .revision (IsPodUpdated's)."""
    if not revisions:
        return ""
    top = max(revisions, key=lambda r: int(r.get("revision", 0)))
    return str((top["metadata"].get("labels") or {}).get(REVISION_HASH_LABEL, ""))


def grace_of(template: dict[str, Any]) -> int:
    return int((template.get("spec") or {}).get("terminationGracePeriodSeconds", 30))


def template_of(ds: dict[str, Any], sail_spec: dict[str, Any] | None = None, revision: str = "") -> Template:
    spec = ds.get("spec") or {}
    template = spec.get("template") or {}
    strategy = spec.get("updateStrategy") or {"type": "RollingUpdate"}
    body: dict[str, Any] = {"template": template, "updateStrategy": strategy}
    version = image_tag(container(template.get("spec") or {}).get("image", ""))
    if sail_spec is not None:
        body["sail"] = sail_spec
        version = str(sail_spec.get("version") or version)
    return Template(version, str(strategy.get("type", "RollingUpdate")), grace_of(template), body, revision)


def revision_template(revision: dict[str, Any], strategy: dict[str, Any]) -> Template:
    template = dict(((revision.get("data") or {}).get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    number = str(revision.get("revision", ""))
    return template_of({"spec": {"template": template, "updateStrategy": strategy}}, None, number)


def strategy_patch(change: TemplateChange, current: dict[str, Any]) -> dict[str, Any] | None:
    if change.strategy is None:
        return None
    if change.strategy == "OnDelete":
        return {"type": "OnDelete", "rollingUpdate": None}
    rolling = dict(current.get("rollingUpdate") or {"maxSurge": 1, "maxUnavailable": 0})
    if change.max_surge is not None:
        rolling["maxSurge"] = change.max_surge
    if change.max_unavailable is not None:
        rolling["maxUnavailable"] = change.max_unavailable
    return {"type": "RollingUpdate", "rollingUpdate": rolling}


def daemonset_patch(ds: dict[str, Any], change: TemplateChange) -> dict[str, Any]:
    """A strategic-merge patch of the DaemonSet: image (containers merged by name), grace (also in its env, as the
    chart sets it), strategy."""
    spec = ds.get("spec") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    main = container(tspec)
    patch_spec: dict[str, Any] = {}
    strategy = strategy_patch(change, spec.get("updateStrategy") or {})
    if strategy is not None:
        patch_spec["updateStrategy"] = strategy
    item: dict[str, Any] = {"name": main.get("name")}
    if change.image or change.version:
        item["image"] = change.image or with_tag(main.get("image", ""), str(change.version))
    template_spec: dict[str, Any] = {}
    if change.grace_seconds is not None:
        template_spec["terminationGracePeriodSeconds"] = change.grace_seconds
        if any(e.get("name") == GRACE_ENV for e in main.get("env") or []):
            item["env"] = [{"name": GRACE_ENV, "value": str(change.grace_seconds)}]
    if len(item) > 1:
        template_spec["containers"] = [item]
    if template_spec:
        patch_spec["template"] = {"spec": template_spec}
    return {"spec": patch_spec}


def sail_patch(spec: dict[str, Any], change: TemplateChange) -> dict[str, Any]:
    """A merge patch of the ZTunnel's spec: version, values.ztunnel.{image, updateStrategy,
    terminationGracePeriodSeconds} (the seed's steps 1–2 done where the operator reads them)."""
    values = ((spec.get("values") or {}).get("ztunnel")) or {}
    ztunnel: dict[str, Any] = {}
    out: dict[str, Any] = {}
    if change.version:
        out["version"] = change.version
    if change.image:
        ztunnel["image"] = change.image
    strategy = strategy_patch(change, values.get("updateStrategy") or {})
    if strategy is not None:
        ztunnel["updateStrategy"] = {k: v for k, v in strategy.items() if v is not None}
        if strategy["type"] == "OnDelete":
            ztunnel["updateStrategy"]["rollingUpdate"] = None
    if change.grace_seconds is not None:
        ztunnel["terminationGracePeriodSeconds"] = change.grace_seconds
    if ztunnel:
        out["values"] = {"ztunnel": ztunnel}
    return {"spec": out}

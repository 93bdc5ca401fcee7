"""PATCH bodies as the API server applies them, for the cases kubectl and `pyztunnel upgrade` send:

- `application/merge-patch+json` (RFC 7386): maps merge, `null` deletes, lists are replaced;
- `application/strategic-merge-patch+json`: the same, except that the lists Kubernetes merges by a key (containers
  and initContainers by name, env by name, volumes by name, volumeMounts by mountPath, ports by containerPort) are
  merged element by element, `$patch: replace` replaces a map, `$patch: delete` in a keyed list element deletes it,
  and `$setElementOrder/…` / `$retainKeys` (kubectl sends them) are accepted and ignored;
- `application/json-patch+json` (RFC 6902): add, remove, replace, test.
"""

from __future__ import annotations

import copy
from typing import Any

from pyztunnel.kubeapi.errors import ApiError

MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if value is None:
            out.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key])
        else:
            out[key] = strategic_merge_patch(out.get(key), value)
    return out


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ApiError(400, "BadRequest", f"strategic merge patch: list element without merge key {key!r}")
        index = next((i for i, cur in enumerate(out) if isinstance(cur, dict) and cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del out[index]
        elif index is None:
            out.append(strategic_merge_patch({}, item))
        else:
            out[index] = strategic_merge_patch(out[index], item)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(400, "BadRequest", f"json patch: bad path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch: the body must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if not parts:
                raise ApiError(400, "BadRequest", "json patch: the whole object cannot be patched")
            parent, last = _walk(doc, parts[:-1]), parts[-1]
            if kind == "test":
                if _walk(doc, parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"json patch: test failed at {op['path']}")
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind in ("add", "replace"):
                value = copy.deepcopy(op["value"])
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(value)
                    elif kind == "add":
                        parent.insert(int(last), value)
                    else:
                        parent[int(last)] = value
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = value
            else:
                raise ApiError(400, "BadRequest", f"json patch: unsupported op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"json patch: {op!r}: no such path ({exc})") from None
    return doc


def apply(content_type: str, target: dict[str, Any], body: Any) -> dict[str, Any]:
    kind = content_type.split(";", 1)[0].strip()
    if kind == "application/merge-patch+json":
        result = merge_patch(target, body)
    elif kind == "application/strategic-merge-patch+json":
        result = strategic_merge_patch(target, body)
    elif kind == "application/json-patch+json":
        result = json_patch(target, body)
    else:
        raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {kind}")
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "the patch did not leave an object")
    return result

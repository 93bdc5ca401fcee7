"""A pod as the CNI plugin (the cluster controller) describes it to the agent; validation is pure."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Any

from pyztunnel.netns import NETNS_RUN_DIR

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class BadPod(ValueError):
    """The request describing a pod is invalid (answered 400)."""


@dataclasses.dataclass(frozen=True)
class PodSpec:
    uid: str
    name: str
    namespace: str
    service_account: str
    netns: Path
    ip: ipaddress.IPv4Address
    prefix_len: int
    gateway: ipaddress.IPv4Address
    mesh: bool

    @property
    def veth(self) -> str:
        return veth_name(self.uid)

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "netns": str(self.netns),
            "ip": str(self.ip),
            "prefixLen": self.prefix_len,
            "gateway": str(self.gateway),
            "mesh": self.mesh,
        }

    @classmethod
    def from_json(cls, doc: object) -> PodSpec:
        if not isinstance(doc, dict):
            raise BadPod("the body must be a JSON object")
        missing = [k for k in ("uid", "name", "namespace", "netns", "ip", "prefixLen", "gateway") if k not in doc]
        if missing:
            raise BadPod(f"missing field {missing[0]!r}")
        uid = _text(doc, "uid")
        if not uid or len(uid) > 128 or "/" in uid:
            raise BadPod(f"bad uid {uid!r}")
        for key in ("name", "namespace"):
            if not _NAME.match(_text(doc, key)):
                raise BadPod(f"bad {key} {doc[key]!r}")
        service_account = _text(doc, "serviceAccount") if doc.get("serviceAccount") is not None else "default"
        netns_text = _text(doc, "netns")
        if not netns_text:
            raise BadPod("empty netns")
        netns = Path(netns_text) if "/" in netns_text else NETNS_RUN_DIR / netns_text
        prefix_len = doc["prefixLen"]
        if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or not 1 <= prefix_len <= 32:
            raise BadPod(f"bad prefixLen {prefix_len!r} (1-32)")
        try:
            ip = ipaddress.IPv4Address(_text(doc, "ip"))
            gateway = ipaddress.IPv4Address(_text(doc, "gateway"))
        except ipaddress.AddressValueError as exc:
            raise BadPod(f"bad address: {exc}") from None
        if gateway not in ipaddress.IPv4Network(f"{ip}/{prefix_len}", strict=False) or gateway == ip:
            raise BadPod(f"gateway {gateway} is not another address of {ip}/{prefix_len}")
        mesh = doc.get("mesh", False)
        if not isinstance(mesh, bool):
            raise BadPod(f"mesh must be true or false, not {mesh!r}")
        return cls(uid, doc["name"], doc["namespace"], service_account, netns, ip, prefix_len, gateway, mesh)


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise BadPod(f"{key} must be a string, not {value!r}")
    return value


def veth_name(uid: str) -> str:
    """Node end of a pod's veth: `v` + 8 hex of the uid's hash (≤ 15 characters, stable across agent restarts)."""
    return "v" + hashlib.sha256(uid.encode()).hexdigest()[:8]

"""The workload model of ztunnel's local config (reference/ztunnel.md §5.2), camelCase, unknown fields rejected.

The same types serve every source (the LOCAL_XDS_PATH file now, XDS later); the index does not care where they came
from. StringMatch is an externally tagged enum: `{Exact: v}` (the YAML loader turns `!Exact v` into that form).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class Protocol(StrEnum):
    TCP = "TCP"
    HBONE = "HBONE"


class HealthStatus(StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


class Locality(_Model):
    region: str = ""
    zone: str = ""
    subzone: str = ""


class GatewayAddress(_Model):
    destination: str
    hbone_mtls_port: int = 15008


class ApplicationTunnel(_Model):
    protocol: str = "NONE"
    port: int | None = None


class Workload(_Model):
    workload_ips: tuple[str, ...]
    namespace: str
    uid: str = ""
    name: str = ""
    trust_domain: str = ""
    service_account: str = ""
    network: str = ""
    workload_name: str = ""
    workload_type: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    hostname: str = ""
    node: str = ""
    cluster_id: str = ""
    locality: Locality = Locality()
    protocol: Protocol = Protocol.TCP
    network_mode: str = "Standard"
    native_tunnel: bool = False
    application_tunnel: ApplicationTunnel | None = None
    waypoint: GatewayAddress | None = None
    network_gateway: GatewayAddress | None = None
    authorization_policies: tuple[str, ...] = ()
    status: HealthStatus = HealthStatus.HEALTHY
    # LocalWorkload form: {"ns/hostname": {servicePort: targetPort}}
    services: dict[str, dict[int, int]] = Field(default_factory=dict)
    capacity: int = 1

    @field_validator("workload_ips")
    @classmethod
    def _ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_address(v)) for v in value)

    @property
    def identity(self) -> str:
        """The workload's SPIFFE id (`spiffe://td/ns/ns/sa/sa`); defaults as ztunnel's XDS path (§3.1)."""
        td = self.trust_domain or "cluster.local"
        sa = self.service_account or "default"
        return f"spiffe://{td}/ns/{self.namespace}/sa/{sa}"

    @property
    def key(self) -> str:
        """A stable name for logs: the uid, or ns/name."""
        return self.uid or f"{self.namespace}/{self.name}"


class Endpoint(_Model):
    workload_uid: str
    port: dict[int, int] = Field(default_factory=dict)
    status: HealthStatus = HealthStatus.HEALTHY


class LoadBalancer(_Model):
    routing_preferences: tuple[str, ...] = ()
    mode: str = "Standard"
    health_policy: str = "OnlyHealthy"


class Service(_Model):
    name: str
    namespace: str
    hostname: str
    vips: tuple[str, ...]
    ports: dict[int, int]
    cidr_vips: tuple[str, ...] = ()
    endpoints: dict[str, Endpoint] = Field(default_factory=dict)
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    weighted_waypoints: tuple[dict[str, Any], ...] = ()
    ip_families: str | None = None
    canonical: bool = False
    visibility: str | None = None
    load_balancer: LoadBalancer | None = None

    @field_validator("vips")
    @classmethod
    def _vips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for v in value:
            network, sep, ip = v.rpartition("/")
            if not sep:
                network, ip = "", v
            out.append(f"{network}/{ipaddress.ip_address(ip)}")
        return tuple(out)

    @property
    def vip_ips(self) -> tuple[str, ...]:
        return tuple(v.rpartition("/")[2] for v in self.vips)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"


class StringMatch(_Model):
    """Exactly one of the four keys (serde's externally tagged enum)."""

    exact: str | None = Field(default=None, alias="Exact")
    prefix: str | None = Field(default=None, alias="Prefix")
    suffix: str | None = Field(default=None, alias="Suffix")
    presence: Any = Field(default=None, alias="Presence")

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) != 1:
            raise ValueError("a string match has exactly one of Exact, Prefix, Suffix, Presence")
        if not isinstance(data, dict):
            raise ValueError("a string match is written !Exact value (or Prefix, Suffix, Presence)")
        return data

    def matches(self, value: str) -> bool:
        if self.exact is not None:
            return value == self.exact
        if self.prefix is not None:
            return value.startswith(self.prefix)
        if self.suffix is not None:
            return value.endswith(self.suffix)
        return value != ""  # Presence: any non-empty value


class ServiceAccountMatch(_Model):
    namespace: str
    service_account: str


class RbacMatch(_Model):
    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    source_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    not_source_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    destination_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    not_destination_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    @field_validator("source_ips", "not_source_ips", "destination_ips", "not_destination_ips", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(ipaddress.ip_network(str(v), strict=False) for v in value)
        return value

    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)


class Scope(StrEnum):
    GLOBAL = "Global"
    NAMESPACE = "Namespace"
    WORKLOAD_SELECTOR = "WorkloadSelector"


class Action(StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


class Authorization(_Model):
    name: str
    namespace: str = ""
    scope: Scope = Scope.WORKLOAD_SELECTOR
    action: Action = Action.ALLOW
    dry_run: bool = False
    rules: tuple[tuple[tuple[RbacMatch, ...], ...], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class LocalConfig(_Model):
    """The top level of a LOCAL_XDS_PATH file; every list optional."""

    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple[Authorization, ...] = ()

    @field_validator("workloads", "services", "policies", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return () if value is None else value


M = TypeVar("M", bound=BaseModel)
# per model class: (name, shared default, default factory) of every field
_FIELDS: dict[type[BaseModel], tuple[tuple[str, Any, Callable[[], Any] | None], ...]] = {}
_FIELD_SETS: dict[type[BaseModel], set[str]] = {}


def trusted(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of `cls` from values a converter has already validated and normalised (the XDS path), without
    pydantic's validation. Besides the time, it saves memory: setting the fields one by one keeps CPython's compact
    per-instance attribute storage (≈0.6 KiB per Workload instead of ≈1.6 KiB with `model_construct`, which builds a
    `__dict__` and a fields set per instance); the fields set is one shared set (pydantic copies it before any
    change). A missing field gets its default, shared (defaults are immutable here; pydantic would deep-copy them) or
    from its factory."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = tuple(
            (name, None if info.default_factory is not None else info.default, info.default_factory)  # type: ignore[misc]
            for name, info in cls.model_fields.items()
        )
        _FIELDS[cls] = fields
        _FIELD_SETS[cls] = set(cls.model_fields)
    instance = cls.__new__(cls)
    put = object.__setattr__
    for name, default, factory in fields:
        if name in values:
            put(instance, name, values[name])
        else:
            put(instance, name, factory() if factory is not None else default)
    put(instance, "__pydantic_fields_set__", _FIELD_SETS[cls])
    put(instance, "__pydantic_extra__", None)
    put(instance, "__pydantic_private__", None)
    return instance

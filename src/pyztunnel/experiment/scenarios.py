"""The scenarios of the seeds' experiment (issue 5), as data. Pure: nothing here runs anything.

Each scenario says which of pyztunnel's mechanisms are on, which rollout strategy upgrades the proxies, and how the
gateway treats upstream connections. Durations scale with the run length so a laptop-sized run keeps the seeds'
proportions (the seeds ran 60 s with ztunnel's 30 s grace, and 200 s with a 120 s grace).
"""

from __future__ import annotations

import dataclasses
import math

from pyztunnel.errors import UserError

SEED_DURATION_S = 60.0  # the seeds' base run length, against which grace periods are scaled


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    listener_handoff: bool
    tcp_migrate_req: bool
    grace_s: float  # the proxy DaemonSet's terminationGracePeriodSeconds
    strategy: str = "rolling"  # rolling | drain
    gateway_keepalive_time_s: float | None = None  # nginx keepalive_time: caps upstream connection age
    duration_factor: float = 1.0  # the seeds ran scenario 2 for 200 s instead of 60 s
    connection_migration: bool = False  # established TCP↔TCP relays move to the new proxy (docs/migration.md)

    @property
    def drain_s(self) -> float:
        """ztunnel's drain deadline from the grace period (reference/ztunnel.md §1.3)."""
        if self.grace_s > 10:
            return self.grace_s - 5
        return max(self.grace_s - 1, 1)


def seed_scenarios(duration_s: float) -> list[Scenario]:
    """The five scenarios, scaled to a run of `duration_s` seconds (the seeds' run is 60 s)."""
    scale = duration_s / SEED_DURATION_S
    ztunnel_grace = _scaled_grace(30, scale)
    long_grace = _scaled_grace(120, scale)
    return [
        Scenario(
            "ztunnel",
            f"ztunnel's behaviour (no handoff, tcp_migrate_req=0, grace {ztunnel_grace:g} s)",
            False,
            False,
            ztunnel_grace,
        ),
        Scenario(
            "long-grace",
            f"the seeds' remedy: a long grace period ({long_grace:g} s)",
            False,
            False,
            long_grace,
            duration_factor=200 / 60,
        ),
        Scenario(
            "max-conn-age",
            "the seeds' best practice: gateway caps upstream connection age below the drain",
            False,
            False,
            ztunnel_grace,
            gateway_keepalive_time_s=max(1.0, (ztunnel_grace - 5) / 2),
        ),
        Scenario(
            "drain",
            "node drain (OnDelete, cordon, evict, replace, uncordon; not the load's node)",
            False,
            False,
            ztunnel_grace,
            "drain",
        ),
        Scenario(
            "pyztunnel",
            f"pyztunnel's defaults (handoff + tcp_migrate_req + migration, grace {ztunnel_grace:g} s)",
            True,
            True,
            ztunnel_grace,
            connection_migration=True,
        ),
    ]


def _scaled_grace(seconds: float, scale: float) -> float:
    # Never below 6 s: the drain formula needs grace > 1 to leave any drain at all, and a few seconds of drain keeps
    # the old proxy alive across the new one's readiness.
    return float(max(6, math.ceil(seconds * scale)))


def select(scenarios: list[Scenario], keys: str | None) -> list[Scenario]:
    """Scenarios by comma-separated key or 1-based number; None keeps all."""
    if not keys:
        return scenarios
    chosen = []
    for raw in (k.strip() for k in keys.split(",") if k.strip()):
        match = [s for i, s in enumerate(scenarios, 1) if raw in (s.key, str(i))]
        if not match:
            names = ", ".join(f"{i}={s.key}" for i, s in enumerate(scenarios, 1))
            raise UserError(f"unknown scenario {raw!r}; choose from {names}")
        chosen.extend(match)
    return chosen

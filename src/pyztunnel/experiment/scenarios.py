"""The scenarios of the seeds' experiment (issue 5) and the mechanism matrix (issue 4), as data. Pure: nothing here
runs anything.

Each scenario says which of pyztunnel's mechanisms are on, which rollout strategy upgrades the proxies, and how the
gateway treats upstream connections. Durations scale with the run length so a laptop-sized run keeps the seeds'
proportions (the seeds ran 60 s with ztunnel's 30 s grace, and 200 s with a 120 s grace).

Scenarios are selected by key, by number, or by group: `seeds` (the seeds' five, the default), `mechanisms` (all off,
each mechanism added in turn, all on: the per-mechanism failure table), `all`.
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
    hbone_resume: bool = False  # HBONE streams between pyztunnel peers re-attach after an upgrade
    startup_nice: int = 0  # a new proxy starts this much lower in CPU priority, full once ready (proxy/priority.py)

    @property
    def mechanisms(self) -> list[str]:
        """The names of the mechanisms this scenario turns on, in MECHANISMS order."""
        return [name for name, field in MECHANISMS if getattr(self, field)]

    @property
    def drain_s(self) -> float:
        """ztunnel's drain deadline from the grace period (reference/ztunnel.md §1.3)."""
        if self.grace_s > 10:
            return self.grace_s - 5
        return max(self.grace_s - 1, 1)


# (short name, Scenario field) of each of pyztunnel's mechanisms; every one off reproduces ztunnel.
MECHANISMS = (
    ("handoff", "listener_handoff"),
    ("migrate_req", "tcp_migrate_req"),
    ("migration", "connection_migration"),
    ("hbone_resume", "hbone_resume"),
)

BASELINE = "ztunnel"  # every mechanism off: what the others are measured against
SEEDS = ("ztunnel", "long-grace", "max-conn-age", "drain", "pyztunnel")
# Each mechanism alone where it stands alone; connection migration rides on the handoff socket (docs/migration.md), and
# a resumed HBONE stream needs its app-side TCP leg migrated, so those rows add to the handoff in turn.
MATRIX = ("ztunnel", "handoff", "migrate-req", "migration", "hbone-resume", "pyztunnel")
GROUPS = {"seeds": SEEDS, "mechanisms": MATRIX}


def seed_scenarios(duration_s: float) -> list[Scenario]:
    """Every scenario, scaled to a run of `duration_s` seconds (the seeds' run is 60 s): the seeds' five, then the
    mechanism matrix's own rows."""
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
            f"pyztunnel's defaults (every mechanism on, grace {ztunnel_grace:g} s)",
            True,
            True,
            ztunnel_grace,
            connection_migration=True,
            hbone_resume=True,
        ),
        Scenario("handoff", f"listener handoff only (grace {ztunnel_grace:g} s)", True, False, ztunnel_grace),
        Scenario("migrate-req", f"tcp_migrate_req only (grace {ztunnel_grace:g} s)", False, True, ztunnel_grace),
        Scenario(
            "migration",
            f"handoff + connection migration (grace {ztunnel_grace:g} s)",
            True,
            False,
            ztunnel_grace,
            connection_migration=True,
        ),
        Scenario(
            "hbone-resume",
            f"handoff + connection migration + HBONE resume (grace {ztunnel_grace:g} s)",
            True,
            False,
            ztunnel_grace,
            connection_migration=True,
            hbone_resume=True,
        ),
    ]


def _scaled_grace(seconds: float, scale: float) -> float:
    # Never below 6 s: the drain formula needs grace > 1 to leave any drain at all, and a few seconds of drain keeps
    # the old proxy alive across the new one's readiness.
    return float(max(6, math.ceil(seconds * scale)))


def select(scenarios: list[Scenario], keys: str | None) -> list[Scenario]:
    """Scenarios by comma-separated key, 1-based number or group (`seeds`, `mechanisms`, `all`), each once, in the
    order asked; None or empty selects the seeds' five."""
    groups = {**GROUPS, "all": tuple(s.key for s in scenarios)}
    chosen: list[Scenario] = []
    for raw in (k.strip() for k in (keys or "seeds").split(",") if k.strip()):
        wanted = groups.get(raw, (raw,))
        match = [s for i, s in enumerate(scenarios, 1) if s.key in wanted or raw == str(i)]
        if not match:
            names = ", ".join(f"{i}={s.key}" for i, s in enumerate(scenarios, 1))
            raise UserError(f"unknown scenario {raw!r}; choose from {names}, or a group: {', '.join(groups)}")
        match.sort(key=lambda s: wanted.index(s.key) if s.key in wanted else 0)
        chosen.extend(s for s in match if s not in chosen)
    return chosen

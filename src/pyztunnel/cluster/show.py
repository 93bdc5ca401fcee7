"""`cluster status` tables (rich)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def print_status(state: dict[str, Any], *, stale: bool = False, console: Console | None = None) -> None:
    # Piped output keeps whole IPs and names rather than the 80 columns rich assumes without a terminal.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    title = f"cluster {state['name']} — {state['phase']}{' (ready)' if state['ready'] else ''}"
    if stale:
        title += " — controller not running, last saved state"
    if state.get("error"):
        title += f" — {state['error']}"
    console.print(title, style="bold")

    proxies = {p["name"]: p for p in state["proxies"]}
    nodes = Table("node", "IP", "pod CIDR", "cordoned", "agent", "proxy version", "proxy pid", title="nodes")
    for n in state["nodes"]:
        mine = [proxies[p] for p in n["proxies"] if p in proxies]
        agent = "off" if not n["agent"]["enabled"] else ("ready" if n["agent"]["ready"] else "not ready")
        nodes.add_row(
            n["name"],
            n["ip"],
            n["podCidr"],
            "yes" if n["cordoned"] else "no",
            agent,
            ", ".join(p["version"] or "" for p in mine) or "-",
            ", ".join(str(p["pid"]) for p in mine if p["pid"]) or "-",
        )
    console.print(nodes)

    pods = Table("pod", "namespace", "node", "IP", "ready", "mesh", "restarts", "phase", title="pods")
    for p in [*state["proxies"], *state["pods"]]:
        pods.add_row(
            p["name"],
            p["namespace"],
            p["node"],
            p["ip"],
            "yes" if p["ready"] else "no",
            "yes" if p["mesh"] else "no",
            str(p["restarts"]),
            p["phase"] + (f" ({p['message']})" if p["message"] else ""),
        )
    console.print(pods)

    services = Table("service", "namespace", "VIP", "ports", "endpoints", title="services")
    for s in state["services"]:
        ports = ", ".join(f"{p['port']}→{p['targetPort']}" for p in s["ports"])
        services.add_row(s["name"], s["namespace"], s["vip"], ports, ", ".join(s["endpoints"]) or "-")
    console.print(services)

"""A new instance starts at a lower CPU priority and takes its full share when it is ready (issue 14, the upgrade
dip; `PYZTUNNEL_STARTUP_NICE`).

Why: on a busy node an upgrade costs the node's traffic the CPU the incoming proxy spends starting (imports,
certificates, config, listeners: ~0.5 CPU-s in Python), taken from the proxy that still carries the traffic and from
the apps. Started with a higher nice value, that work waits for idle CPU instead; once ready (it is about to take the
node's connections) it returns to the priority it was started with. Lowering the nice value back needs CAP_SYS_NICE
(or RLIMIT_NICE): without it the proxy does not lower its priority at all, since it would stay low for good (a node
proxy must not lose CPU to the pods it serves). 0 (the default): ztunnel's behaviour, nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource

_log = logging.getLogger("pyztunnel.proxy.app")

CAP_SYS_NICE = 23


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_raise_to(nice: int) -> bool:
    """Whether this process may set its nice value back down to `nice` (setpriority(2): CAP_SYS_NICE, or the soft
    RLIMIT_NICE, whose ceiling is 20 - rlim_cur)."""
    if _effective_caps() >> CAP_SYS_NICE & 1:
        return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - soft <= nice


class StartupPriority:
    """Lowered at start (`lower`), restored once (`restore`)."""

    def __init__(self, increment: int) -> None:
        self.original = os.getpriority(os.PRIO_PROCESS, 0)
        self.lowered = False
        if increment <= 0:
            return
        if not can_raise_to(self.original):
            _log.info(
                "not starting at a lower CPU priority: it could not be restored (no CAP_SYS_NICE)",
                extra={"fields": {"nice": increment}},
            )
            return
        os.setpriority(os.PRIO_PROCESS, 0, min(19, self.original + increment))
        self.lowered = True

    def restore(self) -> None:
        if not self.lowered:
            return
        self.lowered = False
        # A nice value is per thread on Linux, and threads started meanwhile (the executor's, gRPC's) inherited ours.
        try:
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), self.original)
        except OSError as exc:
            _log.warning("could not restore the CPU priority", extra={"fields": {"error": str(exc)}})
            return
        _log.info("ready: back to full CPU priority", extra={"fields": {"nice": self.original}})

"""Fault injection for the handover's fault tests (docs/lifecycle.md, "What a crash loses"): a proxy SIGKILLs itself
when it reaches one named phase of the handover, so a test can kill the old or the new instance at exactly that
point instead of racing it from outside.

Off unless `PYZTUNNEL_FAULT` names a phase. With `PYZTUNNEL_FAULT_MARKER` the fault fires once: the first process to
create the marker file dies, every later one (the kubelet's restart of it, the next instance with the same template)
runs on. A real SIGKILL (not an exit): no handler, no flush, the kernel closes the fds, as in a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from pyztunnel.errors import UserError

_log = logging.getLogger("pyztunnel.lifecycle.faults")

# The new instance (it takes) ...
NEW_PHASES = {
    "new-before-handoff": "before it connects to the handoff socket for the first pod's listeners",
    "new-listeners-received": "after it received a pod's listeners, before it accepts on them and confirms",
    "new-confirmed": "after the old instance released a pod's listeners to it",
    "new-registered": "after it registered to take connections, before it reports ready",
    "new-migration-batch": "after it received the first batch of connections, before it answers",
    "new-stream-resume": "when it begins to resume a migrated HBONE stream",
}
# ... and the old one (it gives).
OLD_PHASES = {
    "old-handoff-connected": "when a new instance connects to its handoff socket, before it answers",
    "old-listeners-sent": "after it sent a pod's listeners, before the new instance confirms",
    "old-released": "after it released a pod's listeners",
    "old-migration-batch": "after it sent the first batch of connections, before the answer",
    "old-committed": "after it committed the first batch (the new instance resumes them)",
}
PHASES = {**NEW_PHASES, **OLD_PHASES}


class _Faults:
    phase = ""
    marker: Path | None = None


_armed = _Faults()


def configure(phase: str, marker: Path | None) -> None:
    """Arm one phase (the proxy's settings); "" disarms. Raises UserError for an unknown phase."""
    if phase and phase not in PHASES:
        raise UserError(f"PYZTUNNEL_FAULT: unknown phase {phase!r}; one of {', '.join(sorted(PHASES))}")
    _armed.phase, _armed.marker = phase, marker


def reached(phase: str) -> None:
    """Called by the handover at `phase`: dies here if this is the armed phase (and its marker is still free)."""
    if phase != _armed.phase:
        return
    marker = _armed.marker
    if marker is not None:
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return  # fired already
    _log.warning("fault injected: killing this process", extra={"fields": {"phase": phase}})
    with contextlib.suppress(Exception):
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

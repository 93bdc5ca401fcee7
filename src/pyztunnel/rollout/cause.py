"""Why a proxy is not Ready, in one line, from what any cluster can tell: its last exit, its restarts, the reason it
waits, and its own last error line from its log (ztunnel logs `<time> error <target> <message>`)."""

from __future__ import annotations


def last_error_line(log: str) -> str:
    """The last line whose level word says error (or a panic/traceback), else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        words = line.lower().split()
        if "error" in words[:4] or line.lower().startswith(("error", "panic", "traceback")):
            return line[:300]
    return lines[-1][:300] if lines else ""


def describe(last_exit: str, restarts: int, waiting: str, log: str) -> str:
    parts = [p for p in (last_exit, f"{restarts} restart{'s' if restarts != 1 else ''}", waiting) if p]
    line = last_error_line(log)
    text = ", ".join(parts)
    return f"{text}; its log says: {line}" if line else f"{text}; nothing in its log"

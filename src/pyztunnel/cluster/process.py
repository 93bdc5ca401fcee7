"""Supervised processes: spawned inside a network namespace, logged to their own file, restarted with backoff.

Each process runs in its own session (process group), so SIGTERM/SIGKILL reach its children too (nginx workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pyztunnel.aio import cancel_and_wait, spawn

_log = logging.getLogger("pyztunnel.cluster.process")

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0  # a process that ran this long restarts with the first backoff again
CRASH_LOOP_RESTARTS = 5  # `cluster up` gives up on a process that exited this often without becoming ready


def backoff(failures: int) -> float:
    """Delay before restart number `failures` (1-based): 0.2 s doubling up to 10 s."""
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1)))


class Supervised:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: str | None,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        on_change: Callable[[], object] = lambda: None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.netns = netns
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.on_change = on_change
        self.restarts = 0
        self.pid: int | None = None
        self.started_at: float | None = None
        self.last_exit: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.started = asyncio.Event()  # set while a process is running
        self.failed_to_start: str | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def start(self) -> None:
        self._task = spawn(self._loop(), f"supervise-{self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        argv = self.argv if self.netns is None else ["ip", "netns", "exec", self.netns, *self.argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self._proc, self.pid = proc, proc.pid  # before any await: stop() must find it
        return proc

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                proc = await self._spawn()
            except OSError as exc:
                self.failed_to_start = f"cannot start {self.argv[0]}: {exc.strerror}"
                _log.error("%s: %s", self.name, self.failed_to_start)
                failures += 1
                await asyncio.sleep(backoff(failures))  # restart backoff, not synchronisation
                continue
            self._proc, self.pid, self.started_at = proc, proc.pid, time.time()
            self.failed_to_start = None
            self.started.set()
            self.on_change()
            code = await proc.wait()
            self.started.clear()
            self.last_exit = code
            if self.stopping:
                break
            ran = time.time() - (self.started_at or time.time())
            failures = 1 if ran >= STABLE_AFTER else failures + 1
            self.restarts += 1
            _log.warning("%s exited with %s after %.1fs; restart %d", self.name, code, ran, self.restarts)
            self.on_change()
            await asyncio.sleep(backoff(failures))  # restart backoff, not synchronisation

    def signal(self, sig: int) -> None:
        if self.pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; no restart afterwards. Returns the exit code."""
        self._stopping = True
        # The supervising loop goes first: a process it was just spawning is then in `_proc` (`_spawn` sets it
        # before it returns), so none is started behind our back or left unsignalled.
        if self._task is not None:
            await cancel_and_wait(self._task)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                self.signal(signal.SIGKILL)
                await proc.wait()
        # The group may hold children that outlived the leader (e.g. nginx workers).
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self.started.clear()
        return proc.returncode if proc is not None else None


def pyztunnel_argv(argv: list[str]) -> list[str]:
    """`pyztunnel …` runs this installation's pyztunnel, whatever PATH says."""
    if argv and argv[0] == "pyztunnel":
        return [sys.executable, "-m", "pyztunnel", *argv[1:]]
    return argv


def tail(path: Path, lines: int = 2, width: int = 240) -> str:
    """The last lines of a process's log, for the one line that says why it did not start."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"no log at {path}"
    if not text:
        return f"its log {path} is empty"
    shown = [line if len(line) <= width else line[: width - 1] + "…" for line in text[-lines:]]
    return f"last lines of {path}: " + " | ".join(shown)

"""A small process supervisor for the embedded appliance (``liveupdate demo``).

Each child runs in its own session (terminal signals reach only the supervisor, which stops
the children in order) with its output in a log file, and gets SIGTERM from the kernel if the
supervisor itself dies (PR_SET_PDEATHSIG), so even a killed demo leaves no orphans. A child that
exits is restarted after a back-off; stopping sends SIGTERM to every child, waits, then kills
whatever is left of their process groups (their own children included).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0  # monotonic time of the next (re)start after a crash
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def reap(self, deadline: float) -> None:
        """Wait for the child until ``deadline``, then SIGKILL what is left of its process
        group (the child's own children included)."""
        proc = self.process
        if proc is None:
            return
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", self.name)
        _kill_group(proc.pid)
        proc.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty: nothing left


class Supervisor:
    def __init__(self, backoff_s: float = 2.0, max_backoff_s: float = 30.0):
        self.children: list[Child] = []
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def add(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        return child

    def poll(self, report=print) -> None:
        """Restart children that exited (a child that lived a minute starts a fresh back-off)."""
        now = time.monotonic()
        for child in self.children:
            if child.alive():
                continue
            if child.next_start == 0.0:
                code = child.process.returncode if child.process else None
                lived = now - child.started_at
                if lived > 60:
                    child.restarts = 0
                delay = min(self.backoff_s * 2**child.restarts, self.max_backoff_s)
                report(f"{child.name} exited ({code}); restarting in {delay:.0f} s. Its log:")
                report(child.tail())
                child.next_start = now + delay
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every child at once (each stops its own children), then reap them all
        within one shared deadline."""
        for child in reversed(self.children):
            child.terminate()
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            child.reap(deadline)

"""The demo's process supervisor: restarts a child that died, and stopping leaves nothing
behind, not even a grandchild that ignores SIGTERM."""

from __future__ import annotations

import os
import sys
import time

from controlplane.supervisor import Child, Supervisor


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_dead_child_is_restarted_after_a_backoff(tmp_path):
    supervisor = Supervisor(backoff_s=0.2)
    child = supervisor.add(
        Child("short", [sys.executable, "-c", "print('ran')"], dict(os.environ), tmp_path / "s.log")
    )
    reports: list[str] = []

    def restarted() -> bool:
        supervisor.poll(report=reports.append)
        return child.restarts >= 2

    try:
        assert wait_for(restarted)
    finally:
        supervisor.stop(timeout_s=5)
    assert "short exited (0)" in reports[0] and "ran" in reports[1]
    assert (tmp_path / "s.log").read_text().count("ran") >= 2


def test_stop_kills_grandchildren_that_ignore_sigterm(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # The child starts a grandchild that ignores SIGTERM, then waits for it.
    script = (
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "g.wait()\n"
    )
    supervisor = Supervisor()
    child = supervisor.add(
        Child("parent", [sys.executable, "-c", script], dict(os.environ), tmp_path / "p.log")
    )
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    grandchild = int(pid_file.read_text())
    assert alive(grandchild)
    started = time.monotonic()
    supervisor.stop(timeout_s=3)
    assert time.monotonic() - started < 10
    assert child.process.returncode is not None
    assert wait_for(lambda: not alive(grandchild), 5), "the grandchild survived"

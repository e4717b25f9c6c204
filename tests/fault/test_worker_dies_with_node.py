"""Issue 17, failure 14: kill -9 of ``liveupdate node run`` must not leave its Celery worker
running (each crash added a consumer of the node's queue). The worker gets the node's pid and
dies with it: a parent-death signal from the kernel, and a thread watching the parent pid where
that signal is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests import services


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live child of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and not gone(int(entry.name)):
            found.append((int(entry.name), cmdline))
    return found


def wait_gone(pid: int, timeout: float) -> float:
    """Seconds until ``pid`` is gone; fails after ``timeout``."""
    start = time.monotonic()
    services.wait_until(lambda: gone(pid), timeout, f"process {pid} to exit", 0.05)
    return time.monotonic() - start


def test_kill_9_of_the_node_takes_its_celery_worker_down(redis_url, tmp_path):
    name = f"orphan-{uuid.uuid4().hex[:6]}"
    log_path = tmp_path / "node.log"
    command = [sys.executable, "-m", "controlplane.cli", "node", "run", "--name", name]
    command += ["--replay", "synthetic", "--qps", "5", "--no-trainer", "--no-pin"]
    node = subprocess.Popen(
        command,
        cwd=services.ROOT,
        env=services.node_env(redis_url, LIVEUPDATE_DATA_DIR=str(tmp_path)),
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the clean-up below can reach a surviving worker
    )
    try:

        def worker_ready() -> bool:
            assert node.poll() is None, log_path.read_text()[-3000:]
            return " ready." in log_path.read_text()  # celery's "celery@<name> ready."

        services.wait_until(worker_ready, 120, f"the node's celery worker ({log_path})", 0.3)
        workers = [pid for pid, cmd in children(node.pid) if "celery" in cmd]
        assert len(workers) == 1, children(node.pid)
        os.kill(node.pid, signal.SIGKILL)
        node.wait(timeout=10)
        assert wait_gone(workers[0], 10) < 10
        assert "Warm shutdown" in log_path.read_text()  # SIGTERM: tasks acked, queue left
    finally:
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait(timeout=10)


ARMED = """
import ctypes, signal
from nodeworker.celery_app import _set_parent_death_signal
assert _set_parent_death_signal(signal.SIGTERM)
got = ctypes.c_int(0)
assert ctypes.CDLL(None).prctl(2, ctypes.byref(got), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
print(got.value)
"""


def test_the_parent_death_signal_is_armed(tmp_path):
    env = services.node_env(
        "redis://127.0.0.1:1/0", LIVEUPDATE_DATA_DIR=str(tmp_path), NODE_NAME="orphan-armed"
    )
    armed = subprocess.run(
        [sys.executable, "-c", ARMED], cwd=services.ROOT, env=env, capture_output=True, timeout=60
    )
    assert armed.returncode == 0, armed.stderr.decode()[-2000:]
    assert int(armed.stdout) == signal.SIGTERM


# A parent that starts the child below, says its pid and waits to be killed.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
child.wait()
"""

# The fallback alone: no parent-death signal armed, only the thread watching the parent pid.
CHILD = """
import os, threading, time
from nodeworker.celery_app import _watch_parent
threading.Thread(target=_watch_parent, args=(os.getppid(), False, 0.1, 30), daemon=True).start()
print("watching", flush=True)
time.sleep(120)
"""


def test_without_the_kernel_signal_the_parent_watch_stops_the_worker(tmp_path):
    env = services.node_env(
        "redis://127.0.0.1:1/0", LIVEUPDATE_DATA_DIR=str(tmp_path), NODE_NAME="orphan-watch"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD],
        cwd=services.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline() == b"watching\n"  # the child shares the pipe
        assert not gone(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone(child, 5) < 5  # SIGTERM from its own watch thread
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

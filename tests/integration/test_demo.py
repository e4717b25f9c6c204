"""`liveupdate demo` end to end: the embedded appliance starts with no servers, both demo nodes
report telemetry a logged-in user sees through the API, a cluster syncs rows to the baseline and
another rebases the LiveUpdate node (rows and MLPs), the base checkpoint is registered for
rebases, a short experiment run lands on the experiments page in the background, and SIGINT
stops every process it started (none left, whoever its parent is by then)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.services import ROOT, free_port

NODES = ("edge-baseline", "edge-live")


def processes_with(data_dir: Path) -> list[int]:
    """Live processes whose environment names ``data_dir`` (children and grandchildren alike)."""
    marker = f"LIVEUPDATE_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue  # exited meanwhile, or not ours
    return found


def login(base: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}accounts/login/", timeout=10).raise_for_status()
    reply = session.post(
        f"{base}accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": f"{base}accounts/login/"},
        timeout=10,
    )
    reply.raise_for_status()
    assert session.get(f"{base}api/me/", timeout=10).json()["username"] == username
    return session


def listed(session: requests.Session, url: str) -> list[dict]:
    reply = session.get(url, timeout=10)
    reply.raise_for_status()
    body = reply.json()
    return body["results"] if isinstance(body, dict) else body


def read_line(proc: subprocess.Popen, pattern: str, deadline: float) -> re.Match:
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    pytest.fail(f"no line matching {pattern!r}; the demo printed:\n{''.join(seen)}")


@pytest.mark.timeout(600)
def test_demo_runs_both_nodes_and_stops_every_process(tmp_path):
    data_dir = (tmp_path / "var").resolve()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.pop("SECRET_KEY", None)  # the embedded mode makes its own, as for a newcomer
    env["LIVEUPDATE_DATA_DIR"] = str(data_dir)
    command = [sys.executable, "-m", "controlplane.cli", "demo", "--port", str(port)]
    command += ["--qps", "20", "--pretrain-events", "1000", "--sync-period", "10"]
    command += ["--rebase-period", "20", "--transfer", "2"]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        found = read_line(
            proc, r"dashboard: (http://\S+)\s+\(login: (\S+) / (\S+)\)", time.monotonic() + 180
        )
        base, username, password = found.groups()
        ready = time.monotonic()
        session = login(base, username, password)
        latest = {}
        while time.monotonic() < ready + 90:
            reply = session.get(f"{base}api/nodes/", timeout=10)
            reply.raise_for_status()
            body = reply.json()
            rows = body["results"] if isinstance(body, dict) else body
            latest = {n["name"]: n["latest"] for n in rows if n["name"] in NODES}
            if len(latest) == 2 and all(s and s.get("auc") is not None for s in latest.values()):
                break
            time.sleep(2)
        waited = time.monotonic() - ready
        assert len(latest) == 2 and all(s and s.get("auc") is not None for s in latest.values()), (
            f"after {waited:.0f} s: {latest}"
        )
        for name, sample in latest.items():
            assert 0 <= sample["auc"] <= 1 and sample["qps"] > 0, (name, sample)
            assert sample["p99_ms"] is not None and sample["memory_overhead_pct"] >= 0, sample
        deadline = time.monotonic() + 60
        for cluster, line in (("cluster", "delta sync 1:"), ("cluster-live", "delta rebase 1:")):
            cluster_log = data_dir / "logs" / f"{cluster}.log"
            while line not in cluster_log.read_text() and time.monotonic() < deadline:
                time.sleep(2)
            assert line in cluster_log.read_text(), cluster_log.read_text()[-2000:]
        rebased = (data_dir / "logs" / "cluster-live.log").read_text()  # announced, carried
        assert re.search(r"delta rebase 1:.*; carry: carried \(\d+ rows\)", rebased), rebased
        children = processes_with(data_dir)
        assert len(children) >= 8, children  # web, celery (+beat), 2 nodes (+workers), 2 clusters
        base_file = data_dir / "demo-base.ckpt"
        checkpoints = listed(session, f"{base}api/checkpoints/")
        assert [(c["name"], c["location"], c["checksum"]) for c in checkpoints] == [
            (
                "demo-base",
                str(base_file),
                "sha256:" + hashlib.sha256(base_file.read_bytes()).hexdigest(),
            )
        ]
        deadline = time.monotonic() + 300  # a minute of one core, at the lowest priority
        while (
            not (runs := listed(session, f"{base}api/experiments/")) and time.monotonic() < deadline
        ):
            time.sleep(3)
        assert [r["name"] for r in runs] == ["demo: synthetic drifting stream, 60k events"], (
            data_dir / "logs" / "experiment.log"
        ).read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "Stopped." in out
    assert processes_with(data_dir) == [], "processes left behind"

"""``liveupdate serve`` with several worker processes: they share one port, a live event raised
in any of them reaches every socket exactly once (the fleet batch of each process), and SIGTERM
stops them all."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import requests
from websockets.sync.client import connect

from tests import services
from tests.integration.cp_support import sample


def _workers(pid: int) -> list[int]:
    """The server's worker processes (multiprocessing spawn children, not its resource tracker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_two_workers_share_the_port_deliver_each_event_once_and_stop_on_sigterm(
    fresh_postgres_db, redis_url, tmp_path
):
    env = services.appliance_env(tmp_path, fresh_postgres_db, redis_url)
    app = services.Appliance(env, tmp_path / "server.log", workers=2).start()
    try:
        workers = _workers(app.process.pid)
        assert len(workers) == 2, workers
        token = services.manage(env, "create_node", "edge-mp").strip().splitlines()[-1]
        session = app.login()
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
        url = app.url.replace("http://", "ws://") + "/ws/fleet/"
        with connect(url, additional_headers={"Cookie": cookie, "Origin": app.url}) as ws:
            for seq in range(30):  # a new connection each: the kernel spreads them over both
                response = requests.post(
                    f"{app.url}/api/telemetry/ingest/",
                    json={"node": "edge-mp", "samples": [sample(seq)]},
                    headers={"Authorization": f"Node {token}", "Connection": "close"},
                    timeout=10,
                )
                assert response.status_code == 200, response.text
            seqs, deadline = [], time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    event = json.loads(ws.recv(timeout=1))
                except TimeoutError:
                    if len(seqs) >= 30:
                        break
                    continue
                assert event["kind"] != "resync"
                if event["kind"] == "telemetry":
                    seqs.append(event["sample"]["seq"])
        assert sorted(seqs) == list(range(30))
    finally:
        app.stop()
    assert app.process.poll() is not None
    time.sleep(0.5)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], (
        "a worker outlived SIGTERM"
    )


def test_several_workers_are_refused_without_a_shared_channel_layer(tmp_path):
    env = services.appliance_env(tmp_path, None, None)
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "serve", "--workers", "2"],
        env=env,
        cwd=services.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "set REDIS_URL" in result.stderr


def test_access_log_can_be_turned_off_and_errors_are_still_logged(
    fresh_postgres_db, redis_url, tmp_path
):
    env = services.appliance_env(tmp_path, fresh_postgres_db, redis_url)
    env["LIVEUPDATE_ACCESS_LOG"] = "false"
    log = tmp_path / "server.log"
    with services.Appliance(env, log) as app:
        assert requests.get(f"{app.url}/api/health/", timeout=10).status_code == 200
        assert requests.get(f"{app.url}/no-such-page/", timeout=10).status_code == 404
        services.wait_until(lambda: "Not Found: /no-such-page/" in log.read_text(), 10, "the log")
    assert '"GET /api/health/' not in log.read_text()

"""The embedded default as `liveupdate demo` runs it (SQLite, in-memory channel layer, filesystem
broker; the web server and a Celery worker with beat as separate processes) in Debian's Chromium:
events the worker raises reach an open page live, and the node charts carry their annotations."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime

import pytest
from playwright.sync_api import expect, sync_playwright

from tests import services
from tests.browser.dashboard_support import Seeder
from tests.browser.test_dashboard import WIDE, assert_clean, logged_in, settle


@pytest.fixture(scope="module")
def embedded(chromium_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embedded")
    env = services.appliance_env(tmp, None, None)
    # The watchdog every second, a node down after one silent second: the worker raises an
    # alert within seconds of a node's last sample.
    env |= {"LIVEUPDATE_SLA_INTERVAL_S": "1", "LIVEUPDATE_NODE_DOWN_S": "1"}
    with services.Appliance(env, tmp / "server.log") as app:
        worker = [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "-B"]
        worker += ["--pool", "solo", "-Q", "controlplane", "-n", "controlplane@%h"]
        worker += ["--loglevel", "INFO", "-s", str(tmp / "celerybeat-schedule")]
        with (tmp / "celery.log").open("w") as log:
            celery = subprocess.Popen(
                worker, env=env, cwd=services.ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=chromium_path, args=services.CHROMIUM_ARGS
                )
                yield {"app": app, "seed": Seeder(app), "browser": browser, "tmp": tmp}
                browser.close()
        finally:
            celery.terminate()
            celery.wait(timeout=30)


def test_an_alert_raised_by_the_worker_reaches_an_open_fleet_page_within_two_seconds(
    embedded, artifacts_dir
):
    seed = embedded["seed"]
    seed.node("quiet-1", None, {})
    page = logged_in(embedded, WIDE)
    badge = page.locator('tr[data-node="quiet-1"] td[data-label=Status] .badge')
    try:
        settle(page)
        seed.ingest("quiet-1", [seed.sample("quiet-1", time.time())])
        expect(badge).to_have_text("online")
        # The node falls silent: the worker's watchdog marks it down and raises node_down.
        seen_ms = page.wait_for_function(
            "() => document.querySelector('#alerts li a[href=\"/nodes/quiet-1/\"]')"
            " ? Date.now() : null",
            timeout=30_000,
        ).json_value()
        alerts = seed.call("GET", "/api/alerts/?open=true&node=quiet-1", 200)["results"]
        raised = [a for a in alerts if a["node"] == "quiet-1" and a["kind"] == "node_down"]
        assert len(raised) == 1, alerts
        delay_s = seen_ms / 1000 - datetime.fromisoformat(raised[0]["raised_at"]).timestamp()
        assert delay_s <= 2.0, f"the alert reached the page {delay_s:.2f} s after it was raised"
        expect(badge).to_have_text("down")
        page.screenshot(path=str(artifacts_dir / "fleet-embedded-worker-alert.png"))
        assert_clean(page)
    finally:
        page.context.close()
    log = (embedded["tmp"] / "celery.log").read_text()
    assert "controlplane.watchdog" in log and "relaying" not in log  # no failed relay

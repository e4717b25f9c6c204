"""The embedded default as `liveupdate demo` runs it (SQLite, in-memory channel layer, filesystem
broker; the web server and a Celery worker with beat as separate processes) in Debian's Chromium:
events the worker raises reach an open page live, and the node charts carry their annotations."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime

import pytest
from playwright.sync_api import expect

from tests import services
from tests.browser.dashboard_support import Seeder, periodically
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
            with services.chromium(chromium_path) as browser:
                yield {"app": app, "seed": Seeder(app), "browser": browser, "tmp": tmp}
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

    def report() -> None:
        seed.ingest("quiet-1", [seed.sample("quiet-1", time.time())])

    try:
        settle(page)
        # The node reports every 0.2 s until the page shows it online: one sample would leave it
        # online for about the one second the watchdog allows, shorter than the page's polling.
        with periodically(report, 0.2):
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


TIME_CHARTS = ("auc", "p99", "qps", "logloss", "memory", "rank", "trainer", "losses")


def chart_marks(page, chart: str) -> list[list]:
    """[time (s), line colour, marker glyph, hover text] of each annotation of a chart."""
    return page.evaluate(
        "(id) => { const l = document.getElementById(id).layout || {};"
        " const notes = (l.annotations || []).filter(a => a.hovertext);"
        " return (l.shapes || []).map((s, i) => [new Date(s.x0).getTime() / 1000, s.line.color,"
        " notes[i] && notes[i].text, notes[i] && notes[i].hovertext]); }",
        f"chart-{chart}",
    )


def test_every_node_chart_is_annotated_and_new_events_add_a_mark(embedded, artifacts_dir):
    seed = embedded["seed"]
    seed.node("marked-1", seed.policy("marked", sla_p99_ms=40.0)["id"], {})
    now = time.time()
    samples = [seed.sample("marked-1", now - 120 + i) for i in range(120)]
    samples[10]["events"] = [
        {"kind": "policy", "ts": samples[10]["ts"], "detail": {"name": "marked", "version": 1}}
    ]
    samples[40]["events"] = [
        {"kind": "snapshot", "ts": samples[40]["ts"], "detail": {"snapshot": "s-0001"}}
    ]
    override = {"name": "marked", "version": 1, "overrides": {"max_trainer_duty": 0.05}}
    samples[70]["events"] = [{"kind": "policy", "ts": samples[70]["ts"], "detail": override}]
    seed.ingest("marked-1", samples)
    page = logged_in(embedded, WIDE)
    try:
        page.goto(embedded["app"].url + "/nodes/marked-1/")
        settle(page)
        expect(page.locator("#range-info")).to_contain_text("120 points", timeout=15_000)
        expected = [samples[i]["ts"] for i in (10, 40, 70)]
        for chart in TIME_CHARTS:
            # the node's events (its alerts are marked too: the worker marks it down meanwhile)
            marks = [m for m in chart_marks(page, chart) if m[2] != "!"]
            assert [m[2] for m in marks] == ["P", "◆", "W"], (chart, marks)
            assert [m[0] for m in marks] == pytest.approx(expected, abs=0.002), chart
        hover = [m[3] for m in chart_marks(page, "p99") if m[2] != "!"]
        assert "policy applied" in hover[0] and "marked v1 applied" in hover[0]
        assert "watchdog override" in hover[2] and "max_trainer_duty 0.05" in hover[2]
        # A rebase reported now, and an alert raised now, reach every chart live.
        rebase = seed.sample("marked-1", time.time())
        rebase["events"] = [
            {"kind": "rebase", "ts": rebase["ts"], "detail": {"checkpoint": "/data/base.ckpt"}}
        ]
        seed.ingest("marked-1", [rebase])
        page.wait_for_function(
            "() => (document.getElementById('chart-auc').layout.annotations || [])"
            ".some(a => a.text === 'R' && a.hovertext.includes('onto base.ckpt'))",
            timeout=2_000,
        )
        # The node's silence since its history: the worker's node_down alert is marked as well.
        page.wait_for_function(
            "() => (document.getElementById('chart-p99').layout.annotations || [])"
            ".some(a => a.text === '!' && a.hovertext.includes('node down'))",
            timeout=15_000,
        )
        page.locator("#chart-p99").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "node-annotations.png"), full_page=True)
        assert_clean(page)
    finally:
        page.context.close()


def test_the_fleet_ab_charts_mark_the_baselines_syncs(embedded):
    seed = embedded["seed"]
    seed.node("synced-1", seed.policy("synced", mode="delta_sync")["id"], {})
    now = time.time()
    samples = [seed.sample("synced-1", now - 60 + i, freshness_lag_s=None) for i in range(60)]
    sync = {"tables": {"user": 12, "item": 3}}
    samples[30]["events"] = [{"kind": "sync", "ts": samples[30]["ts"], "detail": sync}]
    seed.ingest("synced-1", samples)
    page = logged_in(embedded, WIDE)
    try:
        settle(page)
        page.select_option("#ab-base", "synced-1")
        for chart in ("ab-gap", "ab-fresh"):
            page.wait_for_function(
                "(id) => ((document.getElementById(id).layout || {}).annotations || [])"
                ".some(a => a.text === 'S' && a.hovertext.includes('delta sync landed on synced-1')"
                " && a.hovertext.includes('15 rows landed'))",
                arg=chart,
                timeout=15_000,
            )
        assert_clean(page)
    finally:
        page.context.close()

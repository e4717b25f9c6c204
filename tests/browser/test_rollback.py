"""Rollback in the dashboard, in Chromium, against a served control plane and a real node (its
runtime in this process, its Celery worker on ``node.<name>``): the node page lists the node's
snapshots and restores one in one click; an induced AUC drop is rolled back by the watchdog's
beat task and shown on the open page (the action, and the node's restore event)."""

from __future__ import annotations

import time
import uuid

import pytest
from playwright.sync_api import expect

from tests import services
from tests.browser.dashboard_support import Seeder, periodically
from tests.browser.test_dashboard import WIDE, assert_clean, logged_in, settle
from tests.integration.node_support import corrupt_base, real_node, trained_snapshot
from tests.integration.test_node_runtime import serve_and_label
from tests.integration.test_node_snapshots import base_is_checkpoint_plus_patch


@pytest.fixture(scope="module")
def plane(postgres_url, redis_url, chromium_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollback")
    with services.appliance_on_new_database(postgres_url, redis_url, tmp) as app:
        with services.chromium(chromium_path) as browser:
            yield {"app": app, "seed": Seeder(app), "browser": browser, "env": app.env}


def registered(plane, **policy) -> str:
    name = f"rb-{uuid.uuid4().hex[:6]}"
    created = plane["seed"].policy(f"p-{name}", sla_p99_ms=5000.0, **policy)
    plane["seed"].node(name, created["id"], {})
    return name


def report(plane, name: str, runtime) -> None:
    """One second of the real node's telemetry (and its events), through the plane's ingest."""
    seed = plane["seed"]
    sample = runtime.telemetry_snapshot().to_sample(seed.seq[name], time.time())
    seed.seq[name] += 1
    seed.ingest(name, [sample])


def test_one_click_restore_of_a_snapshot(plane, redis_url, tmp_path, artifacts_dir):
    name = registered(plane)
    with real_node(name, tmp_path, redis_url) as (runtime, traffic):
        older = trained_snapshot(runtime, traffic, 300)["snapshot"]
        newer = trained_snapshot(runtime, traffic, runtime.metrics.trained_samples + 100)
        page = logged_in(plane, WIDE)
        try:
            page.goto(f"{plane['app'].url}/nodes/{name}/")
            settle(page)
            expect(page.locator("#snapshots-table")).to_have_count(0)  # not asked on page load
            page.click("#snapshots-refresh")
            rows = page.locator("#snapshots-table tbody tr")
            expect(rows).to_have_count(2, timeout=60_000)
            expect(rows.first).to_have_attribute("data-snapshot", newer["snapshot"])
            row = page.locator(f"#snapshots-table tr[data-snapshot={older}]")
            expect(row.locator("td[data-label='AUC then']")).not_to_have_text("–")
            row.locator("button[data-restore]").click()
            expect(page.locator("#confirm-dialog")).to_contain_text(f"Snapshot {older}")
            page.click("#confirm-ok")
            item = page.locator("#action-log li[data-state]", has_text="restore snapshot")
            expect(item).to_have_attribute("data-state", "succeeded", timeout=60_000)
            expect(item).to_contain_text(f"restored {older}")
            assert base_is_checkpoint_plus_patch(runtime, older)
            page.screenshot(path=str(artifacts_dir / "node-snapshots.png"), full_page=True)
            assert_clean(page)
        finally:
            page.context.close()


def test_automatic_rollback_after_an_induced_auc_drop(plane, redis_url, tmp_path, artifacts_dir):
    name = registered(plane)
    with real_node(name, tmp_path, redis_url) as (runtime, traffic):
        good = trained_snapshot(runtime, traffic, 500)
        floor = round(good["auc"] - 0.03, 4)
        assert floor > 0.5, f"the node learnt too little to judge a drop: AUC {good['auc']}"
        policy = plane["seed"].call("GET", f"/api/nodes/{name}/", 200)["policy"]
        plane["seed"].call(
            "PATCH",
            f"/api/policies/{policy}/",
            200,
            json={"auc_floor": floor, "rollback_after_intervals": 2},
        )
        plane["seed"].call("POST", f"/api/nodes/{name}/apply_policy/", 202, json={})
        page = logged_in(plane, WIDE)
        try:
            page.goto(f"{plane['app'].url}/nodes/{name}/")
            settle(page)
            corrupt_base(runtime)  # the induced drop

            def dropped() -> bool:
                serve_and_label(runtime, traffic, 40)
                report(plane, name, runtime)
                auc = runtime.metrics.window(time.time())["auc"]
                return auc is not None and auc < floor - 0.01

            services.wait_until(dropped, 120, f"the node's AUC under {floor}", interval=0.2)
            for _ in range(3):  # two full watchdog intervals of 1 s under the floor
                time.sleep(1.0)
                report(plane, name, runtime)
            env = {**plane["env"], "LIVEUPDATE_SLA_INTERVAL_S": "1"}
            # the node reports on while the task starts
            with periodically(lambda: report(plane, name, runtime), 0.3):
                out = services.manage(
                    env, "shell", "-c", "from controlplane.tasks import watchdog; print(watchdog())"
                )
            assert f"'rolled_back': ['{name}']" in out
            item = page.locator("#action-log li[data-state]", has_text="restore snapshot")
            expect(item).to_have_count(1, timeout=10_000)
            expect(item).to_contain_text("watchdog")
            expect(item).to_have_attribute("data-state", "succeeded", timeout=60_000)
            expect(item).to_contain_text(f"restored {good['snapshot']}")
            assert base_is_checkpoint_plus_patch(runtime, good["snapshot"])
            report(plane, name, runtime)  # the node's restore event reaches the page
            event = page.locator("#events-table tr[data-kind=snapshot]").first
            expect(event).to_contain_text(f"restored {good['snapshot']}", timeout=10_000)
            expect(event).to_contain_text("under")
            alerts = plane["seed"].call("GET", "/api/alerts/", 200)["results"]
            assert "rollback" in {a["kind"] for a in alerts if a["node"] == name}
            page.screenshot(path=str(artifacts_dir / "node-rollback.png"), full_page=True)
            assert_clean(page)
        finally:
            page.context.close()


def test_revert_policy_to_an_earlier_version(plane, artifacts_dir):
    seed = plane["seed"]
    name = f"rev-{uuid.uuid4().hex[:6]}"
    policy = seed.policy(name, sla_p99_ms=30.0)
    seed.call("PATCH", f"/api/policies/{policy['id']}/", 200, json={"sla_p99_ms": 90.0})
    page = logged_in(plane, WIDE)
    try:
        page.goto(f"{plane['app'].url}/policies/")
        settle(page)
        page.click(f"#policy-list button[data-policy='{policy['id']}']")
        expect(page.locator("#history-table tr[data-version='2']")).to_contain_text("current")
        page.click("#history-table button[data-revert='1']")
        expect(page.locator("#confirm-dialog")).to_contain_text(f"Revert {name} to v1?")
        page.click("#confirm-ok")
        expect(page.locator("#save-status")).to_contain_text("as version 3 (the values of v1)")
        expect(page.locator("#f-sla_p99_ms")).to_have_value("30")
        row = page.locator("#history-table tr[data-version='3']")
        expect(row).to_contain_text("reverted to v1")
        expect(row).to_contain_text("sla_p99_ms: 90 → 30")
        stored = seed.call("GET", f"/api/policies/{policy['id']}/", 200)
        assert stored["version"] == 3 and stored["sla_p99_ms"] == 30.0
        page.screenshot(path=str(artifacts_dir / "policy-revert.png"), full_page=True)
        assert_clean(page)
    finally:
        page.context.close()

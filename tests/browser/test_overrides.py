"""Operator intent and the watchdog's overrides kept apart (issue 18, item 1), in Chromium against
a live control plane: the incident round trip (a tight SLA, the watchdog's duty override shown on
the node page and in the policy editor, the SLA restored, the override lifted by itself, the
policy as people left it) and a policy saved without applying, which leaves the node alone.

The watchdog is the real service function, run in a control-plane process of its own (as Celery
beat runs it) with 1 s intervals, on telemetry ingested through the API after each apply."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

from playwright.sync_api import expect

from tests import services
from tests.browser import test_dashboard as dashboard
from tests.browser.test_dashboard import TOPOLOGY, assert_clean, open_policies, settle

# the dashboard tests' live control plane and logged-in pages (an appliance of this module's own)
live, live_page = dashboard.live, dashboard.live_page

INTERVALS = 3  # of 1 s: the watchdog judges the 3 s after an apply


def run_watchdog(env: dict[str, str], now: float) -> dict:
    """One watchdog run at ``now`` (Unix s) in a control-plane process; its report."""
    code = (
        "import dataclasses, json; from datetime import datetime, UTC; "
        "from controlplane.services import watchdog; "
        f"report = watchdog.run(datetime.fromtimestamp({now!r}, UTC)); "
        "print(json.dumps(dataclasses.asdict(report)))"
    )
    watchdog_env = dict(env, LIVEUPDATE_SLA_INTERVAL_S="1", LIVEUPDATE_SLA_INTERVALS=str(INTERVALS))
    return json.loads(services.manage(watchdog_env, "shell", "-c", code).strip().splitlines()[-1])


def judged(live, node: str, p99_ms: float) -> dict:
    """P99 ``p99_ms`` from the node's last apply until 3 whole intervals later, then a watchdog
    run judging them."""
    seed = live["seed"]
    applied = datetime.fromisoformat(seed.call("GET", f"/api/nodes/{node}/", 200)["applied_at"])
    start = applied.timestamp()
    time.sleep(max(0.0, start + INTERVALS + 0.1 - time.time()))
    now = time.time()
    count = int((now - start) / 0.25)
    seed.ingest(
        node, [seed.sample(node, start + 0.1 + 0.25 * i, p99_ms=p99_ms) for i in range(count)]
    )
    return run_watchdog(live["env"], now)


def apply(seed, node: str, policy: dict) -> None:
    seed.call("POST", f"/api/nodes/{node}/apply_policy/", 202, json={"policy": policy["id"]})


def test_incident_round_trip_the_override_comes_and_goes_the_policy_stays(live, live_page):
    seed, suffix = live["seed"], uuid.uuid4().hex[:6]
    node = f"incident-{suffix}"
    policy = seed.policy(f"incident-{suffix}", sla_p99_ms=5.0, max_trainer_duty=1.0)
    seed.node(node, policy["id"], TOPOLOGY)
    apply(seed, node, policy)  # a tight SLA: the node's P99 of 11 ms breaks it

    page = live_page()
    page.goto(f"{live['app'].url}/nodes/{node}/")
    settle(page)
    expect(page.locator("#node-overrides")).to_be_hidden()
    report = judged(live, node, 11.0)
    assert report["raised"] == [f"{node}:sla_violation"]
    assert report["tightened"] == [f"{node}:max_trainer_duty policy -> 0.5"]
    # the node page shows both, as it happens (the watchdog's apply is a live event)
    overrides = page.locator("#node-overrides")
    expect(overrides).to_contain_text("duty 0.5 by the watchdog since", timeout=5_000)
    expect(overrides).to_contain_text("; policy 1")

    editor = open_policies(live_page, live["app"].url)
    editor.click(f"#policy-list button[data-policy='{policy['id']}']")
    expect(editor.locator("#f-max_trainer_duty")).to_have_value("1")  # what people set
    note = editor.locator("#overrides-max_trainer_duty")
    expect(note).to_contain_text(f"{node}: duty 0.5 by the watchdog since")
    # The SLA restored by the operator, saved and applied from the editor.
    editor.fill("#f-sla_p99_ms", "150")
    editor.fill("#f-reason", "incident over")
    editor.click("#save-policy")
    expect(editor.locator("#save-status")).to_have_text(f"Saved {policy['name']} as version 2.")
    editor.click("#select-policy-nodes")
    editor.click("#apply-policy")
    editor.click("#confirm-ok")
    expect(editor.locator(f"#apply-results li[data-node={node}]")).to_contain_text("waiting")
    assert seed.call("GET", f"/api/nodes/{node}/", 200)["applied_policy_version"] == 2
    expect(note).to_contain_text("duty 0.5")  # still in force until P99 has stayed low

    report = judged(live, node, 11.0)
    assert report["resolved"] == [f"{node}:sla_violation"]
    assert report["relaxed"] == [f"{node}:max_trainer_duty 0.5 -> policy"]  # lifted by itself
    expect(overrides).to_be_hidden(timeout=5_000)
    expect(note).to_be_hidden(timeout=5_000)
    got = seed.call("GET", f"/api/nodes/{node}/", 200)
    assert got["overrides"] == [] and got["applied_policy"]["policy"]["max_trainer_duty"] == 1.0
    versions = seed.call("GET", "/api/policy-versions/", 200, params={"policy": policy["id"]})
    assert {v["actor"] for v in versions["results"]} == {"user:operator"}
    assert len(versions["results"]) == 2  # the watchdog wrote no version
    stored = seed.call("GET", f"/api/policies/{policy['id']}/", 200)
    assert (stored["max_trainer_duty"], stored["sla_p99_ms"]) == (1.0, 150.0)
    assert_clean(page)
    assert_clean(editor)


def test_saving_without_applying_leaves_the_node_alone(live, live_page):
    seed, suffix = live["seed"], uuid.uuid4().hex[:6]
    node = f"staged-{suffix}"
    policy = seed.policy(f"staged-{suffix}", sla_p99_ms=5.0, max_trainer_duty=0.8)
    seed.node(node, policy["id"], TOPOLOGY)
    apply(seed, node, policy)

    editor = open_policies(live_page, live["app"].url)
    editor.click(f"#policy-list button[data-policy='{policy['id']}']")
    editor.fill("#f-sla_p99_ms", "500")
    editor.fill("#f-max_trainer_duty", "0.3")
    editor.fill("#f-reason", "staged for tomorrow")
    editor.click("#save-policy")
    expect(editor.locator("#save-status")).to_have_text(f"Saved {policy['name']} as version 2.")
    expect(editor.locator("#apply-nodes")).to_contain_text(
        f"{node} {policy['name']} v2 (not applied)"
    )

    # judged on the applied 5 ms SLA (not the saved 500), and the watchdog's apply carries v1
    report = judged(live, node, 11.0)
    assert report["tightened"] == [f"{node}:max_trainer_duty policy -> 0.4"]
    sent = seed.call("GET", "/api/actions/", 200, params={"node": node, "action": "apply_policy"})
    by_watchdog = [a for a in sent["results"] if a["actor"] == "watchdog"]
    assert len(by_watchdog) == 1 and len(sent["results"]) == 2  # the operator's v1, the watchdog's
    kwargs = by_watchdog[0]["kwargs"]
    assert kwargs["version"] == 1 and kwargs["overrides"] == {"max_trainer_duty": 0.4}
    assert (kwargs["policy"]["sla_p99_ms"], kwargs["policy"]["max_trainer_duty"]) == (5.0, 0.8)
    got = seed.call("GET", f"/api/nodes/{node}/", 200)
    assert (
        got["applied_policy_version"] == 1 and got["applied_policy"]["policy"]["sla_p99_ms"] == 5.0
    )
    assert_clean(editor)

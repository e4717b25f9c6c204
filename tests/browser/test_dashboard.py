"""The operator dashboard in Debian's Chromium against a live control plane (uvicorn, PostgreSQL,
the Redis channel layer and broker): login, the fleet, live node charts fed by telemetry ingested
through the API, the policy editor, node actions confirmed by a real node worker, experiments.
A screenshot of every page lands in test-artifacts/."""

from __future__ import annotations

import json
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from playwright.sync_api import expect

from tests import services
from tests.browser.dashboard_support import Seeder, results_json

WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
TOPOLOGY = {"inference_cpus": [0], "trainer_cpus": [1]}
DELTA_SYNC_SAMPLE = {
    "auc": 0.731,
    "throttle": "paused",
    "trainer_samples_per_s": 0.0,
    "trainer_duty": 0.0,
    "freshness_lag_s": None,
    "memory_overhead_bytes": 0.0,
    "memory_overhead_pct": 0.0,
    "tables": {},
}


@pytest.fixture(scope="module")
def live(postgres_url, redis_url, chromium_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    with services.appliance_on_new_database(postgres_url, redis_url, tmp) as app:
        seed = Seeder(app)
        suffix = uuid.uuid4().hex[:6]
        live_policy = seed.policy(f"live-{suffix}", sla_p99_ms=20.0, memory_budget_pct=2.0)
        base_policy = seed.policy(f"baseline-{suffix}", mode="delta_sync")
        names = {"live": f"edge-{suffix}", "base": f"base-{suffix}", "idle": f"idle-{suffix}"}
        seed.node(names["live"], live_policy["id"], TOPOLOGY)
        seed.node(names["base"], base_policy["id"], TOPOLOGY)
        seed.node(names["idle"], None, {})
        seed.history(names["live"], 300)
        # A delta-sync node as it reports itself: no trainer, no LoRA, no freshness lag.
        seed.history(names["base"], 300, **DELTA_SYNC_SAMPLE)
        with services.chromium(chromium_path) as browser:
            yield {"app": app, "seed": seed, "names": names, "browser": browser, "env": app.env}


@pytest.fixture
def live_page(live):
    """A logged-in page factory; every browser context is closed after the test."""
    contexts = []

    def make(viewport=WIDE):
        page = logged_in(live, viewport)
        contexts.append(page.context)
        return page

    yield make
    for context in contexts:
        context.close()


def watch_problems(page) -> list[str]:
    """Uncaught exceptions, console errors, failed requests and HTTP error replies of a page, as
    they happen (assert_clean checks them). A request aborted because the test navigated away
    (net::ERR_ABORTED) is not a failure."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console: {msg.text} at {msg.location.get('url')}")
            if msg.type == "error"
            else None
        ),
    )

    def failed(request) -> None:
        if request.failure != "net::ERR_ABORTED":
            problems.append(f"failed: {request.method} {request.url} {request.failure}")

    page.on("requestfailed", failed)
    page.on(
        "response",
        lambda r: (
            problems.append(f"HTTP {r.status}: {r.request.method} {r.url}")
            if r.status >= 400
            else None
        ),
    )
    return problems


def assert_clean(page, allowed: tuple[str, ...] = ()) -> None:
    """No problem on the page, except HTTP replies (and Chromium's console line for them) to a
    URL containing one of ``allowed``: the API's intended 400s in tests that send bad input."""

    def expected(problem: str) -> bool:
        intended = problem.startswith("HTTP 4") or "status of 4" in problem
        return intended and any(url in problem for url in allowed)

    # Chromium's console line for an HTTP error names the URL too ("Failed to load resource").
    unexpected = [p for p in page.js_errors if not expected(p)]
    assert unexpected == []


def logged_in(live, viewport=WIDE):
    context = live["browser"].new_context(viewport=viewport)
    page = context.new_page()
    errors = watch_problems(page)
    page.goto(live["app"].url + "/accounts/login/")
    page.fill("#id_username", live["app"].username)
    page.fill("#id_password", services.TEST_PASSWORD)
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_have_text("Fleet")
    page.js_errors = errors
    return page


def settle(page) -> None:
    expect(page.locator("#ws-state")).to_have_attribute("data-state", "open", timeout=10_000)


def chart_values(page, chart: str, trace: int = 0, axis: str = "y"):
    return page.evaluate(
        "([id, i, axis]) => { const d = document.getElementById(id).data;"
        " return d && d[i] ? Array.from(d[i][axis]) : null; }",
        [chart, trace, axis],
    )


def test_login_page_and_fleet_lists_every_node(live, live_page, artifacts_dir):
    page = live["browser"].new_page(viewport=WIDE)
    page.goto(live["app"].url + "/")
    expect(page).to_have_url(f"{live['app'].url}/accounts/login/?next=/")
    page.screenshot(path=str(artifacts_dir / "login.png"))
    page.context.close()

    page = live_page()
    settle(page)
    names = live["names"]
    for name in names.values():
        expect(page.locator(f"#fleet-table tr[data-node={name}]")).to_be_visible()
    row = page.locator(f"tr[data-node={names['live']}]")
    expect(row.locator("td[data-label=Status]")).to_contain_text("online")
    expect(row.locator("td[data-label='P99 vs SLA']")).to_contain_text("/ 20.0 ms")
    expect(row.locator("td[data-label=Rank]")).to_contain_text("user: 6")
    expect(row.locator("td[data-label=Trainer]")).to_contain_text("samples/s")
    expect(page.locator(f"tr[data-node={names['idle']}] td[data-label=Status]")).to_contain_text(
        "registered"
    )
    # A sample ingested now updates the row without a reload.
    seed = live["seed"]
    seed.ingest(names["live"], [seed.sample(names["live"], time.time(), p99_ms=27.5)])
    expect(row.locator("td[data-label='P99 vs SLA'] .gauge")).to_have_class("gauge bad")
    expect(row.locator("td[data-label='P99 vs SLA']")).to_contain_text("27.5 ms / 20.0 ms")
    # An alert raised in another process reaches the open page over the channel layer.
    raise_alert = (
        "from django.utils import timezone; from controlplane.models import Node; "
        "from controlplane.services.alerts import raise_alert; "
        f"raise_alert(Node.objects.get(name={names['live']!r}), 'sla_violation', 'critical', "
        "'P99 27.5 ms over the 20 ms SLA for 3 intervals', {}, timezone.now())"
    )
    services.manage(live["env"], "shell", "-c", raise_alert)
    alert = page.locator("#alerts li.alert")
    expect(alert).to_contain_text("P99 27.5 ms over the 20 ms SLA")
    expect(page.locator("#fleet-summary")).to_contain_text("1 open alert")
    alert.get_by_role("button", name="Acknowledge").click()
    expect(alert).to_contain_text("acknowledged by operator")
    page.screenshot(path=str(artifacts_dir / "fleet.png"), full_page=True)
    page.set_viewport_size(NARROW)
    page.screenshot(path=str(artifacts_dir / "fleet-narrow.png"), full_page=True)
    assert_clean(page)


def test_events_dropped_on_the_way_make_the_fleet_page_reload(live, live_page, redis_url):
    """Numbers 2 and 3 of a sender's fleet messages never arrive: the consumer says resync and
    the page reloads the fleet from the API instead of silently missing them."""
    from asgiref.sync import async_to_sync
    from channels_redis.core import RedisChannelLayer

    page = live_page()
    settle(page)
    expect(page.locator(f"#fleet-table tr[data-node={live['names']['live']}]")).to_be_visible()
    layer = RedisChannelLayer(hosts=[redis_url])
    stream = uuid.uuid4().hex

    def send(n: int) -> None:
        text = json.dumps({"kind": "pong", "id": n})
        message = {"type": "fleet.event", "texts": [text], "group": "fleet"}
        # In a thread of its own: Playwright's sync API runs an event loop in this one.
        with ThreadPoolExecutor(1) as pool:
            group_send = async_to_sync(layer.group_send)
            pool.submit(group_send, "fleet", message | {"stream": stream, "n": n}).result()

    send(1)
    with page.expect_request(lambda r: "/api/nodes/" in r.url, timeout=10_000):
        send(4)
    assert_clean(page)


def test_ingested_sample_reaches_the_node_charts_within_two_seconds(live, live_page, artifacts_dir):
    names, seed = live["names"], live["seed"]
    page = live_page()
    page.goto(f"{live['app'].url}/nodes/{names['live']}/")
    settle(page)
    expect(page.locator("#range-info")).to_contain_text("bucket 1 s", timeout=10_000)
    assert page.locator("#baseline").input_value() == names["base"]
    history = chart_values(page, "chart-auc")
    assert len(history) >= 290  # the seeded 5 minutes (15-minute window, 1 s buckets)
    baseline = chart_values(page, "chart-auc", 1)
    assert baseline and abs(baseline[-1] - 0.731) < 1e-9

    sample = seed.sample(
        names["live"],
        time.time(),
        p99_ms=41.125,
        auc=0.7777,
        memory_overhead_pct=1.93,
        trainer_samples_per_s=1234.0,
        throttle="paused",
        cpu_per_core=[88.0, 12.5],
        tables={"user": {"rank": 9, "memory_bytes": 1, "memory_pct": 0.1}},
    )
    sample["events"] = [
        {
            "kind": "rank_change",
            "ts": sample["ts"],
            "detail": {"table": "user", "from": 6, "to": 9, "reason": "residual"},
        }
    ]
    seed.ingest(names["live"], [sample])
    sent = time.monotonic()
    page.wait_for_function(
        "() => Array.from(document.getElementById('chart-p99').data[0].y).includes(41.125)",
        timeout=2_000,
    )
    assert time.monotonic() - sent < 2.0
    assert chart_values(page, "chart-auc")[-1] == 0.7777
    assert chart_values(page, "chart-memory")[-1] == 1.93
    p99_names = page.evaluate("() => document.getElementById('chart-p99').data.map(t => t.name)")
    assert p99_names[1:] == ["P95", "P50", "SLA 20 ms"]  # P99 first, then P95, P50 and the SLA
    sla = chart_values(page, "chart-p99", 3)
    assert sla == [20.0, 20.0]
    budget = chart_values(page, "chart-memory", 1)
    assert budget == [2.0, 2.0]
    assert chart_values(page, "chart-trainer")[-1] == 1234.0
    ranks = page.evaluate(
        "() => Object.fromEntries(document.getElementById('chart-rank').data"
        ".map(t => [t.name, Array.from(t.y)]))"
    )
    assert ranks["user"][-1] == 9
    assert 6 in ranks["rank change"]  # the seeded rank change 4 -> 6
    page.wait_for_function(  # the live rank event (sent right after the sample) is marked too
        "() => Array.from(document.getElementById('chart-rank').data"
        ".find(t => t.name === 'rank change').y).includes(9)",
        timeout=5_000,
    )
    throttle = page.evaluate(
        "() => Object.fromEntries(document.getElementById('chart-trainer').data"
        ".filter(t => t.yaxis === 'y3').map(t => [t.name, t.x.length]))"
    )
    assert throttle["paused"] >= 1 and throttle["throttled"] >= 1
    cpu = page.evaluate(
        "() => document.getElementById('chart-cpu').data.map(t => [t.name, Array.from(t.y)])"
    )
    assert cpu == [["inference cores", [88.0]], ["trainer cores", [12.5]]]
    page.screenshot(path=str(artifacts_dir / "node.png"), full_page=True)

    # A longer range is downsampled by the server.
    page.click("button[data-range='86400']")
    expect(page.locator("#range-info")).to_contain_text("bucket 44 s")
    assert len(chart_values(page, "chart-auc")) <= 2000
    page.screenshot(path=str(artifacts_dir / "node-24h.png"), full_page=True)
    page.set_viewport_size(NARROW)
    page.click("button[data-range='900']")
    expect(page.locator("#range-info")).to_contain_text("bucket 1 s")
    page.screenshot(path=str(artifacts_dir / "node-narrow.png"), full_page=True)
    assert_clean(page)


def open_policies(live_page, url):
    page = live_page()
    page.goto(url + "/policies/")
    settle(page)
    expect(page.locator("#policy-list button").first).to_be_visible()
    return page


def test_policy_with_an_invalid_value_shows_the_field_error(live, live_page, artifacts_dir):
    page = open_policies(live_page, live["app"].url)
    page.click("#new-policy")
    page.fill("#f-name", f"bad-{uuid.uuid4().hex[:6]}")
    page.fill("#f-tau", "1.5")
    page.fill("#f-r_min", "8")
    page.fill("#f-r_max", "4")
    page.click("#save-policy")
    expect(page.locator("#err-tau")).to_have_text("Must be >= 0.5 and <= 1.0.")
    expect(page.locator("#f-tau")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#err-r_max")).to_have_text("Must be >= r_min.")
    expect(page.locator("#save-status")).to_contain_text("Not saved")
    expect(page.locator("#err-sla_p99_ms")).to_be_empty()
    page.screenshot(path=str(artifacts_dir / "policy-field-errors.png"), full_page=True)
    assert_clean(page)


def test_valid_policy_round_trips_and_applies_to_a_group(live, live_page, artifacts_dir):
    names, seed = live["names"], live["seed"]
    name = f"gold-{uuid.uuid4().hex[:6]}"
    page = open_policies(live_page, live["app"].url)
    page.click("#new-policy")
    page.fill("#f-name", name)
    page.select_option("#f-mode", "liveupdate")
    page.fill("#f-r_max", "12")
    page.fill("#f-memory_budget_pct", "1.5")
    page.fill("#f-tau", "0.95")
    page.fill("#f-max_trainer_duty", "0.6")
    page.fill("#f-sla_p99_ms", "25")
    page.fill("#f-reason", "tighter budget for the gold tier")
    page.click("#save-policy")
    expect(page.locator("#save-status")).to_have_text(f"Saved {name} as version 1.")
    stored = [p for p in seed.call("GET", "/api/policies/", 200)["results"] if p["name"] == name]
    assert len(stored) == 1
    got = {k: stored[0][k] for k in ("mode", "r_max", "memory_budget_pct", "tau")}
    assert got == {"mode": "liveupdate", "r_max": 12, "memory_budget_pct": 1.5, "tau": 0.95}
    assert (stored[0]["max_trainer_duty"], stored[0]["sla_p99_ms"]) == (0.6, 25.0)

    # Reloaded, the form shows what the API stored; an edit becomes version 2 in the history.
    page.reload()
    page.click(f"#policy-list button[data-policy='{stored[0]['id']}']")
    expect(page.locator("#f-tau")).to_have_value("0.95")
    expect(page.locator("#f-memory_budget_pct")).to_have_value("1.5")
    page.fill("#f-sla_p99_ms", "30")
    page.fill("#f-reason", "p99 headroom")
    page.click("#save-policy")
    expect(page.locator("#save-status")).to_have_text(f"Saved {name} as version 2.")
    history = page.locator("#history-table tr[data-version='2']")
    expect(history).to_contain_text("p99 headroom")
    expect(history).to_contain_text("sla_p99_ms: 25 → 30")

    # Apply to a group (nodes whose name contains "edge-"), after confirming.
    page.fill("#group-filter", names["live"])
    page.click("#select-group")
    expect(page.locator("#apply-policy")).to_have_text("Apply to 1 selected node")
    page.click("#apply-policy")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_contain_text(f"Apply {name} v2 to 1 node?")
    expect(dialog).to_contain_text(names["live"])
    page.screenshot(path=str(artifacts_dir / "policy-confirm.png"))
    page.click("#confirm-ok")
    expect(page.locator(f"#apply-results li[data-node={names['live']}]")).to_contain_text(
        "waiting for the node"
    )
    node = seed.call("GET", f"/api/nodes/{names['live']}/", 200)
    assert node["policy"] == stored[0]["id"] and node["applied_policy_version"] == 2
    page.screenshot(path=str(artifacts_dir / "policies.png"), full_page=True)
    assert_clean(page)


def test_fleet_and_node_pages_show_what_the_node_runs_against_what_was_applied(live, live_page):
    """Desired vs running (issue 17): the node reports policy v1 while v2 was applied to it."""
    seed, suffix = live["seed"], uuid.uuid4().hex[:6]
    policy = seed.policy(f"runs-{suffix}")
    edited = {"name": f"runs-{suffix}", "sla_p99_ms": 40.0, "reason": "more headroom"}
    assert seed.call("PUT", f"/api/policies/{policy['id']}/", 200, json=edited)["version"] == 2
    name = f"lag-{suffix}"
    seed.node(name, policy["id"], TOPOLOGY)
    services.manage(
        live["env"],
        "shell",
        "-c",
        "from controlplane.models import Node; "
        f"Node.objects.filter(name={name!r}).update(applied_policy_version=2)",
    )
    checksum = "sha256:" + "ab12cd34ef56" + "0" * 52

    def report(version: int) -> None:
        body = {
            "node": name,
            "samples": [seed.sample(name, time.time())],
            "running": {"policy_version": version, "checkpoint": checksum},
        }
        headers = {"Authorization": f"Node {seed.tokens[name]}"}
        url = f"{live['app'].url}/api/telemetry/ingest/"
        assert requests.post(url, json=body, headers=headers, timeout=15).status_code == 200

    report(1)
    page = live_page()
    settle(page)
    cell = page.locator(f"tr[data-node={name}] td[data-label=Policy]")
    expect(cell).to_contain_text(f"runs-{suffix} v2")  # saved and applied: v2
    expect(cell).not_to_contain_text("applied:")
    expect(cell.locator(".running-policy")).to_have_text("node runs v1")
    page.goto(f"{live['app'].url}/nodes/{name}/")
    settle(page)
    running = page.locator("#node-summary .running-state")
    expect(running).to_contain_text("checkpoint ab12cd34ef56")
    expect(running).to_contain_text("node runs v1")
    expect(running).to_have_attribute("title", checksum)
    report(2)  # the node caught up: nothing to say about its policy any more
    page.reload()
    settle(page)
    expect(running).to_have_text(" · checkpoint ab12cd34ef56")
    page.goto(live["app"].url + "/")
    settle(page)
    expect(cell).to_contain_text(f"runs-{suffix} v2")
    expect(cell.locator(".running-policy")).to_have_count(0)
    assert_clean(page)


def test_node_action_feedback_when_the_node_confirms(live, live_page, tmp_path, artifacts_dir):
    names = live["names"]
    env = dict(live["env"], NODE_NAME=names["idle"])
    checkpoint = live["seed"].call(
        "POST",
        "/api/checkpoints/",
        201,
        json={
            "name": "base-2026-11-25",
            "location": "/models/base.pt",
            "checksum": "sha256:" + "ab" * 32,
        },
    )
    page = live_page()
    page.goto(f"{live['app'].url}/nodes/{names['idle']}/")
    settle(page)
    queue = f"node.{names['idle']}"
    with services.celery_worker(env, "tests.integration.cp_node_app", queue, tmp_path / "w.log"):
        page.click("button[data-action=pause]")
        page.click("#confirm-ok")
        item = page.locator("#action-log li[data-state]").first
        expect(item).to_contain_text("pause")
        expect(item).to_have_attribute("data-state", "succeeded", timeout=30_000)
        expect(item).to_contain_text("confirmed by the node")
        page.click("button[data-action=snapshot]")
        expect(page.locator("#action-log li[data-state]").first).to_contain_text("snapshot")
        expect(page.locator("#action-log li[data-state]").first).to_have_attribute(
            "data-state", "succeeded", timeout=30_000
        )
        page.select_option("#checkpoint", str(checkpoint["id"]))
        page.click("#rebase-form button[type=submit]")
        expect(page.locator("#confirm-dialog")).to_contain_text("Rebase")
        page.click("#confirm-ok")
        rebase = page.locator("#action-log li[data-state]").first
        expect(rebase).to_contain_text("rebase")
        expect(rebase).to_have_attribute("data-state", "succeeded", timeout=30_000)
    page.screenshot(path=str(artifacts_dir / "node-actions.png"), full_page=True)
    assert_clean(page)


def test_experiments_page_shows_a_run_and_rejects_a_bad_upload(
    live, live_page, artifacts_dir, tmp_path
):
    seed = live["seed"]
    run = seed.call(
        "POST",
        "/api/experiments/",
        201,
        json={"name": f"browser-fixture-{uuid.uuid4().hex[:6]}", "results": results_json()},
    )
    page = live_page()
    page.goto(live["app"].url + "/experiments/")
    settle(page)
    page.select_option("#run-select", str(run["id"]))
    expect(page.locator("#report-title")).to_have_text(run["name"])
    names = page.evaluate("() => document.getElementById('chart-exp-auc').data.map(t => t.name)")
    assert names == ["Stale", "Oracle", "DeltaSync", "LiveUpdate", "Hybrid"]
    fine = page.evaluate("() => document.getElementById('chart-exp-auc').data[0].y.length")
    assert fine == 16  # the short windows' curve
    gain = page.evaluate(
        "() => document.getElementById('chart-exp-gain').data.find(t => t.name === 'LiveUpdate')"
    )
    assert gain["y"][0] == pytest.approx(100 * (0.7452 - 0.744) / 0.744, abs=1e-3)  # relative %
    assert gain["error_y"]["array"][0] == pytest.approx(0.1)  # the 95% interval's half width
    per_hour = [0, 0, 3.1e8, 0, 1.05e8]  # fleet bytes per hour, plotted in MiB
    assert chart_values(page, "chart-exp-bytes") == pytest.approx([b / 2**20 for b in per_hour])
    expect(page.locator("#chart-exp-bytes")).to_contain_text("fleet bytes per hour (MiB)")
    live_row = page.locator("#strategies tr[data-strategy=liveupdate]")
    expect(live_row).to_contain_text("[0.")  # the mean AUC's interval over the seeds
    expect(live_row).to_contain_text("2.380 %")  # measured memory per node
    expect(page.locator("#claims tbody tr")).to_have_count(3)
    expect(page.locator("#claims tr.refuted[data-claim=accuracy]")).to_contain_text(
        "above the claimed range"
    )
    expect(page.locator("#claims tr.holds[data-claim=update_cost]")).to_contain_text("2.1 .. 2.5")
    expect(page.locator("#audit")).to_have_attribute("data-state", "passed")
    expect(page.locator("#process-memory")).to_contain_text("peak RSS 516.0 MiB")
    expect(page.locator("#seeds tbody tr")).to_have_count(3)
    expect(page.locator("#report-meta")).to_contain_text("4 nodes, sticky-user routing")
    expect(page.locator("#report-summary")).to_have_text("A made-up run for the page test.")
    page.screenshot(path=str(artifacts_dir / "experiments.png"), full_page=True)

    bad = results_json()
    bad["strategies"]["liveupdate"]["mean_auc"] = "high"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(bad))
    page.set_input_files("#upload-file", str(path))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-errors")).to_contain_text(
        "strategies.liveupdate.mean_auc: Must be a finite number or null."
    )
    good = tmp_path / "fresh-run.json"
    good.write_text(json.dumps(results_json(windows=4)))
    page.set_input_files("#upload-file", str(good))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#report-title")).to_have_text("fresh-run")
    expect(page.locator("#report-meta")).to_contain_text("4 windows")
    page.set_viewport_size(NARROW)
    page.screenshot(path=str(artifacts_dir / "experiments-narrow.png"), full_page=True)
    assert_clean(page, allowed=("/api/experiments/",))


def test_fleet_page_shows_the_lead_over_the_baseline_with_its_interval(
    live, live_page, artifacts_dir
):
    """The A/B number a first-time operator looks for: the seeded LiveUpdate node's AUC is
    0.74 + 0.01 sin(i / 9) for sample i, its delta-sync baseline's 0.731, second by second."""
    names = live["names"]
    expected = sum(0.009 + 0.01 * math.sin(i / 9.0) for i in range(300)) / 300
    # A baseline sample now (no LiveUpdate point near it to pair with), so its "last seen" is
    # in seconds and visibly counts below.
    # It carries a delta sync that landed a second ago, its model's labels 4 s old.
    seed = live["seed"]
    now = time.time()
    synced = {
        **DELTA_SYNC_SAMPLE,
        "freshness_lag_s": 4.0,
        "events": [
            {
                "kind": "sync",
                "ts": now - 1,
                "detail": {"tables": {"user": 120}, "bytes": 4800, "trained_until": now - 5},
            }
        ],
    }
    seed.ingest(names["base"], [seed.sample(names["base"], now, **synced)])
    page = live_page()
    settle(page)
    card = page.locator("#ab-card")
    expect(card).to_be_visible()
    assert page.locator("#ab-live").input_value() == names["live"]
    assert page.locator("#ab-base").input_value() == names["base"]
    number = card.locator(".ab-number")
    expect(number).to_contain_text("AUC", timeout=10_000)  # the "within 10 seconds"
    lead = float(number.get_attribute("data-lead"))
    assert abs(lead - expected) < 0.002, (lead, expected)
    expect(number).to_contain_text(f"+{lead:.4f} AUC")
    expect(card).to_contain_text("95 % interval")
    expect(card).to_contain_text(f"{names['live']}: freshness lag 1.5 s")
    expect(card).to_contain_text(f"{names['base']}: synced ")
    expect(card).to_contain_text("freshness lag 4.0 s (age of the newest label it learnt")
    page.wait_for_function("() => document.getElementById('ab-gap').data", timeout=10_000)
    gap = chart_values(page, "ab-gap")
    assert len(gap) >= 250 and abs(sum(gap) / len(gap) - lead) < 1e-9
    fresh = page.evaluate("() => document.getElementById('ab-fresh').data.map(t => t.name)")
    assert fresh == [names["live"], names["base"]]  # the delta-sync node's lag is charted
    assert 4.0 in page.evaluate("() => document.getElementById('ab-fresh').data[1].y")
    # "N s ago" keeps counting without new data (the baseline sends none during this test).
    ago = page.locator(f"tr[data-node={names['base']}] td[data-label=Status] [data-ago]")
    synced_ago = card.locator(f"[data-fresh={names['base']}] .synced-ago")
    before, synced_before = ago.inner_text(), synced_ago.inner_text()
    page.wait_for_timeout(2500)
    assert ago.inner_text() != before, before
    assert synced_ago.inner_text() != synced_before, synced_before
    page.screenshot(path=str(artifacts_dir / "fleet-ab.png"), full_page=True)
    assert_clean(page)


def test_delta_sync_node_is_shown_without_trainer_controls(live, live_page, artifacts_dir):
    names = live["names"]
    page = live_page()
    settle(page)
    row = page.locator(f"tr[data-node={names['base']}]")
    expect(row.locator("td[data-label=Trainer]")).to_contain_text("no local trainer")
    expect(row.locator("td[data-label=Trainer] .badge.paused")).to_have_count(0)
    expect(row.locator("td[data-label=Rank]")).to_contain_text("n/a")
    expect(row.locator("td[data-label='Memory vs budget']")).to_contain_text("n/a")
    seed, now = live["seed"], time.time()
    sync = {"kind": "sync", "ts": now, "detail": {"tables": {"item": 7}, "bytes": 280}}
    seed.ingest(
        names["base"], [seed.sample(names["base"], now, **DELTA_SYNC_SAMPLE, events=[sync])]
    )
    page.goto(f"{live['app'].url}/nodes/{names['base']}/")
    settle(page)
    expect(page.locator("#node-summary .synced-ago")).to_contain_text("s ago")
    expect(page.locator("#mode-note")).to_contain_text("delta sync")
    for hidden in ("pause", "resume", "snapshot"):
        expect(page.locator(f"button[data-action={hidden}]")).to_be_hidden()
    for hidden in ("#chart-rank", "#chart-memory", "#chart-trainer", "#node-ab-card"):
        expect(page.locator(hidden)).to_be_hidden()
    expect(page.locator("#rebase-form")).to_be_visible()
    summary = page.locator("#node-summary")
    expect(summary).to_contain_text("delta sync")
    expect(summary).not_to_contain_text("trainer")
    expect(summary).not_to_contain_text("memory")
    policy = page.locator("#policy-box")
    expect(policy).to_contain_text("delta_sync")
    expect(policy).not_to_contain_text("Rank budget")
    expect(policy).not_to_contain_text("tau")
    expect(page.locator("#events-table")).to_be_visible()
    expect(page.locator("#events")).not_to_contain_text("{")  # details in words, not JSON
    page.screenshot(path=str(artifacts_dir / "node-delta-sync.png"), full_page=True)
    # The LiveUpdate node's page shows the trainer and the lead over this baseline.
    page.goto(f"{live['app'].url}/nodes/{names['live']}/")
    settle(page)
    expect(page.locator("button[data-action=pause]")).to_be_visible()
    # after the page's first range query (up to 10 s on a loaded machine, as above)
    expect(page.locator("#node-ab-card .ab-number")).to_contain_text("AUC", timeout=10_000)
    assert_clean(page)


def test_stale_banner_while_the_plane_does_not_answer(live, live_page):
    """The A/B card re-reads the telemetry every 10 s: while the API's requests fail at the
    network the page says its data may be stale, and stops saying so once they succeed."""
    page = live_page()
    settle(page)
    banner = page.locator("#stale-banner")
    expect(banner).to_be_hidden()
    page.route("**/api/telemetry/**", lambda route: route.abort())
    expect(banner).to_be_visible(timeout=15_000)
    expect(banner).to_contain_text("the control plane did not answer")
    page.unroute("**/api/telemetry/**")
    expect(banner).to_be_hidden(timeout=15_000)
    failed = [p for p in page.js_errors if "/api/telemetry/" not in p]
    assert failed == []  # only the requests the test aborted failed


def test_a_viewer_sees_the_policy_form_read_only(live):
    name = f"viewer-{uuid.uuid4().hex[:6]}"
    create = (
        "from django.contrib.auth import get_user_model; "
        "from django.contrib.auth.models import Group; "
        "from controlplane.roles import ensure_groups; ensure_groups(); "
        f"u = get_user_model().objects.create_user(username={name!r}, "
        f"password={services.TEST_PASSWORD!r}); u.groups.add(Group.objects.get(name='viewer'))"
    )
    services.manage(live["env"], "shell", "-c", create)
    context = live["browser"].new_context(viewport=WIDE)
    try:
        page = context.new_page()
        page.js_errors = watch_problems(page)
        page.goto(live["app"].url + "/accounts/login/?next=/policies/")
        page.fill("#id_username", name)
        page.fill("#id_password", services.TEST_PASSWORD)
        page.click("main button[type=submit]")
        expect(page.locator("#policy-list button").first).to_be_visible()
        page.locator("#policy-list button").first.click()
        expect(page.locator("#read-only-note")).to_be_visible()
        for field in ("#f-name", "#f-tau", "#f-mode", "#f-sla_p99_ms", "#save-policy"):
            expect(page.locator(field)).to_be_disabled()
        expect(page.locator("#apply-policy")).to_be_disabled()
        assert_clean(page)
    finally:
        context.close()


def test_policy_editor_shows_mode_fields_and_every_error_at_once(live, live_page):
    page = open_policies(live_page, live["app"].url)
    page.click("#new-policy")
    rank_fields = page.locator("fieldset[data-modes]")
    expect(rank_fields.first).to_be_visible()
    page.select_option("#f-mode", "delta_sync")
    for i in range(rank_fields.count()):
        expect(rank_fields.nth(i)).to_be_hidden()
    page.select_option("#f-mode", "liveupdate")
    page.fill("#f-name", f"many-{uuid.uuid4().hex[:6]}")
    page.fill("#f-tau", "1.5")
    page.fill("#f-sla_p99_ms", "")
    page.fill("#f-trainer_cores", "2.5")
    page.click("#save-policy")
    expect(page.locator("#err-tau")).to_have_text("Must be >= 0.5 and <= 1.0.")
    expect(page.locator("#err-sla_p99_ms")).to_have_text("Required: enter a number.")
    expect(page.locator("#err-trainer_cores")).to_have_text("Enter a whole number.")
    expect(page.locator("#save-status")).to_contain_text("fix the 3 fields")
    assert_clean(page)


def test_embedded_mode_node_chart_is_live(live, tmp_path, artifacts_dir):
    """The same live path in the embedded default (SQLite, in-memory channel layer)."""
    env = services.appliance_env(tmp_path, None, None)
    with services.Appliance(env, tmp_path / "server.log") as app:
        seed = Seeder(app)
        # Registered without a topology: the CPU roles come from the runtime's placement event.
        seed.node("demo-1", seed.policy("demo", sla_p99_ms=15.0)["id"], {})
        seed.history("demo-1", 120, placement={"inference_cpus": [1], "trainer_cpus": [0]})
        page = logged_in({"browser": live["browser"], "app": app}, NARROW)
        try:
            # The first load of a fresh server on a loaded machine may take more than 5 s; the
            # live path's 2 s is checked below.
            rank = page.locator("td[data-label=Rank]")
            expect(rank).to_contain_text("user: 6", timeout=15_000)
            page.goto(app.url + "/nodes/demo-1/")
            settle(page)
            expect(page.locator("#range-info")).to_contain_text("120 points")
            seed.ingest("demo-1", [seed.sample("demo-1", time.time(), p99_ms=16.5)])
            page.wait_for_function(
                "() => Array.from(document.getElementById('chart-p99').data[0].y).includes(16.5)",
                timeout=2_000,
            )
            cpu = page.evaluate(
                "() => document.getElementById('chart-cpu').data.map(t => [t.name, t.x])"
            )
            assert cpu == [["inference cores", ["cpu 1"]], ["trainer cores", ["cpu 0"]]]
            page.screenshot(path=str(artifacts_dir / "node-embedded-narrow.png"))
            assert_clean(page)
        finally:
            page.context.close()

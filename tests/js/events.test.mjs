// Node events and action results in words (frontend/static/frontend/events.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  describeEvent, describeResult, eventRows, newestSync, plainPairs,
} from "../../frontend/static/frontend/events.js";

test("each kind of event reads as a sentence, not JSON", () => {
  assert.equal(describeEvent("rank_change", { table: "user", from: 4, to: 6, reason: "energy" }),
    "user: rank 4 → 6 (energy)");
  assert.equal(describeEvent("qos", { action: "decrease", duty: 0.35, state: "throttled", p99_ms: 14.2,
    reason: "p99 near the SLA" }), "trainer throttled · duty 35 % · p99 near the SLA · P99 14.2 ms");
  assert.equal(describeEvent("policy", { name: "live", version: 3, mode: "liveupdate",
    placement: { inference_cpus: [0], trainer_cpus: [1] }, ranks: { user: 6 } }),
  "live v3 applied · mode liveupdate · ranks user 6 · inference on cpu 0, trainer on cpu 1");
  assert.equal(describeEvent("snapshot", { snapshot: "snap-1", version: 7, checkpoint: "/m/base.pt",
    digests: { a: 1 } }), "saved snap-1 (factor version 7) on base.pt");
  assert.equal(describeEvent("snapshot", { trainer_restarted: true, restored: null }),
    "trainer restarted from the bare base");
  assert.equal(describeEvent("rebase", { checkpoint: { name: "base-1", location: "/x.pt" },
    keep_factors: true }), "onto base-1, LoRA factors kept");
  assert.equal(describeEvent("something_new", { a: 1, b: [1, 2], c: { x: 1 }, d: null }),
    "a: 1, b: 1, 2, c: {1 fields}");
  assert.equal(plainPairs(undefined), "");
});

test("rank changes and prunes fold into one row per interval and table, others stay", () => {
  const events = [
    { ts: 960, kind: "prune", detail: { table: "item", from: 900, to: 800 } },
    { ts: 970, kind: "prune", detail: { table: "item", from: 800, to: 610 } },
    { ts: 1000, kind: "prune", detail: { table: "user", from: 50, to: 40 } },
    { ts: 1030, kind: "qos", detail: { state: "paused", reason: "SLA breached" } },
    { ts: 1070, kind: "prune", detail: { table: "item", from: 610, to: 600 } },
    { ts: 1075, kind: "rank_change", detail: { table: "user", from: 4, to: 6 } },
  ];
  const rows = eventRows(events, { interval: 60 }); // minutes [960, 1020) and [1020, 1080)
  assert.deepEqual(rows.map((r) => [r.ts, r.kind, r.count]),
    [[1075, "rank_change", 1], [1070, "prune", 1], [1030, "qos", 1], [1000, "prune", 3]]);
  assert.equal(rows[3].text, "3 prunes · item: active rows 900 → 610 (2) · user: active rows 50 → 40 (1)");
  assert.equal(rows[1].text, "item: active rows 610 → 600");
  const onlyQos = eventRows(events, { kinds: new Set(["qos"]) });
  assert.deepEqual(onlyQos.map((r) => r.kind), ["qos"]);
});

test("action results read as text", () => {
  assert.equal(describeResult("pause", { throttle: "paused" }), "trainer paused");
  assert.equal(describeResult("apply_policy", { mode: "delta_sync", placement: {} }),
    "policy applied · mode delta_sync");
  assert.equal(describeResult("status", { ok: true, qps: 140.123456 }), "ok: true, qps: 140.1");
  assert.equal(describeResult("pause", null), "");
});

test("a delta sync reads as what landed, and the newest sync is found among any events", () => {
  const detail = { tables: { user: 1200, item: 300 }, bytes: 3 * 1024 * 1024, created_at: 1000.5,
    trained_until: 990 };
  assert.equal(describeEvent("sync", detail),
    "1500 rows landed (user 1200, item 300) · 3.0 MiB · newest label learnt 10.5 s before it was made");
  assert.equal(describeEvent("sync", { tables: {}, bytes: 0 }), "0 rows landed · 0 B");
  assert.equal(describeResult("apply_delta", { tables: { user: 2 }, bytes: 80 }), "2 rows landed (user 2) · 80 B");
  assert.equal(newestSync([{ kind: "sync", ts: 5 }, { kind: "qos", ts: 9 }, { kind: "sync", ts: 7 }]), 7);
  assert.equal(newestSync([{ kind: "qos", ts: 9 }]), null);
  assert.equal(newestSync(undefined), null);
});

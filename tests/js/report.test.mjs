// The experiments page's view of a results.json (frontend/static/frontend/report.js): strategy
// rows with intervals, relative gains with error bars, claim verdicts, the leak audit, /proc
// memory and per-seed AUCs.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  aucSeries, auditSummary, claimRows, fleetText, gainSeries, intervalText, perSeedTable,
  processMemoryText, STRATEGY_COLUMNS, strategyLabel, strategyNames, strategyRows, windowLabels,
} from "../../frontend/static/frontend/report.js";

const ci = (mean, lo, hi, n = 3) => ({ mean, lo, hi, n });

const results = {
  schema_version: 2,
  windows: [{ start_s: 0, end_s: 3600 }, { label: "hour 2" }],
  fine_windows: [{}, {}, {}, {}],
  seeds: [0, 1, 2],
  fleet: { nodes: 4, routing: "sticky-user", multicast: false },
  strategies: {
    hybrid: {
      mean_auc: 0.7031, auc_per_window: [0.70, 0.7062], auc_per_fine_window: [0.69, 0.7, 0.71, 0.705],
      mean_gain_vs_delta_sync_pct: 0.45, gain_vs_delta_sync_pct_per_window: [0.4, null],
      bytes_per_hour: 3 * 1024 * 1024, cpu_seconds_per_hour: 12.34, peak_measured_memory_pct: 2.5,
      peak_memory_overhead_pct: 1.8, mean_staleness_s: 45,
      ci95: { mean_auc: ci(0.7031, 0.7011, 0.7051), mean_gain_vs_delta_sync_pct: ci(0.45, 0.1, 0.8),
        gain_vs_delta_sync_pct_per_window: [ci(0.4, 0.1, 0.9), null] },
      per_seed: [{ seed: 0, mean_auc: 0.70 }, { seed: 1, mean_auc: 0.705 }, { seed: 2, mean_auc: null }],
    },
    delta_sync: {
      mean_auc: 0.7, auc_per_window: [0.6972, 0.7028], bytes_per_hour: 1e6, cpu_seconds_per_hour: 1,
      ci95: { mean_auc: ci(0.7, 0.7, 0.7, 1) }, per_seed: [{ seed: 0, mean_auc: 0.6981 }],
    },
    custom_b: { mean_auc: null, auc_per_window: [0.5, 0.6] },
    stale: { mean_auc: 0.69, auc_per_window: [0.69, 0.69] },
  },
  claims: [
    { id: "memory", claim: "memory < 2% of the tables", verdict: "not held", held: false, measured: "2.5%", why: "measured 2.5% >= 2%", interval: null },
    { id: "update_cost", claim: "update cost 2x lower", verdict: "held", held: true, measured: "2.3x", why: "", interval: ci(2.3, 2.1, 2.5) },
    { id: "accuracy", claim: "accuracy +0.04..0.24%", verdict: "above the claimed range", held: false, measured: "+0.45%", why: "larger than claimed", interval: ci(0.45, 0.3, 0.6) },
    { id: "accuracy", claim: "x", verdict: "not significant", held: false, measured: null, why: "the interval contains 0" },
    "a schema-1 free-form claim",
  ],
  audit: { enabled: true, passed: true, runs: [{ leaking: [] }, { leaking: [] }] },
  process: { rss: 500 * 2 ** 20, peak_rss: 516 * 2 ** 20, pss: null },
};

test("strategies come in their fixed order with their labels, others after them by name", () => {
  assert.deepEqual(strategyNames(results), ["stale", "delta_sync", "hybrid", "custom_b"]);
  assert.deepEqual(strategyNames({}), []);
  assert.equal(strategyLabel("liveupdate_dense"), "LiveUpdate + dense");
  assert.equal(strategyLabel("custom_b"), "custom_b");
});

test("windows are labelled by their label or their number; curves prefer the short windows", () => {
  assert.deepEqual(windowLabels(results, 3), ["1", "hour 2", "3"]);
  assert.deepEqual(aucSeries(results, "hybrid"), { y: [0.69, 0.7, 0.71, 0.705], key: "fine_windows" });
  assert.deepEqual(aucSeries(results, "stale"), { y: [0.69, 0.69], key: "windows" });
});

test("gains are relative % with the 95% interval as error bars; schema 1 computes them", () => {
  const g = gainSeries(results, "hybrid");
  assert.deepEqual(g.y, [0.4, null]);
  assert.ok(Math.abs(g.plus[0] - 0.5) < 1e-12 && Math.abs(g.minus[0] - 0.3) < 1e-12);
  assert.deepEqual([g.plus[1], g.minus[1]], [null, null]);
  const old = gainSeries(results, "stale"); // no gain field: (0.69 - 0.6972) / 0.6972
  assert.ok(Math.abs(old.y[0] - (100 * (0.69 - 0.6972)) / 0.6972) < 1e-9);
  assert.deepEqual(old.plus, [null, null]);
});

test("the strategies table: intervals over seeds, fleet costs per hour, measured memory", () => {
  const rows = strategyRows(results);
  assert.equal(rows[0].cells.length, STRATEGY_COLUMNS.length);
  const hybrid = rows.find((r) => r.strategy === "hybrid").cells;
  assert.deepEqual(hybrid, ["Hybrid", "0.7031 [0.7011, 0.7051]", "+0.45 % [+0.10 %, +0.80 %]",
    "3.0 MiB / h", "12.3 CPU-s / h", "2.500 %", "1.800 %", "45.0 s"]);
  const delta = rows.find((r) => r.strategy === "delta_sync").cells;
  assert.equal(delta[1], "0.7000"); // one seed: no interval
  assert.equal(delta[2], "reference");
  assert.deepEqual(rows.find((r) => r.strategy === "custom_b").cells.slice(1, 5), ["–", "–", "–", "–"]);
  assert.equal(intervalText(null, ci(1, 0, 2), String), "–");
});

test("claims: the verdict decides the row class; free-form schema-1 claims are not rows", () => {
  const rows = claimRows(results);
  assert.deepEqual(rows.map((r) => r.verdictClass), ["refuted", "holds", "refuted", "undecided"]);
  assert.deepEqual(rows[2].cells, ["accuracy +0.04..0.24%", "above the claimed range", "+0.45%",
    "larger than claimed", "0.3 .. 0.6 (n = 3)"]);
  assert.equal(rows[0].cells[4], "–");
  assert.equal(rows[3].cells[2], "–");
  assert.deepEqual(claimRows({}), []);
});

test("the leak audit: passed, failed with the strategies that peeked, or off", () => {
  assert.equal(auditSummary(results).state, "passed");
  assert.match(auditSummary(results).text, /2 runs/);
  const failed = auditSummary({ audit: { enabled: true, passed: false,
    runs: [{ leaking: ["peeking", "b"] }, { leaking: ["b"] }] } });
  assert.equal(failed.state, "failed");
  assert.match(failed.text, /^FAILED: b, peeking scored differently/);
  assert.equal(auditSummary({}).state, "off");
  assert.equal(auditSummary({ audit: { enabled: false, passed: null, runs: [] } }).state, "off");
});

test("memory from /proc, the fleet and the per-seed table", () => {
  assert.equal(processMemoryText(results), "peak RSS 516.0 MiB · RSS 500.0 MiB");
  assert.equal(processMemoryText({}), "–");
  assert.equal(fleetText(results), "4 nodes, sticky-user routing, a transfer per node per sync · 3 seeds");
  assert.equal(fleetText({ fleet: { nodes: 1, routing: "random", multicast: true } }),
    "1 node, random routing, one multicast transfer per sync");
  const seeds = perSeedTable(results);
  assert.deepEqual(seeds.head, ["Seed", "DeltaSync", "Hybrid"]);
  assert.deepEqual(seeds.rows, [["0", "0.6981", "0.7000"], ["1", "–", "0.7050"], ["2", "–", "–"]]);
});

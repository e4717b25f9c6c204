// The node page's series, buckets, trimming and rank history (frontend/static/frontend/series.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  clippedTop, emptySeries, pushBuckets, pushPoint, rangeBounds, RankHistory, trimSeries,
} from "../../frontend/static/frontend/series.js";

test("a live range ends now, a fixed one where it was set", () => {
  assert.deepEqual(rangeBounds({ live: true, seconds: 900 }, 10_000), [9_100, 10_000]);
  assert.deepEqual(rangeBounds({ live: false, start: 5, end: 50 }, 10_000), [5, 50]);
});

test("a sample becomes one point of every metric, missing metrics as null", () => {
  const s = emptySeries();
  pushPoint(s, 100, { auc: 0.74, p99_ms: 11, trainer_duty: 0, dropped_samples: 3 });
  assert.deepEqual(s, { t: [100], auc: [0.74], p99: [11], p95: [null], p50: [null], qps: [null],
    logloss: [null], mem: [null], sps: [null], duty: [0], fresh: [null], skipped: [null], dropped: [3] });
});

test("server buckets are drawn at their middle, with the columns asked for", () => {
  const s = emptySeries();
  // Two 44 s buckets of a range query: avg of AUC, max of P99; memory was not asked for.
  pushBuckets(s, [1000, 1044], 22, { auc: [0.7, 0.72], p99_ms: [12, null] });
  assert.deepEqual(s.t, [1022, 1066]);
  assert.deepEqual(s.auc, [0.7, 0.72]);
  assert.deepEqual(s.p99, [12, null]);
  assert.deepEqual(s.mem, [null, null]);
});

test("trimming drops the points before the window and the oldest beyond the cap", () => {
  const s = emptySeries();
  for (let t = 0; t < 10; t += 1) pushPoint(s, t, { auc: t / 10 });
  trimSeries(s, 3);
  assert.deepEqual(s.t, [3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual(s.auc, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]);
  assert.equal(s.p99.length, 7); // every column, not only t
  trimSeries(s, 0, 4); // nothing is too old, but at most 4 points stay: the newest
  assert.deepEqual(s.t, [6, 7, 8, 9]);
  assert.deepEqual(s.duty, [null, null, null, null]);
  trimSeries(s, 100);
  assert.deepEqual(s.t, []);
});

test("a rank change adds a point to its table and a mark with its text", () => {
  const h = new RankHistory();
  h.addChange(50, { table: "user", from: 4, to: 6, reason: "energy" });
  h.addChange(60, { table: "item", to: 3 });
  h.addChange(70, { table: "item", from: 3 }); // no "to": not a rank change
  h.addChange(80, { from: 3, to: 2 }); // no table
  assert.deepEqual(h.tables, { user: { t: [50], r: [6] }, item: { t: [60], r: [3] } });
  assert.deepEqual(h.marks, {
    t: [50, 60], r: [6, 3], text: ["user: 4 → 6 (energy)", "item: ? → 3"],
    table: ["user", "item"], from: [4, null],
  });
});

test("ranks are sorted by time and held at the first change's 'from' back to the window start", () => {
  const h = new RankHistory();
  h.add("user", 300, 6); // the newest sample, added before the history's events
  h.addChange(200, { table: "user", from: 4, to: 6 });
  h.add("item", 150, 4); // a table whose first point is a sample holds that sample's rank
  h.add("ctx", 90, 2); // a point before the window start is not extended
  h.sort();
  h.holdFrom(100);
  assert.deepEqual(h.tables.user, { t: [100, 200, 300], r: [4, 6, 6] });
  assert.deepEqual(h.tables.item, { t: [100, 150], r: [4, 4] });
  assert.deepEqual(h.tables.ctx, { t: [90], r: [2] });
});

test("a first change with an unknown 'from' is not extended backwards", () => {
  const h = new RankHistory();
  h.addChange(200, { table: "user", to: 5 });
  h.sort();
  h.holdFrom(100);
  assert.deepEqual(h.tables.user, { t: [200], r: [5] });
});

test("a start-up spike does not set the chart's scale, the SLA line stays in view", () => {
  const p99 = [1300, 900, ...Array.from({ length: 98 }, (_, i) => 10 + (i % 5))];
  const top = clippedTop(p99, { floor: 20 });
  assert.ok(top >= 22 && top < 30, `top ${top}`); // 14 ms * 1.25 = 17.5, raised to 1.1 * SLA
  assert.equal(clippedTop([10, 11, 12]), null); // nothing to clip: Plotly's own range
  assert.equal(clippedTop([null, undefined]), null);
});

// The A/B readout's arithmetic (frontend/static/frontend/ab.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  batchMeanInterval, leadText, newest, pairByTime, t95,
} from "../../frontend/static/frontend/ab.js";

test("points are paired with the nearest point of the other node within the tolerance", () => {
  const a = { t: [10, 11, 12, 20], y: [0.75, 0.76, null, 0.8] };
  const b = { t: [10.4, 11.2, 14], y: [0.7, 0.72, 0.73] };
  const p = pairByTime(a, b, 1);
  assert.deepEqual(p.t, [10, 11]); // 12 has no AUC, 20 is 6 s from the nearest baseline point
  assert.deepEqual(p.b, [0.7, 0.72]); // 11 pairs with 11.2 (0.2 s away), not 10.4 (0.6 s)
  assert.deepEqual(p.gap.map((g) => +g.toFixed(6)), [0.05, 0.04]);
  assert.deepEqual(pairByTime(a, { t: [], y: [] }, 1).t, []);
});

test("the interval is Student's t over the batch means", () => {
  // 4 stretches of 2 values with means 1, 2, 3, 4: mean 2.5, sd of the means 1.291, t(3) 3.182.
  const ci = batchMeanInterval([1, 1, 2, 2, 3, 3, 4, 4], 4);
  assert.equal(ci.batches, 4);
  assert.equal(ci.n, 8);
  assert.equal(ci.mean, 2.5);
  const half = (3.182 * Math.sqrt(5 / 3)) / 2;
  assert.ok(Math.abs(ci.high - (2.5 + half)) < 1e-9);
  assert.ok(Math.abs(ci.low - (2.5 - half)) < 1e-9);
});

test("a steady lead has a narrow interval; too few values give none", () => {
  const ci = batchMeanInterval(Array.from({ length: 100 }, (_, i) => 0.03 + (i % 2 ? 1e-4 : -1e-4)));
  assert.ok(ci.low > 0.0299 && ci.high < 0.0301);
  assert.equal(batchMeanInterval([0.1, 0.2, 0.3]), null);
  assert.equal(batchMeanInterval([null, 0.1, NaN, 0.2]), null);
  assert.equal(t95(1), 12.706);
  assert.equal(t95(200), 1.96);
});

test("the readout says ahead, behind or unclear from the interval", () => {
  assert.equal(leadText({ mean: 0.03, low: 0.02, high: 0.04 }).verdict, "ahead");
  assert.equal(leadText({ mean: 0.03, low: 0.02, high: 0.04 }).lead, "+0.0300 AUC");
  assert.equal(leadText({ mean: -0.03, low: -0.04, high: -0.02 }).level, "bad");
  assert.equal(leadText({ mean: 0.001, low: -0.01, high: 0.012 }).verdict, "no clear difference");
  assert.equal(leadText({ mean: 0.001, low: -0.01, high: 0.012 }).interval,
    "95 % interval −0.0100 to +0.0120");
  assert.equal(leadText(null).lead, "–");
});

test("the newest number of a column skips trailing gaps", () => {
  assert.deepEqual(newest([1, 2, 3], [5, 6, null]), { t: 2, value: 6 });
  assert.equal(newest([1], [null]), null);
});

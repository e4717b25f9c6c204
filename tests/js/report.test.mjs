// The experiments page's arithmetic against DeltaSync and its claims table
// (frontend/static/frontend/report.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  claimCell, claimColumns, claimVerdict, gainPerWindow, meanGainText, strategyLabel,
  strategyNames, windowLabels,
} from "../../frontend/static/frontend/report.js";

const results = {
  windows: [{ start_s: 0, end_s: 600 }, { label: "hour 2" }, { start_s: 1200 }],
  strategies: {
    liveupdate: { mean_auc: 0.7027, auc_per_window: [0.704, 0.707, null] },
    custom_b: { mean_auc: 0.69, auc_per_window: [0.69] },
    delta_sync: { mean_auc: 0.6995, auc_per_window: [0.697, 0.705, 0.695] },
    stale: { mean_auc: 0.6847, auc_per_window: [0.699, 0.692, 0.673] },
    alpha: { mean_auc: null, auc_per_window: [] },
  },
};

test("known strategies come in their fixed order, others after them by name", () => {
  assert.deepEqual(strategyNames(results), ["stale", "delta_sync", "liveupdate", "alpha", "custom_b"]);
  assert.deepEqual(strategyNames({}), []);
  assert.equal(strategyLabel("delta_sync"), "DeltaSync");
  assert.equal(strategyLabel("custom_b"), "custom_b");
});

test("windows are labelled by their label or their number", () => {
  assert.deepEqual(windowLabels(results, 4), ["1", "hour 2", "3", "4"]);
  assert.deepEqual(windowLabels({}, 2), ["1", "2"]);
});

test("the gain per window is in AUC percentage points over DeltaSync", () => {
  const gain = gainPerWindow(results, "liveupdate");
  assert.equal(gain.length, 3);
  assert.ok(Math.abs(gain[0] - 0.7) < 1e-9); // (0.704 - 0.697) x 100
  assert.ok(Math.abs(gain[1] - 0.2) < 1e-9);
  assert.equal(gain[2], null); // no AUC in that window
  const stale = gainPerWindow(results, "stale");
  assert.ok(Math.abs(stale[2] - -2.2) < 1e-9);
  assert.deepEqual(gainPerWindow(results, "custom_b").slice(1), [null, null]); // fewer windows
  assert.deepEqual(gainPerWindow({ strategies: { liveupdate: {} } }, "liveupdate"), []);
});

test("the mean gain is signed, in points, and DeltaSync is the reference", () => {
  assert.equal(meanGainText(results, "liveupdate"), "+0.320 pts");
  assert.equal(meanGainText(results, "stale"), "-1.480 pts");
  assert.equal(meanGainText(results, "delta_sync"), "reference");
  assert.equal(meanGainText(results, "alpha"), "–");
  assert.equal(meanGainText({ strategies: { liveupdate: { mean_auc: 0.7 } } }, "liveupdate"), "–");
});

test("claims: columns with the verdict last, cells as text, rows marked by verdict", () => {
  const claims = [
    { claim: "memory < 2%", measured: 1.7, holds: true },
    { claim: "update cost 2x lower", paper: "2x", holds: false },
    "accuracy within 1-hour windows",
    { claim: "x", verdict: "refuted" },
  ];
  assert.deepEqual(claimColumns(claims), ["claim", "measured", "paper", "holds", "verdict"]);
  assert.equal(claimCell(claims[0], "holds"), "✔ holds");
  assert.equal(claimCell(claims[1], "holds"), "✘ does not hold");
  assert.equal(claimCell(claims[1], "measured"), "–");
  assert.equal(claimCell(claims[2], "claim"), "accuracy within 1-hour windows");
  assert.equal(claimCell({ m: 0.1 + 0.2 }, "m"), "0.3"); // six significant digits
  assert.equal(claimCell({ m: { a: 1 } }, "m"), '{"a":1}');
  assert.deepEqual(claims.map(claimVerdict), ["holds", "refuted", "", "refuted"]);
  assert.equal(claimVerdict({ status: "reproduced" }), "holds");
  assert.equal(claimVerdict({ claim: "no verdict" }), "");
});

// The watchdog's overrides as the pages word them (frontend/static/frontend/overrides.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  appliedValue, overrideDetail, overrideText, overrideTexts,
} from "../../frontend/static/frontend/overrides.js";

const since = "2026-12-07T22:04:00+00:00";
const override = {
  field: "max_trainer_duty", value: 0.05, actor: "watchdog", reason: "P99 9.0 ms over the 5 ms SLA",
  since, expires_at: "2026-12-07T23:04:00+00:00",
};
const hhmm = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

test("an override is shown beside the applied policy's value", () => {
  assert.equal(overrideText(override, 1), `duty 0.05 by the watchdog since ${hhmm(since)}; policy 1`);
  assert.equal(overrideText(override, undefined), `duty 0.05 by the watchdog since ${hhmm(since)}`);
  assert.equal(overrideText({ ...override, actor: "user:ana", field: "other" }, 2),
    `other 0.05 by user:ana since ${hhmm(since)}; policy 2`);
  assert.match(overrideDetail(override), /^P99 9.0 ms over the 5 ms SLA \(lifted by .+ at the latest\)$/);
});

test("a node's overrides are read against what was applied, not the saved policy", () => {
  const node = { overrides: [override], applied_policy: { policy: { max_trainer_duty: 0.8 }, version: 3 } };
  assert.equal(appliedValue(node, "max_trainer_duty"), 0.8);
  assert.deepEqual(overrideTexts(node), [`duty 0.05 by the watchdog since ${hhmm(since)}; policy 0.8`]);
  assert.deepEqual(overrideTexts({ overrides: [], applied_policy: null }), []);
  assert.equal(appliedValue({ applied_policy: null }, "max_trainer_duty"), undefined);
});

// What a node reports it runs against what was applied (frontend/static/frontend/running.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { runningCheckpointText, runningPolicyNote } from "../../frontend/static/frontend/running.js";

const REPORTED = "2026-12-07T02:00:00Z";
const SUM = `sha256:${"ab12cd34ef56".padEnd(64, "0")}`;

test("nothing is said before the node reports what it runs", () => {
  const node = { applied_policy_version: 3, running_policy_version: null, running_reported_at: null };
  assert.equal(runningPolicyNote(node), "");
  assert.equal(runningCheckpointText({ ...node, running_checkpoint: SUM }), "");
});

test("the running policy is shown only where it differs from the applied one", () => {
  const node = { applied_policy_version: 4, running_reported_at: REPORTED };
  assert.equal(runningPolicyNote({ ...node, running_policy_version: 4 }), "");
  assert.equal(runningPolicyNote({ ...node, running_policy_version: 3 }), "node runs v3");
  assert.equal(runningPolicyNote({ ...node, running_policy_version: null }), "node runs its start-up policy");
  // Never applied and running its start-up policy: as wanted.
  assert.equal(runningPolicyNote({ applied_policy_version: null, running_policy_version: null,
    running_reported_at: REPORTED }), "");
  assert.equal(runningPolicyNote({ applied_policy_version: null, running_policy_version: 0,
    running_reported_at: REPORTED }), "node runs v0");
});

test("the running checkpoint is its checksum's first 12 hex, or the start-up one", () => {
  const node = { running_reported_at: REPORTED };
  assert.equal(runningCheckpointText({ ...node, running_checkpoint: SUM }), "checkpoint ab12cd34ef56");
  assert.equal(runningCheckpointText({ ...node, running_checkpoint: "" }), "checkpoint: the one it started with");
  assert.equal(runningCheckpointText({ ...node, running_checkpoint: null }), "checkpoint: the one it started with");
});

// What a node reports it runs (API: node.running_policy_version, running_checkpoint,
// running_reported_at; from its telemetry) against what the plane applied to it
// (applied_policy_version). The plane re-sends what differs (controlplane.services.desired); until
// then the pages say so.

// "" while the node runs the applied version or has not reported; else what it runs instead.
export function runningPolicyNote(node) {
  if (!node.running_reported_at) return "";
  const running = node.running_policy_version ?? null;
  if (running === (node.applied_policy_version ?? null)) return "";
  return running === null ? "node runs its start-up policy" : `node runs v${running}`;
}

// The base checkpoint the node reports it runs ("sha256:<64 hex>", shown by its first 12 hex).
export function runningCheckpointText(node) {
  if (!node.running_reported_at) return "";
  const checksum = node.running_checkpoint || "";
  if (!checksum) return "checkpoint: the one it started with";
  return `checkpoint ${checksum.replace(/^sha256:/, "").slice(0, 12)}`;
}

// The watchdog's overrides of a node's applied policy (API: node.overrides, node.applied_policy),
// as the node page and the policy editor show them: "duty 0.05 by the watchdog since 22:04;
// policy 1". The node runs the stricter of the two; the policy itself is what people set.
import { epoch } from "./format.js";

const FIELD_TEXT = { max_trainer_duty: "duty" };

const clock = (iso) => new Date(epoch(iso) * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

// The applied policy's value of a field (undefined: nothing applied yet).
export const appliedValue = (node, field) =>
  (node.applied_policy ? node.applied_policy.policy[field] : undefined);

export function overrideText(override, policyValue) {
  const by = override.actor === "watchdog" ? "the watchdog" : override.actor;
  const text = `${FIELD_TEXT[override.field] || override.field} ${override.value} by ${by} since ${clock(override.since)}`;
  return policyValue === undefined || policyValue === null ? text : `${text}; policy ${policyValue}`;
}

// Why and until when, for a tooltip.
export const overrideDetail = (override) => `${override.reason} (lifted by ${clock(override.expires_at)} at the latest)`;

// One line per override of the node, oldest field first as the API lists them.
export const overrideTexts = (node) =>
  (node.overrides || []).map((o) => overrideText(o, appliedValue(node, o.field)));

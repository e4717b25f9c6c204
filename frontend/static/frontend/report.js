// An experiment's results.json as the experiments page shows it: strategy order and labels,
// window labels, the A/B arithmetic against DeltaSync, and the claims as table rows. Pure
// functions (no DOM, no Plotly), unit-tested in tests/js/.
import { isNum } from "./format.js";

export const REFERENCE = "delta_sync";
const ORDER = ["stale", "full_sync", "delta_sync", "prioritized_delta", "liveupdate"];
const LABELS = { stale: "Stale", full_sync: "FullSync", delta_sync: "DeltaSync",
  prioritized_delta: "PrioritizedDelta", liveupdate: "LiveUpdate" };

export const strategyLabel = (s) => LABELS[s] || s;

// The run's strategies: the known ones in their fixed order, then any others by name.
export function strategyNames(results) {
  const names = Object.keys(results.strategies || {});
  return [...ORDER.filter((s) => names.includes(s)), ...names.filter((s) => !ORDER.includes(s)).sort()];
}

// One label per window: the window's own "label" when it has one, else its number from 1.
export function windowLabels(results, n) {
  const windows = results.windows || [];
  return Array.from({ length: n }, (_, i) => {
    const w = windows[i];
    return w && typeof w === "object" && w.label ? String(w.label) : `${i + 1}`;
  });
}

// Percentage points of AUC above the reference, window by window (null where either is missing).
export function gainPerWindow(results, strategy, reference = REFERENCE) {
  const base = results.strategies[reference]?.auc_per_window || [];
  const values = results.strategies[strategy]?.auc_per_window || [];
  return base.map((b, i) => (isNum(values[i]) && isNum(b) ? (values[i] - b) * 100 : null));
}

// Percentage points of mean AUC above the reference, as the strategy table shows it.
export function meanGainText(results, strategy, reference = REFERENCE) {
  if (strategy === reference) return "reference";
  const ref = results.strategies[reference];
  const r = results.strategies[strategy];
  if (!ref || !isNum(r.mean_auc) || !isNum(ref.mean_auc)) return "–";
  const gain = (r.mean_auc - ref.mean_auc) * 100;
  return `${gain >= 0 ? "+" : ""}${gain.toFixed(3)} pts`;
}

// Claims are whatever the experiment wrote: strings, or objects shown key by key with the
// verdict keys last.
const VERDICTS = ["holds", "verdict", "reproduced", "status", "ok"];

export function claimColumns(claims) {
  const all = [...new Set(claims.flatMap((c) => (c && typeof c === "object" ? Object.keys(c) : ["claim"])))];
  return [...all.filter((k) => !VERDICTS.includes(k)), ...all.filter((k) => VERDICTS.includes(k))];
}

export function claimCell(claim, key) {
  const v = claim && typeof claim === "object" ? claim[key] : claim;
  if (v === true) return "✔ holds";
  if (v === false) return "✘ does not hold";
  if (v === null || v === undefined) return "–";
  if (typeof v === "object") return JSON.stringify(v);
  return isNum(v) ? String(+v.toPrecision(6)) : String(v);
}

// "holds", "refuted" or "" (no verdict), from the claim's first verdict key.
export function claimVerdict(claim) {
  if (!claim || typeof claim !== "object") return "";
  const v = VERDICTS.map((k) => claim[k]).find((x) => x !== undefined);
  if (v === true || v === "holds" || v === "reproduced") return "holds";
  return v === false || v === "refuted" ? "refuted" : "";
}

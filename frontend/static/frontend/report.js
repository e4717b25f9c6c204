// An experiment's results.json (dlrm_core/experiment/results_schema.py defines it) as the
// experiments page shows it: every table row, verdict and series comes from here, so the page
// (experiments.js) only draws. Pure functions (no DOM, no Plotly), unit-tested in tests/js/.
import { fmt, isNum } from "./format.js";

export const REFERENCE = "delta_sync";
const ORDER = ["stale", "oracle", "full_sync", "delta_sync", "prioritized_delta", "liveupdate",
  "liveupdate_dense", "hybrid"];
const LABELS = { stale: "Stale", oracle: "Oracle", full_sync: "FullSync", delta_sync: "DeltaSync",
  prioritized_delta: "PrioritizedDelta", liveupdate: "LiveUpdate",
  liveupdate_dense: "LiveUpdate + dense", hybrid: "Hybrid" };

export const strategyLabel = (s) => LABELS[s] || s;

// The run's strategies: the known ones in their fixed order, then any others by name.
export function strategyNames(results) {
  const names = Object.keys(results.strategies || {});
  return [...ORDER.filter((s) => names.includes(s)), ...names.filter((s) => !ORDER.includes(s)).sort()];
}

// One label per window: the window's own "label" when it has one, else its number from 1.
export function windowLabels(results, n, key = "windows") {
  const windows = results[key] || [];
  return Array.from({ length: n }, (_, i) => {
    const w = windows[i];
    return w && typeof w === "object" && w.label ? String(w.label) : `${i + 1}`;
  });
}

// The AUC curve to draw: the short windows when the run has them (10-minute curves), else the
// long ones; `key` names the windows list the x labels come from.
export function aucSeries(results, strategy) {
  const r = results.strategies[strategy] || {};
  const fine = Array.isArray(r.auc_per_fine_window) && r.auc_per_fine_window.length > 0;
  return fine ? { y: r.auc_per_fine_window, key: "fine_windows" } : { y: r.auc_per_window || [], key: "windows" };
}

// The relative AUC gain over DeltaSync per window (%), with its 95% interval over seeds as
// error-bar lengths (null where there is none). Schema-1 files have no gain: it is computed.
export function gainSeries(results, strategy, reference = REFERENCE) {
  const r = results.strategies[strategy] || {};
  let y = r.gain_vs_delta_sync_pct_per_window;
  if (!Array.isArray(y)) {
    const base = results.strategies[reference]?.auc_per_window || [];
    const mine = r.auc_per_window || [];
    y = base.map((b, i) => (isNum(mine[i]) && isNum(b) && b !== 0 ? (100 * (mine[i] - b)) / b : null));
  }
  const cis = r.ci95?.gain_vs_delta_sync_pct_per_window || [];
  const wide = (ci) => ci && isNum(ci.lo) && isNum(ci.hi) && ci.n > 1;
  return {
    y,
    plus: y.map((_, i) => (wide(cis[i]) ? cis[i].hi - cis[i].mean : null)),
    minus: y.map((_, i) => (wide(cis[i]) ? cis[i].mean - cis[i].lo : null)),
  };
}

// "0.6712 [0.6701, 0.6723]" with the 95% interval when there are 2+ seeds, else the value.
export function intervalText(value, ci, format) {
  if (!isNum(value)) return "–";
  if (!ci || !(ci.n > 1) || !isNum(ci.lo) || !isNum(ci.hi)) return format(value);
  return `${format(value)} [${format(ci.lo)}, ${format(ci.hi)}]`;
}

const signedPct = (v) => `${v >= 0 ? "+" : ""}${v.toFixed(2)} %`;
const perHour = (v, format) => (isNum(v) ? `${format(v)} / h` : "–");

export const STRATEGY_COLUMNS = ["Strategy", "Mean AUC (95% CI)", "Gain vs DeltaSync (95% CI)",
  "Fleet bytes", "Fleet update CPU", "Peak memory / node (measured)", "Budget formula",
  "Mean staleness"];

// The strategies table: one row of cell texts per strategy, in STRATEGY_COLUMNS order.
export function strategyRows(results) {
  return strategyNames(results).map((s) => {
    const r = results.strategies[s];
    const ci = r.ci95 || {};
    const gain = s === REFERENCE ? "reference"
      : intervalText(r.mean_gain_vs_delta_sync_pct, ci.mean_gain_vs_delta_sync_pct, signedPct);
    return { strategy: s, cells: [
      strategyLabel(s), intervalText(r.mean_auc, ci.mean_auc, (v) => v.toFixed(4)), gain,
      perHour(r.bytes_per_hour, fmt.bytes), perHour(r.cpu_seconds_per_hour, (v) => `${v.toFixed(1)} CPU-s`),
      fmt.pct(r.peak_measured_memory_pct, 3), fmt.pct(r.peak_memory_overhead_pct, 3), fmt.secs(r.mean_staleness_s),
    ] };
  });
}

// A claim's verdict as a row class: the claim holds, is refuted, or the run cannot tell.
const VERDICT_CLASS = { "within the claimed range": "holds", held: "holds",
  "above the claimed range": "refuted", "below the claimed range": "refuted", "not held": "refuted",
  "not significant": "undecided", "not measured": "undecided" };

export const CLAIM_COLUMNS = ["Claim", "Verdict", "Measured", "Why", "95% interval"];

export function claimRows(results) {
  return (results.claims || []).filter((c) => c && typeof c === "object").map((c) => {
    const iv = c.interval;
    const interval = iv && isNum(iv.lo) && isNum(iv.hi) ? `${+iv.lo.toPrecision(4)} .. ${+iv.hi.toPrecision(4)} (n = ${iv.n})` : "–";
    return { id: c.id || "", verdictClass: VERDICT_CLASS[c.verdict] || "undecided",
      cells: [String(c.claim ?? "–"), String(c.verdict ?? "–"), String(c.measured ?? "–"), String(c.why || "–"), interval] };
  });
}

// The leak audit: "passed", "failed" (with the strategies that peeked) or "off".
export function auditSummary(results) {
  const a = results.audit;
  if (!a || !a.enabled) return { state: "off", text: "Not run (liveupdate experiment --audit runs it)." };
  const runs = Array.isArray(a.runs) ? a.runs : [];
  if (a.passed) {
    return { state: "passed", text: `Passed: re-scored with every not-yet-due label permuted, every score identical (${runs.length} run${runs.length === 1 ? "" : "s"}).` };
  }
  const leaking = [...new Set(runs.flatMap((r) => r.leaking || []))].sort();
  return { state: "failed", text: `FAILED: ${leaking.length ? leaking.join(", ") : "no label changed"} scored differently once not-yet-due labels were permuted.` };
}

// The experiment process's memory as /proc reported it.
export function processMemoryText(results) {
  const p = results.process;
  if (!p) return "–";
  const parts = [["peak RSS", p.peak_rss], ["RSS", p.rss], ["PSS", p.pss]].filter(([, v]) => isNum(v));
  return parts.length ? parts.map(([k, v]) => `${k} ${fmt.bytes(v)}`).join(" · ") : "–";
}

// "4 nodes, sticky-user routing, a transfer per node · 3 seeds".
export function fleetText(results) {
  const f = results.fleet;
  const seeds = Array.isArray(results.seeds) ? results.seeds.length : 0;
  const parts = [];
  if (f && isNum(f.nodes)) {
    parts.push(`${fmt.plural(f.nodes, "node")}, ${f.routing} routing, ${f.multicast ? "one multicast transfer" : "a transfer per node"} per sync`);
  }
  if (seeds) parts.push(fmt.plural(seeds, "seed"));
  return parts.join(" · ");
}

// Per-seed mean AUC: the header (Seed, then each strategy) and one row per seed.
export function perSeedTable(results) {
  const names = strategyNames(results).filter((s) => Array.isArray(results.strategies[s].per_seed));
  const seeds = [...new Set(names.flatMap((s) => results.strategies[s].per_seed.map((p) => p.seed)))];
  const rows = seeds.map((seed) => [String(seed), ...names.map((s) => {
    const p = results.strategies[s].per_seed.find((x) => x.seed === seed);
    return p && isNum(p.mean_auc) ? p.mean_auc.toFixed(4) : "–";
  })]);
  return { head: ["Seed", ...names.map(strategyLabel)], rows };
}

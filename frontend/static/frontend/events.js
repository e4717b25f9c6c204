// Node events and action results in words: one line per event kind instead of raw JSON, and
// the frequent kinds (rank changes, prunes: several a second) folded into one row per interval.
// Pure functions (no DOM, no network), unit-tested in tests/js/.
import { fmt, isNum } from "./format.js";

export const EVENT_KINDS = ["rank_change", "prune", "qos", "policy", "snapshot", "rebase", "sync"];
export const KIND_LABELS = { rank_change: "rank change", prune: "prune", qos: "QoS", policy: "policy",
  snapshot: "snapshot", rebase: "rebase", sync: "delta sync" };
export const FREQUENT = ["rank_change", "prune"];

const num = (v) => (isNum(v) ? String(+v.toPrecision(4)) : String(v));
export const shortName = (path) => String(path || "").split("/").pop();

// "key: value, key: value" for what no formatter knows (nested objects as their key count).
export function plainPairs(detail) {
  if (!detail || typeof detail !== "object") return detail === undefined ? "" : String(detail);
  return Object.entries(detail).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => {
    if (Array.isArray(v)) return `${k}: ${v.length <= 4 ? v.map(num).join(", ") : `${v.length} items`}`;
    if (typeof v === "object") return `${k}: {${Object.keys(v).length} fields}`;
    return `${k}: ${num(v)}`;
  }).join(", ");
}

const FORMATS = {
  rank_change: (d) => `${d.table}: rank ${d.from ?? "?"} → ${d.to}${d.reason ? ` (${d.reason})` : ""}`,
  prune: (d) => `${d.table}: active rows ${d.from ?? "?"} → ${d.to}${d.reason ? ` (${d.reason})` : ""}`,
  qos: (d) => [d.state ? `trainer ${d.state}` : "", isNum(d.duty) ? `duty ${(100 * d.duty).toFixed(0)} %` : "",
    d.reason || "", isNum(d.p99_ms) ? `P99 ${d.p99_ms.toFixed(1)} ms` : ""].filter(Boolean).join(" · "),
  policy: (d) => [d.name ? `${d.name}${d.version ? ` v${d.version}` : ""} applied` : "policy applied",
    d.mode ? `mode ${d.mode}` : "",
    d.ranks ? `ranks ${Object.entries(d.ranks).map(([t, r]) => `${t} ${r}`).join(", ")}` : "",
    d.placement && d.placement.inference_cpus ? `inference on cpu ${d.placement.inference_cpus.join(",")}` +
      `, trainer on cpu ${(d.placement.trainer_cpus || []).join(",") || "–"}` : ""].filter(Boolean).join(" · "),
  snapshot: (d) => (d.trainer_restarted ? `trainer restarted from ${d.restored || "the bare base"}`
    : d.refused ? `restore of ${d.refused} refused: ${d.error}`
    : d.restored ? `restored ${d.restored}${d.reason ? ` (${d.reason})` : ""}`
    : `saved ${d.snapshot}${isNum(d.version) ? ` (factor version ${d.version})` : ""}` +
      `${isNum(d.auc) ? `, AUC ${d.auc.toFixed(4)}` : ""}` +
      `${d.checkpoint ? ` on ${shortName(d.checkpoint)}` : ""}`),
  rebase: (d) => `onto ${d.checkpoint && typeof d.checkpoint === "object"
    ? d.checkpoint.name || shortName(d.checkpoint.location) : shortName(d.checkpoint)}` +
    `${d.keep_factors ? ", LoRA factors kept" : ""}`,
  sync: (d) => {
    const tables = Object.entries(d.tables || {});
    const rows = tables.reduce((sum, [, n]) => sum + (isNum(n) ? n : 0), 0);
    return [`${rows} rows landed${tables.length ? ` (${tables.map(([t, n]) => `${t} ${n}`).join(", ")})` : ""}`,
      isNum(d.bytes) ? fmt.bytes(d.bytes) : "",
      isNum(d.trained_until) && isNum(d.created_at)
        ? `newest label learnt ${fmt.secs(Math.max(0, d.created_at - d.trained_until))} before it was made` : ""]
      .filter(Boolean).join(" · ");
  },
};

// One event's detail as a line of text.
export function describeEvent(kind, detail) {
  const format = FORMATS[kind];
  if (!format || !detail || typeof detail !== "object") return plainPairs(detail);
  try {
    return format(detail);
  } catch {
    return plainPairs(detail);
  }
}

// Events ({ts, kind, detail}, any order) as table rows, newest first: frequent kinds folded per
// `interval` seconds into {ts (newest in the fold), kind, count, text}, the others one row each.
// `kinds` (a Set) keeps only those kinds.
export function eventRows(events, { interval = 60, kinds = null } = {}) {
  const rows = [];
  const folds = new Map();
  [...events].sort((a, b) => b.ts - a.ts).forEach((e) => {
    if (kinds && !kinds.has(e.kind)) return;
    if (!FREQUENT.includes(e.kind)) {
      rows.push({ ts: e.ts, kind: e.kind, count: 1, text: describeEvent(e.kind, e.detail) });
      return;
    }
    const key = `${e.kind}:${Math.floor(e.ts / interval)}`;
    if (!folds.has(key)) {
      const row = { ts: e.ts, kind: e.kind, count: 0, text: "", tables: new Map() };
      folds.set(key, row);
      rows.push(row);
    }
    const row = folds.get(key);
    row.count += 1;
    const table = (e.detail && e.detail.table) || "?";
    row.tables.set(table, [e, ...(row.tables.get(table) || [])]); // oldest first
  });
  rows.forEach((row) => {
    if (!row.tables) return;
    row.text = row.count === 1 ? describeEvent(row.kind, [...row.tables.values()][0][0].detail)
      : foldText(row);
    delete row.tables;
  });
  return rows;
}

// "12 prunes in this minute · item: active rows 900 → 610 (8) · user: …": per table, the first
// "from" and the last "to" of the fold.
function foldText(row) {
  const what = row.kind === "prune" ? "active rows" : "rank";
  const parts = [...row.tables.entries()].sort().map(([table, list]) => {
    const first = list[0].detail || {};
    const last = list[list.length - 1].detail || {};
    return `${table}: ${what} ${first.from ?? "?"} → ${last.to ?? "?"} (${list.length})`;
  });
  return `${row.count} ${KIND_LABELS[row.kind]}s · ${parts.join(" · ")}`;
}

// When the newest delta sync among `events` ({ts, kind}, any order) landed (Unix s), or null.
export function newestSync(events) {
  return (events || []).reduce((t, e) => (e && e.kind === "sync" && isNum(e.ts) && (t === null || e.ts > t)
    ? e.ts : t), null);
}

// A node action's result in words (the API's JSON of what the node returned).
export function describeResult(action, result) {
  if (result === null || result === undefined) return "";
  if (typeof result !== "object") return String(result);
  if (action === "apply_policy") return describeEvent("policy", result);
  if (action === "snapshot" || action === "restore_snapshot") return describeEvent("snapshot", result);
  if (action === "list_snapshots" && Array.isArray(result.snapshots)) {
    return `${result.snapshots.length} snapshot${result.snapshots.length === 1 ? "" : "s"} kept`;
  }
  if (action === "rebase") return describeEvent("rebase", result);
  if (action === "apply_delta") return describeEvent("sync", result);
  if (action === "pause" || action === "resume") {
    return [result.throttle ? `trainer ${result.throttle}` : "", result.mode ? `mode ${result.mode}` : ""]
      .filter(Boolean).join(" · ") || plainPairs(result);
  }
  return plainPairs(result);
}

// Grafana-style annotations of the time charts: what happened to a node (a policy applied, a
// watchdog override, a delta sync landed, a rebase, a snapshot saved or restored, an alert raised
// or resolved) as a vertical line across each chart with a small labelled marker on top whose
// hover text says what it was. Pure functions (no DOM, no network), unit-tested in tests/js/.
import { describeEvent } from "./events.js";
import { epoch, isNum } from "./format.js";

// At most this many marks are kept for a page, and drawn on a chart (the newest): a week of
// 3-minute syncs would otherwise cost thousands of shapes on every redraw.
export const MAX_MARKS = 2000;
export const MAX_DRAWN = 150;

// kind -> how it is drawn: line colour, dash, the marker's glyph and its name in the hover.
export const MARK_STYLES = {
  policy: { color: "#2458d6", dash: "dot", glyph: "P", label: "policy applied" },
  override: { color: "#e07b00", dash: "dash", glyph: "W", label: "watchdog override" },
  sync: { color: "#8a5cf5", dash: "dot", glyph: "S", label: "delta sync landed" },
  rebase: { color: "#00838f", dash: "dash", glyph: "R", label: "rebase" },
  snapshot: { color: "#1a7f37", dash: "dot", glyph: "◆", label: "snapshot" },
  restore: { color: "#c2185b", dash: "dash", glyph: "↺", label: "restore" },
  alert: { color: "#b42318", dash: "solid", glyph: "!", label: "alert raised" },
  resolved: { color: "#6b7280", dash: "dot", glyph: "✓", label: "alert resolved" },
};

const overrideText = (overrides) => Object.entries(overrides)
  .map(([field, value]) => `${field} ${isNum(value) ? +value.toPrecision(4) : value}`).join(", ");

// A node event ({kind, ts: Unix s, detail}) as a mark {t, kind, node, text}, or null for the
// kinds that are not annotated (rank changes, prunes and QoS steps have charts of their own).
export function eventMark(node, { kind, ts, detail }) {
  if (!isNum(ts)) return null;
  const d = detail && typeof detail === "object" ? detail : {};
  const mark = (k, text) => ({ t: ts, kind: k, node, text });
  if (kind === "policy") {
    const overrides = d.overrides && typeof d.overrides === "object" ? d.overrides : {};
    if (Object.keys(overrides).length) return mark("override", `${overrideText(overrides)} (policy ${d.name || "?"} v${d.version ?? "?"})`);
    return mark("policy", describeEvent("policy", d));
  }
  if (kind === "snapshot" && (d.restored !== undefined || d.refused || d.trainer_restarted)) {
    return mark("restore", describeEvent("snapshot", d));
  }
  if (kind === "restore") return mark("restore", describeEvent("snapshot", { restored: d.snapshot || d.restored, ...d }));
  if (["sync", "rebase", "snapshot"].includes(kind)) return mark(kind, describeEvent(kind, d));
  return null;
}

// An alert (the API's or a live event's: raised_at and resolved_at in Unix s) as its marks.
export function alertMarks(node, alert) {
  const what = `${String(alert.kind || "alert").replace("_", " ")} (${alert.severity || "?"}): ${alert.message || ""}`;
  const marks = [];
  if (isNum(alert.raised_at)) marks.push({ t: alert.raised_at, kind: "alert", node, text: what });
  if (isNum(alert.resolved_at)) marks.push({ t: alert.resolved_at, kind: "resolved", node, text: what });
  return marks;
}

// The API's node events and alerts (ISO times) of `node` as marks.
export function marksFromApi(node, events, alerts) {
  return [
    ...events.map((e) => eventMark(node, { kind: e.kind, ts: epoch(e.ts), detail: e.detail })),
    ...alerts.flatMap((a) => alertMarks(node, { ...a, raised_at: epoch(a.raised_at),
      resolved_at: epoch(a.resolved_at) })),
  ].filter(Boolean);
}

// Adds marks to a list kept in time order, without duplicates (a live event may also come
// with the next range load), keeping the newest MAX_MARKS. Returns whether anything was added.
export function addMarks(list, marks) {
  const key = (m) => `${m.t}|${m.kind}|${m.node}|${m.text}`;
  const known = new Set(list.map(key));
  const fresh = marks.filter((m) => m && !known.has(key(m)) && known.add(key(m)));
  if (!fresh.length) return false;
  list.push(...fresh);
  list.sort((a, b) => a.t - b.t);
  if (list.length > MAX_MARKS) list.splice(0, list.length - MAX_MARKS);
  return true;
}

function hoverText(m, subject) {
  const style = MARK_STYLES[m.kind];
  const when = new Date(m.t * 1000).toLocaleTimeString();
  const on = m.node === subject ? "" : ` on ${m.node}`;
  return `<b>${style.label}${on}</b> · ${when}<br>${escapeHtml(m.text)}`;
}

const escapeHtml = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

// Plotly layout parts for the marks within [start, end] (Unix s), the newest MAX_DRAWN: a
// dashed vertical line per mark (shapes) and a glyph at the top of the plot with its hover text
// (annotations). `subject` is the page's node: marks of another node (its baseline) say whose.
export function annotationLayout(marks, [start, end], subject = null) {
  const inRange = marks.filter((m) => m.t >= start && m.t <= end && MARK_STYLES[m.kind]).slice(-MAX_DRAWN);
  const shapes = inRange.map((m) => {
    const { color, dash } = MARK_STYLES[m.kind];
    const x = new Date(m.t * 1000);
    return { type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, layer: "below",
      line: { color, width: 1.5, dash }, name: m.kind };
  });
  const annotations = inRange.map((m) => {
    const { color, glyph } = MARK_STYLES[m.kind];
    return { x: new Date(m.t * 1000), xref: "x", y: 1, yref: "paper", yanchor: "top", text: glyph,
      showarrow: false, font: { color, size: 11 }, bgcolor: "#fff", bordercolor: color, borderpad: 1,
      hovertext: hoverText(m, subject), captureevents: true, name: `mark:${m.kind}` };
  });
  return { shapes, annotations };
}

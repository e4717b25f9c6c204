// The A/B readout's DOM and charts, shared by the fleet page and the node page: the lead of a
// LiveUpdate node over its baseline node with its 95 % interval (ab.js), the AUC gap over time,
// and both nodes' freshness lag over time.
import { annotationLayout } from "./annotations.js";
import { api } from "./api.js";
import { batchMeanInterval, leadText, newest, pairByTime } from "./ab.js";
import { el } from "./dom.js";
import { epoch, errorText, fmt, isNum } from "./format.js";
import { layout, plotConfig } from "./plot.js";

const COLORS = { gap: "#2458d6", live: "#2458d6", base: "#8a5cf5", zero: "#1d2330" };
const dates = (ts) => ts.map((t) => new Date(t * 1000));
const iso = (s) => new Date(s * 1000).toISOString();

// The pair's annotations (ab.marks: the live node's events and alerts, the baseline's syncs).
function annotate(lay, ab) {
  const marks = annotationLayout(ab.marks || [], ab.range, ab.liveName);
  lay.shapes = [...(lay.shapes || []), ...marks.shapes];
  lay.annotations = marks.annotations;
  return lay;
}

// One node's AUC and freshness lag over [start, end), bucketed by the server: {t, auc, fresh}.
export async function loadAbSeries(node, start, end) {
  const res = await api("/api/telemetry/", {
    params: { node, start: iso(start), end: iso(end), metrics: "auc,freshness_lag_s" },
  });
  if (!res.ok) throw new Error(`telemetry of ${node}: ${errorText(res)}`);
  const mid = res.data.bucket_s > 1 ? res.data.bucket_s / 2 : 0;
  return { t: res.data.t.map((t) => t + mid), auc: res.data.avg.auc,
    fresh: res.data.avg.freshness_lag_s, bucket_s: res.data.bucket_s };
}

// When a node's newest delta sync landed (Unix s), or null: its newest "sync" event.
export async function loadLastSync(node) {
  const res = await api("/api/events/", { params: { node, kind: "sync", limit: 1 } });
  if (!res.ok) throw new Error(`sync events of ${node}: ${errorText(res)}`);
  const last = res.data.results[0];
  return last ? epoch(last.ts) : null;
}

// How fresh a node's model is, in words: its newest freshness lag (a delta-sync node's: the age
// of the newest label its last sync learnt) and when that sync landed, or why there is none.
function freshnessText(name, series, trains, syncedAt) {
  const last = newest(series.t, series.fresh || []);
  if (!trains) {
    if (!isNum(syncedAt)) {
      return last ? `${name}: freshness lag ${fmt.secs(last.value)} (newest sample); no delta sync in its events`
        : `${name}: no delta sync has landed (a frozen node never syncs)`;
    }
    return [`${name}: synced `, el("span", { class: "synced-ago", dataset: { ago: syncedAt } }, fmt.ago(syncedAt)),
      last ? ` · freshness lag ${fmt.secs(last.value)} (age of the newest label it learnt, newest sample)` : ""];
  }
  if (last) return `${name}: freshness lag ${fmt.secs(last.value)} (median, newest sample)`;
  return `${name}: no freshness lag in this range (the trainer installed no version)`;
}

// The number an operator looks for first, then its interval and what it rests on.
function readout(box, ab, pairs, ci) {
  const words = leadText(ci);
  box.replaceChildren(
    el("p", { class: "ab-lead" },
      el("span", { class: "sub" }, `${ab.liveName} over ${ab.baseName}: `),
      el("strong", { class: `ab-number ${words.level}`, dataset: { lead: ci ? ci.mean : "" } }, words.lead),
      " ", el("span", { class: `badge ${words.level === "ok" ? "running" : words.level === "bad" ? "paused" : ""}` },
        words.verdict)),
    el("p", { class: "sub" }, words.interval ? `${words.interval} · mean of ${fmt.plural(pairs.t.length, "paired point")} ` +
      `in ${ci.batches} stretches over ${ab.rangeText}` : `over ${ab.rangeText}`),
    el("ul", { class: "ab-fresh" },
      el("li", {}, freshnessText(ab.liveName, ab.live, true)),
      el("li", { dataset: { fresh: ab.baseName } }, freshnessText(ab.baseName, ab.base, ab.baseTrains, ab.baseSyncedAt))));
}

function gapChart(id, ab, pairs, ci) {
  const lay = layout("AUC gap (LiveUpdate − baseline)", { showlegend: true });
  lay.yaxis.rangemode = "normal";
  lay.yaxis.tickformat = "+.3f";
  lay.xaxis = { ...lay.xaxis, range: dates(ab.range) };
  lay.shapes = [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: COLORS.zero, width: 1 } }];
  if (ci) {
    lay.shapes.push({ type: "rect", xref: "paper", x0: 0, x1: 1, y0: ci.low, y1: ci.high,
      fillcolor: "rgba(36, 88, 214, 0.12)", line: { width: 0 } });
  }
  const traces = [{ name: `${ab.liveName} − ${ab.baseName}`, x: dates(pairs.t), y: pairs.gap,
    type: "scatter", mode: pairs.t.length < 80 ? "lines+markers" : "lines",
    line: { color: COLORS.gap, width: 2 }, hovertemplate: "%{y:+.4f}<extra>AUC gap</extra>" }];
  if (ci) {
    traces.push({ name: `mean ${leadText(ci).lead} (band: 95 % interval)`, x: dates(ab.range),
      y: [ci.mean, ci.mean], type: "scatter", mode: "lines", line: { color: COLORS.gap, dash: "dash", width: 1 } });
  }
  Plotly.react(document.getElementById(id), traces, annotate(lay, ab), plotConfig);
}

function freshChart(id, ab) {
  const lay = layout("freshness lag (s)", { showlegend: true });
  lay.xaxis = { ...lay.xaxis, range: dates(ab.range) };
  const traces = [[ab.liveName, ab.live, COLORS.live], [ab.baseName, ab.base, COLORS.base]].map(([name, s, color]) => ({
    name: (s.fresh || []).some(isNum) ? name : `${name} (not reported)`, x: dates(s.t), y: s.fresh || [],
    type: "scatter", mode: "lines", line: { color, width: 2 }, connectgaps: false }));
  Plotly.react(document.getElementById(id), traces, annotate(lay, ab), plotConfig);
}

// Draws the readout into #<prefix>-readout, #<prefix>-gap and #<prefix>-fresh. ab: {liveName,
// baseName, baseTrains, baseSyncedAt (Unix s of its newest delta sync, or null), live: {t, auc,
// fresh}, base: {...}, tolerance (s), range: [start, end], rangeText, marks (annotations.js)}.
export function drawAb(prefix, ab) {
  const pairs = pairByTime({ t: ab.live.t, y: ab.live.auc }, { t: ab.base.t, y: ab.base.auc }, ab.tolerance);
  const ci = batchMeanInterval(pairs.gap);
  readout(document.getElementById(`${prefix}-readout`), ab, pairs, ci);
  if (globalThis.Plotly) { // the fleet page loads it after its first readout
    gapChart(`${prefix}-gap`, ab, pairs, ci);
    freshChart(`${prefix}-fresh`, ab);
  }
  return ci;
}

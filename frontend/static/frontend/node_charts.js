// The node page's Plotly charts, drawn from the page state kept by node.js (Plotly.react: the
// chart divs keep their zoom, and the browser tests read each div's .data). Every time chart
// carries the node's annotations (state.marks: policy applies, overrides, syncs, ...).
import { drawAb } from "./ab_panel.js";
import { annotationLayout } from "./annotations.js";
import { isNum, trainsLocally } from "./format.js";
import { layout, plotConfig } from "./plot.js";
import { clippedTop, rangeBounds, THROTTLE_STATES } from "./series.js";

const COLORS = { node: "#2458d6", baseline: "#8a5cf5", limit: "#b42318", trainer: "#e07b00",
  inference: "#2458d6", other: "#9aa3b5" };
const THROTTLE_COLORS = { running: "#1a7f37", throttled: "#e07b00", paused: "#b42318" };
const RANK_PALETTE = ["#2458d6", "#1a7f37", "#e07b00", "#8a5cf5", "#c2185b", "#00838f"];
const dates = (ts) => ts.map((t) => new Date(t * 1000));
const mode = (n) => (n < 80 ? "lines+markers" : "lines");
const xRange = (state) => dates(rangeBounds(state.range));

function timeLayout(state, yTitle, extra = {}) {
  const base = layout(yTitle, { showlegend: true, ...extra });
  base.xaxis = { ...base.xaxis, range: xRange(state) };
  const marks = annotationLayout(state.marks, rangeBounds(state.range), state.name);
  base.shapes = marks.shapes;
  base.annotations = marks.annotations;
  if (!state.main.t.length) {
    base.annotations.push({ text: `no samples from ${state.name} in this range`, xref: "paper",
      yref: "paper", x: 0.5, y: 0.5, showarrow: false, font: { size: 13, color: "#5b6475" } });
  }
  return base;
}

function line(name, ts, ys, color, extra = {}) {
  return { name, x: dates(ts), y: ys, type: "scatter", mode: mode(ts.length),
    line: { color, width: 2 }, marker: { size: 5 }, connectgaps: false, ...extra };
}

function limitLine(name, value, state) {
  const [x0, x1] = xRange(state);
  return { name, x: [x0, x1], y: [value, value], type: "scatter", mode: "lines",
    line: { color: COLORS.limit, dash: "dash", width: 2 }, hoverinfo: "name+y" };
}

// Charts in a hidden card (a delta-sync node's trainer charts) are not drawn.
function react(id, traces, lay) {
  const div = document.getElementById(id);
  if (div.closest("[hidden]")) return;
  Plotly.react(div, traces, lay, plotConfig);
}

// A y axis whose top ignores start-up spikes (the clipped points are still in the hover).
function clipTop(lay, values, floor = 0) {
  const top = clippedTop(values, { floor });
  if (top !== null) {
    lay.yaxis.range = [0, top];
    lay.yaxis.title.text += " (spikes clipped)";
  }
  return lay;
}

function auc(state) {
  const m = state.main;
  const traces = [line(`${state.name} AUC`, m.t, m.auc, COLORS.node)];
  if (state.baseline) {
    traces.push(line(`${state.baseline} AUC (baseline)`, state.base.t, state.base.auc,
      COLORS.baseline, { line: { color: COLORS.baseline, width: 2, dash: "dot" } }));
  }
  const lay = timeLayout(state, "AUC (windowed)");
  lay.yaxis.rangemode = "normal";
  lay.yaxis.tickformat = ".3f";
  react("chart-auc", traces, lay);
}

const bucketMax = (state) => (state.bucket_s > 1 ? " (bucket max)" : "");

function p99(state) {
  const m = state.main;
  const traces = [line(`${state.name} P99${bucketMax(state)}`, m.t, m.p99, COLORS.node),
    line("P95", m.t, m.p95, "#5b8def", { line: { color: "#5b8def", width: 1 } }),
    line("P50", m.t, m.p50, "#9aa3b5", { line: { color: "#9aa3b5", width: 1 } })];
  const sla = state.policy && state.policy.sla_p99_ms;
  if (isNum(sla)) traces.push(limitLine(`SLA ${sla} ms`, sla, state));
  react("chart-p99", traces, clipTop(timeLayout(state, "latency (ms)"), m.p99, isNum(sla) ? sla : 0));
}

function qps(state) {
  react("chart-qps", [line(`${state.name} requests/s`, state.main.t, state.main.qps, COLORS.node)],
    clipTop(timeLayout(state, "requests/s"), state.main.qps));
}

function logloss(state) {
  const traces = [line(`${state.name} log loss`, state.main.t, state.main.logloss, COLORS.node)];
  if (state.baseline) {
    traces.push(line(`${state.baseline} log loss (baseline)`, state.base.t, state.base.logloss,
      COLORS.baseline, { line: { color: COLORS.baseline, width: 2, dash: "dot" } }));
  }
  const lay = timeLayout(state, "log loss (windowed)");
  lay.yaxis.rangemode = "normal";
  react("chart-logloss", traces, lay);
}

function losses(state) {
  const m = state.main;
  const bar = (name, ys, color) => ({ name, x: dates(m.t), y: ys, type: "bar", marker: { color } });
  react("chart-losses", [bar("skipped batches", m.skipped, COLORS.trainer),
    bar("dropped samples", m.dropped, COLORS.limit)],
  timeLayout(state, "count per sample", { barmode: "group" }));
}

// The A/B readout against the chosen baseline, for a node that trains locally.
function abReadout(state) {
  const card = document.getElementById("node-ab-card");
  const show = Boolean(state.baseline) && trainsLocally(state.policy);
  card.hidden = !show;
  if (!show) return;
  const basePolicy = state.policies.get((state.nodes.find((n) => n.name === state.baseline) || {}).policy);
  const [start, end] = rangeBounds(state.range);
  drawAb("node-ab", { liveName: state.name, baseName: state.baseline, baseTrains: trainsLocally(basePolicy),
    baseSyncedAt: state.syncedAt[state.baseline] ?? null,
    live: state.main, base: state.base, tolerance: Math.max(1, state.bucket_s), range: [start, end],
    marks: state.marks,
    rangeText: state.range.live ? `the last ${Math.round(state.range.seconds / 60)} min` : "the chosen range" });
}

function memory(state) {
  const traces = [line(`${state.name} overhead${bucketMax(state)}`, state.main.t, state.main.mem, COLORS.node)];
  const budget = state.policy && state.policy.memory_budget_pct;
  if (isNum(budget)) traces.push(limitLine(`budget ${budget} %`, budget, state));
  react("chart-memory", traces, timeLayout(state, "LoRA memory (% of tables)"));
}

function rank(state) {
  const { tables, marks } = state.ranks;
  const traces = Object.keys(tables).sort().map((table, i) => {
    const color = RANK_PALETTE[i % RANK_PALETTE.length];
    return line(table, tables[table].t, tables[table].r, color, { line: { shape: "hv", width: 2, color } });
  });
  traces.push({ name: "rank change", x: dates(marks.t), y: marks.r, text: marks.text,
    type: "scatter", mode: "markers", hovertemplate: "%{text}<extra>rank change</extra>",
    marker: { symbol: "diamond", size: 10, color: "#1d2330", line: { color: "#fff", width: 1 } } });
  const lay = timeLayout(state, "rank r");
  lay.yaxis.dtick = 2;
  react("chart-rank", traces, lay);
}

// One marker trace per throttle state, on a category axis under the throughput.
function throttleTraces(th) {
  return THROTTLE_STATES.map((s) => {
    const idx = th.s.map((v, i) => (v === s ? i : -1)).filter((i) => i >= 0);
    return { name: s, x: idx.map((i) => new Date(th.t[i] * 1000)), y: idx.map(() => s),
      type: "scatter", mode: "markers", yaxis: "y3", showlegend: false,
      marker: { color: THROTTLE_COLORS[s], size: 8, symbol: "square" },
      hovertemplate: `${s}<extra>throttle</extra>` };
  });
}

function trainer(state) {
  const m = state.main;
  const traces = [
    line("samples/s", m.t, m.sps, COLORS.trainer),
    line("duty (%)", m.t, m.duty.map((d) => (isNum(d) ? d * 100 : null)), "#6b7280",
      { yaxis: "y2", line: { color: "#6b7280", width: 1, dash: "dot" } }),
    ...throttleTraces(state.throttle),
  ];
  const lay = timeLayout(state, "trainer samples/s", {
    yaxis: { title: { text: "samples/s" }, domain: [0.34, 1], rangemode: "tozero", automargin: true },
    yaxis2: { title: { text: "duty (%)" }, overlaying: "y", side: "right", range: [0, 105],
      tickvals: [0, 25, 50, 75, 100], showgrid: false },
    yaxis3: { title: { text: "throttle" }, domain: [0, 0.24], type: "category",
      categoryorder: "array", categoryarray: THROTTLE_STATES, range: [-0.5, 2.5], automargin: true },
  });
  lay.xaxis.anchor = "y3"; // time ticks below the throttle strip, not across it
  lay.margin.r = 56;
  react("chart-trainer", traces, lay);
}

// Roles of the cores: the node's registered topology, else the placement its runtime reported
// in its newest "policy" event.
function coreRoles(state) {
  const registered = (state.node && state.node.topology) || {};
  const topo = registered.inference_cpus ? registered : state.placement || {};
  const inf = new Set(topo.inference_cpus || []);
  const trn = new Set(topo.trainer_cpus || []);
  const role = (i) => (trn.has(i) && !inf.has(i) ? "trainer" : inf.has(i) ? "inference" : "other");
  return { role, known: inf.size > 0 || trn.size > 0 };
}

function cpu(state) {
  const values = state.cpu.values || [];
  const { role, known } = coreRoles(state);
  const groups = { inference: [], trainer: [], other: [] };
  values.forEach((v, i) => groups[role(i)].push(i));
  const names = { inference: "inference cores", trainer: "trainer cores",
    other: known ? "other cores" : "cores (placement not reported)" };
  const traces = Object.entries(groups).filter(([, idx]) => idx.length).map(([r, idx]) => ({
    name: names[r], type: "bar", x: idx.map((i) => `cpu ${i}`), y: idx.map((i) => values[i]),
    marker: { color: COLORS[r] }, hovertemplate: "%{x}: %{y:.0f} %<extra></extra>" }));
  const when = isNum(state.cpu.ts)
    ? `sample at ${new Date(state.cpu.ts * 1000).toLocaleTimeString()}` : "no sample yet";
  react("chart-cpu", traces, layout("busy (%)", {
    xaxis: { type: "category", title: { text: `core (${when})` },
      categoryorder: "array", categoryarray: values.map((v, i) => `cpu ${i}`) },
    yaxis: { title: { text: "busy (%)" }, range: [0, 100] },
    hovermode: "closest", barmode: "group",
  }));
}

export const chartSteps = [abReadout, auc, p99, qps, logloss, memory, rank, trainer, losses, cpu]; // in page order
export const renderCharts = (state) => chartSteps.forEach((draw) => draw(state));
export function renderLimits(state) {
  p99(state);
  memory(state);
}

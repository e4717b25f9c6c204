// Experiment report: pick a stored run or import a results.json (validated by the API), then
// chart AUC per window, the gain over DeltaSync, bytes and CPU per strategy, and the claims.
import { api, listAll } from "./api.js";
import { el } from "./dom.js";
import { byteUnit, epoch, fieldErrors, fmt, isNum } from "./format.js";
import { layout, plotConfig } from "./plot.js";
import {
  claimCell, claimColumns, claimVerdict, gainPerWindow, meanGainText, REFERENCE, strategyLabel,
  strategyNames, windowLabels,
} from "./report.js";

const COLORS = { stale: "#9aa3b5", full_sync: "#1a7f37", delta_sync: "#e07b00",
  prioritized_delta: "#8a5cf5", liveupdate: "#2458d6" };
const runs = new Map();
const byWindow = (yTitle) => {
  const lay = layout(yTitle, { xaxis: { type: "category", title: { text: "time window (#)" } }, hovermode: "closest" });
  lay.yaxis.rangemode = "normal";
  return lay;
};
const cpuText = (v) => (isNum(v) ? `${v.toFixed(1)} s` : "–");

function aucChart(results, names) {
  const n = Math.max(0, ...names.map((s) => (results.strategies[s].auc_per_window || []).length));
  const x = windowLabels(results, n);
  const hover = x.map((_, i) => {
    const w = (results.windows || [])[i];
    return w === undefined ? "" : JSON.stringify(w).slice(0, 200);
  });
  const traces = names.map((s) => ({
    name: strategyLabel(s), x, y: results.strategies[s].auc_per_window, type: "scatter",
    mode: "lines+markers", line: { color: COLORS[s], width: 2 }, marker: { size: 5 },
    text: hover, hovertemplate: `${strategyLabel(s)}: %{y:.4f}<extra>%{text}</extra>`,
  }));
  const lay = byWindow("AUC");
  lay.yaxis.tickformat = ".3f";
  Plotly.react("chart-exp-auc", traces, lay, plotConfig);
}

function gainChart(results, names) {
  const box = document.getElementById("chart-exp-gain");
  if (!results.strategies[REFERENCE]) {
    Plotly.purge(box);
    box.replaceChildren(el("p", { class: "empty" }, "This run has no delta_sync strategy to compare with."));
    return;
  }
  const x = windowLabels(results, (results.strategies[REFERENCE].auc_per_window || []).length);
  const traces = names.filter((s) => s !== REFERENCE).map((s) => ({
    name: strategyLabel(s), x, y: gainPerWindow(results, s), type: "scatter", mode: "lines+markers",
    line: { color: COLORS[s], width: 2 }, hovertemplate: `${strategyLabel(s)}: %{y:+.3f} pts<extra></extra>`,
  }));
  const lay = byWindow("AUC gain (percentage points)");
  lay.shapes = [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#1d2330", width: 1 } }];
  lay.yaxis.zeroline = true;
  Plotly.react(box, traces, lay, plotConfig);
}

function barChart(id, results, names, key, yTitle, format, scale = 1) {
  const raw = names.map((s) => results.strategies[s][key]);
  const traces = [{ type: "bar", x: names.map(strategyLabel), y: raw.map((v) => (isNum(v) ? v / scale : null)),
    marker: { color: names.map((s) => COLORS[s] || "#5b6475") }, text: raw.map(format),
    textposition: "outside", cliponaxis: false, hovertemplate: "%{x}: %{text}<extra></extra>" }];
  const lay = layout(yTitle, { xaxis: { type: "category", title: { text: "strategy" } }, showlegend: false, hovermode: "closest" });
  lay.margin.t = 36;
  Plotly.react(id, traces, lay, plotConfig);
}

const TABLE_HEAD = ["Strategy", "Mean AUC", "Gain vs DeltaSync", "Mean log loss", "Bytes moved", "CPU time",
  "Peak memory overhead", "Mean staleness"];

function strategyTable(results, names) {
  const rows = names.map((s) => {
    const r = results.strategies[s];
    const cells = [strategyLabel(s), fmt.auc(r.mean_auc), meanGainText(results, s), fmt.num(r.mean_logloss, 4),
      fmt.bytes(r.bytes_moved), cpuText(r.cpu_seconds), fmt.pct(r.peak_memory_overhead_pct), fmt.secs(r.mean_staleness_s)];
    return el("tr", { dataset: { strategy: s } }, cells.map((c, i) => el("td", { dataset: { label: TABLE_HEAD[i] } }, c)));
  });
  document.getElementById("strategy-table").replaceChildren(el("table", { class: "responsive compact" },
    el("thead", {}, el("tr", {}, TABLE_HEAD.map((h) => el("th", {}, h)))), el("tbody", {}, rows)));
}

function claimsTable(results) {
  const claims = results.claims || [];
  const box = document.getElementById("claims-table");
  if (!claims.length) { box.replaceChildren(el("p", { class: "empty" }, "This run lists no claims.")); return; }
  const keys = claimColumns(claims);
  const title = (k) => k.replace(/_/g, " ");
  box.replaceChildren(el("table", { class: "responsive compact", id: "claims" },
    el("thead", {}, el("tr", {}, keys.map((k) => el("th", {}, title(k))))),
    el("tbody", {}, claims.map((c) => el("tr", { class: claimVerdict(c) },
      keys.map((k) => el("td", { dataset: { label: title(k) } }, claimCell(c, k))))))));
}

function render(title, results, meta) {
  document.getElementById("report").hidden = false;
  document.getElementById("no-report").hidden = true;
  document.getElementById("report-title").textContent = title;
  const ds = results.dataset || {};
  document.getElementById("report-meta").textContent =
    [ds.name ? `dataset ${ds.name}` : "", `${(results.windows || []).length} windows`, meta].filter(Boolean).join(" · ");
  const names = strategyNames(results);
  aucChart(results, names);
  gainChart(results, names);
  const [unit, size] = byteUnit(names.map((s) => results.strategies[s].bytes_moved));
  barChart("chart-exp-bytes", results, names, "bytes_moved", `bytes moved (${unit})`, fmt.bytes, size);
  barChart("chart-exp-cpu", results, names, "cpu_seconds", "CPU time (s)", cpuText);
  strategyTable(results, names);
  claimsTable(results);
}

function showRun(id) {
  const run = runs.get(Number(id));
  if (run) render(run.name, run.results, `imported ${fmt.time(epoch(run.created))}${run.created_by ? ` by ${run.created_by}` : ""}`);
}

async function loadRuns(selectId) {
  const list = await listAll("/api/experiments/");
  runs.clear();
  list.forEach((r) => runs.set(r.id, r));
  const select = document.getElementById("run-select");
  select.replaceChildren(el("option", { value: "" }, list.length ? "choose a run…" : "no runs imported yet"),
    ...list.map((r) => el("option", { value: r.id }, `${r.name}${r.dataset ? ` (${r.dataset})` : ""}`)));
  document.getElementById("no-runs").hidden = list.length > 0;
  const id = selectId ?? (list[0] && list[0].id);
  if (id) { select.value = id; showRun(id); }
}

async function readUpload() {
  const errors = document.getElementById("upload-errors");
  errors.replaceChildren();
  const file = document.getElementById("upload-file").files[0];
  if (!file) { errors.textContent = "Choose a results.json file."; return null; }
  try {
    return { file, results: JSON.parse(await file.text()) };
  } catch (err) {
    errors.textContent = `${file.name} is not valid JSON: ${err.message}`;
    return null;
  }
}

async function preview() {
  const got = await readUpload();
  if (!got) return;
  const r = got.results;
  if (!r || typeof r !== "object" || !r.strategies || typeof r.strategies !== "object") {
    document.getElementById("upload-errors").textContent = "Not a results.json: it has no strategies.";
    return;
  }
  render(`${got.file.name} (preview, not saved)`, r, "");
}

async function upload(e) {
  e.preventDefault();
  const got = await readUpload();
  if (!got) return;
  const name = document.getElementById("upload-name").value.trim() || got.file.name.replace(/\.json$/, "");
  const parameters = got.results && typeof got.results.parameters === "object" ? got.results.parameters : {};
  const res = await api("/api/experiments/", { method: "POST", body: { name, results: got.results, parameters } });
  if (!res.ok) {
    const items = Object.entries(fieldErrors(res.data));
    document.getElementById("upload-errors").replaceChildren(el("p", {}, "Not imported:"), el("ul", {}, items.map(([k, v]) =>
      el("li", { dataset: { field: k } }, k === "non_field_errors" || k === "detail" ? v : `${k}: ${v}`))));
    return;
  }
  await loadRuns(res.data.id);
}

document.getElementById("run-select").addEventListener("change", (e) => showRun(e.target.value));
document.getElementById("preview").addEventListener("click", preview);
document.getElementById("upload-form").addEventListener("submit", upload);
loadRuns().catch((err) => {
  document.getElementById("upload-errors").textContent = `Could not load runs: ${err.message}`;
});

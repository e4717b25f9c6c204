// Experiment report: pick a stored run or import a results.json (validated by the API), then
// draw what report.js derives from it: AUC per window, the relative gain over DeltaSync with its
// 95% interval, fleet bytes and CPU per hour, the strategies, the claim verdicts, the leak
// audit, the process memory and the per-seed AUCs.
import { api, listAll } from "./api.js";
import { el } from "./dom.js";
import { byteUnit, epoch, fieldErrors, fmt, isNum } from "./format.js";
import { layout, plotConfig } from "./plot.js";
import {
  aucSeries, auditSummary, CLAIM_COLUMNS, claimRows, fleetText, gainSeries, perSeedTable,
  processMemoryText, REFERENCE, STRATEGY_COLUMNS, strategyLabel, strategyNames, strategyRows,
  windowLabels,
} from "./report.js";

const COLORS = { stale: "#9aa3b5", oracle: "#1d2330", full_sync: "#1a7f37", delta_sync: "#e07b00",
  prioritized_delta: "#8a5cf5", liveupdate: "#2458d6", liveupdate_dense: "#0f8b8d", hybrid: "#b5446e" };
const runs = new Map();
const byWindow = (yTitle) => {
  const lay = layout(yTitle, { xaxis: { type: "category", title: { text: "time window (#)" } }, hovermode: "closest" });
  lay.yaxis.rangemode = "normal";
  return lay;
};

function aucChart(results, names) {
  const series = names.map((s) => aucSeries(results, s));
  const n = Math.max(0, ...series.map((v) => v.y.length));
  const traces = names.map((s, i) => ({
    name: strategyLabel(s), x: windowLabels(results, n, series[i].key), y: series[i].y, type: "scatter",
    mode: "lines+markers", line: { color: COLORS[s], width: 2 }, marker: { size: 4 },
    hovertemplate: `${strategyLabel(s)}: %{y:.4f}<extra></extra>`,
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
  const traces = names.filter((s) => s !== REFERENCE).map((s) => {
    const g = gainSeries(results, s);
    return { name: strategyLabel(s), x, y: g.y, type: "scatter", mode: "lines+markers",
      error_y: { type: "data", array: g.plus, arrayminus: g.minus, visible: g.plus.some(isNum) },
      line: { color: COLORS[s], width: 2 }, hovertemplate: `${strategyLabel(s)}: %{y:+.2f} %<extra></extra>` };
  });
  const lay = byWindow("relative AUC gain (%)");
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

function table(boxId, tableId, head, rows, emptyText) {
  const box = document.getElementById(boxId);
  if (!rows.length) { box.replaceChildren(el("p", { class: "empty" }, emptyText)); return; }
  box.replaceChildren(el("table", { class: "responsive compact", id: tableId },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", r.attrs, r.cells.map((c, i) => el("td", { dataset: { label: head[i] } }, c)))))));
}

function render(title, results, meta) {
  document.getElementById("report").hidden = false;
  document.getElementById("no-report").hidden = true;
  document.getElementById("report-title").textContent = title;
  const ds = results.dataset || {};
  document.getElementById("report-meta").textContent = [ds.name ? `dataset ${ds.name}` : "",
    `${(results.windows || []).length} windows`, fleetText(results), meta].filter(Boolean).join(" · ");
  document.getElementById("report-summary").textContent = results.summary || "";
  const names = strategyNames(results);
  aucChart(results, names);
  gainChart(results, names);
  const [unit, size] = byteUnit(names.map((s) => results.strategies[s].bytes_per_hour));
  barChart("chart-exp-bytes", results, names, "bytes_per_hour", `fleet bytes per hour (${unit})`, fmt.bytes, size);
  barChart("chart-exp-cpu", results, names, "cpu_seconds_per_hour", "fleet update CPU-s per hour",
    (v) => (isNum(v) ? `${v.toFixed(1)} s` : "–"));
  table("strategy-table", "strategies", STRATEGY_COLUMNS,
    strategyRows(results).map((r) => ({ attrs: { dataset: { strategy: r.strategy } }, cells: r.cells })), "No strategies.");
  table("claims-table", "claims", CLAIM_COLUMNS,
    claimRows(results).map((r) => ({ attrs: { class: r.verdictClass, dataset: { claim: r.id } }, cells: r.cells })),
    "This run lists no claim verdicts.");
  const seeds = perSeedTable(results);
  table("seed-table", "seeds", seeds.head, seeds.rows.map((cells) => ({ attrs: {}, cells })),
    "This run has no per-seed results.");
  const audit = auditSummary(results);
  const auditBox = document.getElementById("audit");
  auditBox.textContent = audit.text;
  auditBox.dataset.state = audit.state;
  document.getElementById("process-memory").textContent = processMemoryText(results);
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

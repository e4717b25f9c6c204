// Experiment report: pick a stored run or import a results.json (validated by the API), then
// chart AUC per window, the gain over DeltaSync, bytes and CPU per strategy, and the claims.
(function () {
  const { api, listAll, el, fmt, epoch, isNum, errorText, layout, plotConfig } = window.LU;
  const ORDER = ["stale", "full_sync", "delta_sync", "prioritized_delta", "liveupdate"];
  const LABELS = { stale: "Stale", full_sync: "FullSync", delta_sync: "DeltaSync",
    prioritized_delta: "PrioritizedDelta", liveupdate: "LiveUpdate" };
  const COLORS = { stale: "#9aa3b5", full_sync: "#1a7f37", delta_sync: "#e07b00",
    prioritized_delta: "#8a5cf5", liveupdate: "#2458d6" };
  const label = (s) => LABELS[s] || s;
  const runs = new Map();

  function strategies(results) {
    const names = Object.keys(results.strategies || {});
    return [...ORDER.filter((s) => names.includes(s)), ...names.filter((s) => !ORDER.includes(s)).sort()];
  }

  function windowLabels(results, n) {
    const windows = results.windows || [];
    return Array.from({ length: n }, (_, i) => {
      const w = windows[i];
      if (w && typeof w === "object" && w.label) return String(w.label);
      return `${i + 1}`;
    });
  }
  const windowHover = (results, i) => {
    const w = (results.windows || [])[i];
    return w === undefined ? "" : JSON.stringify(w).slice(0, 200);
  };

  function aucChart(results, names) {
    const n = Math.max(0, ...names.map((s) => (results.strategies[s].auc_per_window || []).length));
    const x = windowLabels(results, n);
    const traces = names.map((s) => ({
      name: label(s), x, y: results.strategies[s].auc_per_window, type: "scatter", mode: "lines+markers",
      line: { color: COLORS[s], width: 2 }, marker: { size: 5 },
      text: x.map((_, i) => windowHover(results, i)), hovertemplate: `${label(s)}: %{y:.4f}<extra>%{text}</extra>`,
    }));
    const lay = layout("AUC", { xaxis: { type: "category", title: { text: "time window (#)" } }, hovermode: "closest" });
    lay.yaxis.rangemode = "normal";
    lay.yaxis.tickformat = ".3f";
    Plotly.react("chart-exp-auc", traces, lay, plotConfig);
  }

  function gainChart(results, names) {
    const ref = results.strategies.delta_sync;
    const box = document.getElementById("chart-exp-gain");
    if (!ref) {
      Plotly.purge(box);
      box.replaceChildren(el("p", { class: "empty" }, "This run has no delta_sync strategy to compare with."));
      return;
    }
    const base = ref.auc_per_window || [];
    const x = windowLabels(results, base.length);
    const traces = names.filter((s) => s !== "delta_sync").map((s) => ({
      name: label(s), x, type: "scatter", mode: "lines+markers", line: { color: COLORS[s], width: 2 },
      y: base.map((b, i) => {
        const v = (results.strategies[s].auc_per_window || [])[i];
        return isNum(v) && isNum(b) ? (v - b) * 100 : null;
      }),
      hovertemplate: `${label(s)}: %{y:+.3f} pts<extra></extra>`,
    }));
    const lay = layout("AUC gain (percentage points)", {
      xaxis: { type: "category", title: { text: "time window (#)" } }, hovermode: "closest",
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#1d2330", width: 1 } }],
    });
    lay.yaxis.rangemode = "normal";
    lay.yaxis.zeroline = true;
    Plotly.react(box, traces, lay, plotConfig);
  }

  // Bytes are plotted in the binary unit that suits the largest value (axis title says which).
  function byteUnit(values) {
    const top = Math.max(0, ...values.filter(isNum));
    const units = [["B", 1], ["KiB", 1024], ["MiB", 1024 ** 2], ["GiB", 1024 ** 3], ["TiB", 1024 ** 4]];
    return units.filter(([, size]) => top >= size).pop() || units[0];
  }

  function barChart(id, results, names, key, yTitle, format, scale = 1) {
    const raw = names.map((s) => results.strategies[s][key]);
    const ys = raw.map((v) => (isNum(v) ? v / scale : null));
    const traces = [{ type: "bar", x: names.map(label), y: ys, marker: { color: names.map((s) => COLORS[s] || "#5b6475") },
      text: raw.map(format), textposition: "outside", cliponaxis: false, hovertemplate: "%{x}: %{text}<extra></extra>" }];
    const lay = layout(yTitle, { xaxis: { type: "category", title: { text: "strategy" } }, showlegend: false, hovermode: "closest" });
    lay.margin.t = 36;
    Plotly.react(id, traces, lay, plotConfig);
  }

  function strategyTable(results, names) {
    const ref = results.strategies.delta_sync;
    const head = ["Strategy", "Mean AUC", "Gain vs DeltaSync", "Mean log loss", "Bytes moved", "CPU time",
      "Peak memory overhead", "Mean staleness"];
    const rows = names.map((s) => {
      const r = results.strategies[s];
      const gain = ref && isNum(r.mean_auc) && isNum(ref.mean_auc) ? (r.mean_auc - ref.mean_auc) * 100 : null;
      const cells = [label(s), fmt.auc(r.mean_auc), s === "delta_sync" ? "reference" : isNum(gain) ? `${gain >= 0 ? "+" : ""}${gain.toFixed(3)} pts` : "–",
        fmt.num(r.mean_logloss, 4), fmt.bytes(r.bytes_moved), isNum(r.cpu_seconds) ? `${r.cpu_seconds.toFixed(1)} s` : "–",
        fmt.pct(r.peak_memory_overhead_pct), fmt.secs(r.mean_staleness_s)];
      return el("tr", { dataset: { strategy: s } }, cells.map((c, i) => el("td", { dataset: { label: head[i] } }, c)));
    });
    document.getElementById("strategy-table").replaceChildren(el("table", { class: "responsive compact" },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows)));
  }

  // Claims are rows of whatever the experiment wrote: strings, or objects shown column by column.
  function claimsTable(results) {
    const claims = results.claims || [];
    const box = document.getElementById("claims-table");
    if (!claims.length) { box.replaceChildren(el("p", { class: "empty" }, "This run lists no claims.")); return; }
    const VERDICTS = ["holds", "verdict", "reproduced", "status", "ok"];
    const all = [...new Set(claims.flatMap((c) => (c && typeof c === "object" ? Object.keys(c) : ["claim"])))];
    const keys = [...all.filter((k) => !VERDICTS.includes(k)), ...all.filter((k) => VERDICTS.includes(k))];
    const show = (v) => (v === true ? "✔ holds" : v === false ? "✘ does not hold" : v === null || v === undefined ? "–"
      : typeof v === "object" ? JSON.stringify(v) : isNum(v) ? String(+v.toPrecision(6)) : String(v));
    const verdict = (c) => (c && typeof c === "object" ? VERDICTS.map((k) => c[k]).find((v) => v !== undefined) : undefined);
    box.replaceChildren(el("table", { class: "responsive compact", id: "claims" },
      el("thead", {}, el("tr", {}, keys.map((k) => el("th", {}, k.replace(/_/g, " "))))),
      el("tbody", {}, claims.map((c) => {
        const v = verdict(c);
        const cls = v === true || v === "holds" || v === "reproduced" ? "holds" : v === false || v === "refuted" ? "refuted" : "";
        return el("tr", { class: cls }, keys.map((k) => el("td", { dataset: { label: k.replace(/_/g, " ") } },
          show(c && typeof c === "object" ? c[k] : c))));
      }))));
  }

  function render(title, results, meta) {
    document.getElementById("report").hidden = false;
    document.getElementById("no-report").hidden = true;
    document.getElementById("report-title").textContent = title;
    const ds = results.dataset || {};
    document.getElementById("report-meta").textContent =
      [ds.name ? `dataset ${ds.name}` : "", `${(results.windows || []).length} windows`, meta].filter(Boolean).join(" · ");
    const names = strategies(results);
    aucChart(results, names);
    gainChart(results, names);
    const [unit, size] = byteUnit(names.map((s) => results.strategies[s].bytes_moved));
    barChart("chart-exp-bytes", results, names, "bytes_moved", `bytes moved (${unit})`, fmt.bytes, size);
    barChart("chart-exp-cpu", results, names, "cpu_seconds", "CPU time (s)", (v) => (isNum(v) ? `${v.toFixed(1)} s` : "–"));
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

  document.getElementById("run-select").addEventListener("change", (e) => showRun(e.target.value));
  document.getElementById("preview").addEventListener("click", async () => {
    const got = await readUpload();
    if (!got) return;
    const r = got.results;
    if (!r || typeof r !== "object" || !r.strategies || typeof r.strategies !== "object") {
      document.getElementById("upload-errors").textContent = "Not a results.json: it has no strategies.";
      return;
    }
    render(`${got.file.name} (preview, not saved)`, r, "");
  });
  document.getElementById("upload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const got = await readUpload();
    if (!got) return;
    const name = document.getElementById("upload-name").value.trim() || got.file.name.replace(/\.json$/, "");
    const parameters = got.results && typeof got.results.parameters === "object" ? got.results.parameters : {};
    const res = await api("/api/experiments/", { method: "POST", body: { name, results: got.results, parameters } });
    const errors = document.getElementById("upload-errors");
    if (!res.ok) {
      const items = Object.entries(LU.fieldErrors(res.data));
      errors.replaceChildren(el("p", {}, "Not imported:"), el("ul", {}, items.map(([k, v]) =>
        el("li", { dataset: { field: k } }, k === "non_field_errors" || k === "detail" ? v : `${k}: ${v}`))));
      return;
    }
    await loadRuns(res.data.id);
  });

  loadRuns().catch((err) => {
    document.getElementById("upload-errors").textContent = `Could not load runs: ${err.message}`;
  });
})();

// The fleet page's A/B card: a LiveUpdate node against a baseline node (delta sync or frozen)
// over a chosen range, refreshed every few seconds from the telemetry API.
import { drawAb, loadAbSeries, loadLastSync } from "./ab_panel.js";
import { el } from "./dom.js";
import { trainsLocally } from "./format.js";
import { loadMarks } from "./node_marks.js";
import { loadPlotly } from "./plot.js";

const REFRESH_MS = 10000;
const ab = { nodes: [], policies: new Map(), live: "", base: "", seconds: 900, token: 0 };

const policyOf = (name) => ab.policies.get((ab.nodes.find((n) => n.name === name) || {}).policy);
const rangeText = (s) => (s < 3600 ? `the last ${s / 60} min` : `the last ${s / 3600} h`);

function fillSelect(id, names, chosen) {
  const select = document.getElementById(id);
  select.replaceChildren(...names.map((n) => {
    const mode = (policyOf(n) || {}).mode || "liveupdate";
    return el("option", { value: n, selected: n === chosen }, `${n} (${mode})`);
  }));
}

async function refresh() {
  const box = document.getElementById("ab-card");
  // LiveUpdate candidates: online nodes first, then those with a policy (not just defaults).
  const rankOf = (n) => (n.status === "online" ? 0 : 2) + (n.policy ? 0 : 1);
  const live = ab.nodes.filter((n) => trainsLocally(ab.policies.get(n.policy)))
    .sort((a, b) => rankOf(a) - rankOf(b) || a.name.localeCompare(b.name)).map((n) => n.name);
  const bases = ab.nodes.filter((n) => !trainsLocally(ab.policies.get(n.policy))).map((n) => n.name);
  box.hidden = !live.length || !bases.length;
  if (box.hidden) return;
  ab.live = live.includes(ab.live) ? ab.live : live[0];
  ab.base = bases.includes(ab.base) ? ab.base : bases[0];
  fillSelect("ab-live", live, ab.live);
  fillSelect("ab-base", bases, ab.base);
  const token = ++ab.token;
  const end = Date.now() / 1000;
  const start = end - ab.seconds;
  try {
    const [l, b] = await Promise.all([loadAbSeries(ab.live, start, end), loadAbSeries(ab.base, start, end)]);
    // only once the telemetry answered: an answer here must not hide the stale banner its failure raised
    const [synced, marks] = await Promise.all([loadLastSync(ab.base), loadMarks(ab.live, ab.base, start, end)]);
    if (token !== ab.token) return;
    const draw = () => drawAb("ab", { liveName: ab.live, baseName: ab.base, baseTrains: false,
      baseSyncedAt: synced, live: l, base: b, marks, tolerance: Math.max(1, l.bucket_s), range: [start, end], rangeText: rangeText(ab.seconds) });
    draw(); // the number first; the charts once Plotly is there
    if (!globalThis.Plotly) await loadPlotly().then(() => token === ab.token && draw());
  } catch (err) {
    document.getElementById("ab-readout").replaceChildren(el("p", { class: "error" }, err.message));
  }
}

// Called by fleet.js with every fresh node and policy list.
export function updateAb(nodes, policies) {
  ab.nodes = nodes;
  ab.policies = policies;
  if (!ab.started) {
    ab.started = true;
    setInterval(refresh, REFRESH_MS);
  }
  refresh();
}

document.querySelectorAll("[data-ab-range]").forEach((b) => b.addEventListener("click", () => {
  ab.seconds = Number(b.dataset.abRange);
  document.querySelectorAll("[data-ab-range]").forEach((c) =>
    c.setAttribute("aria-pressed", String(c === b)));
  refresh();
}));
["ab-live", "ab-base"].forEach((id) => document.getElementById(id).addEventListener("change", (e) => {
  ab[id === "ab-live" ? "live" : "base"] = e.target.value;
  refresh();
}));

// Node page: a server-downsampled range query for history, the websocket for live samples, rank
// and QoS events for the rank and throttle history. Charts are drawn by node_charts.js, the
// actions and the policy box by node_actions.js.
import { loadLastSync } from "./ab_panel.js";
import { api, listAll } from "./api.js";
import { el } from "./dom.js";
import { epoch, errorText, fmt, isNum, MODE_TEXT, modeOf, trainsLocally } from "./format.js";
import { onFleetEvent, onFleetReconnect, watchNodes } from "./live.js";
import { newestSync } from "./events.js";
import { chartSteps, renderCharts, renderLimits } from "./node_charts.js";
import { addLiveMark, loadMarks } from "./node_marks.js";
import { showPolicy, startActions } from "./node_actions.js";
import { startSnapshots } from "./node_snapshots.js";
import { overrideDetail, overrideTexts } from "./overrides.js";
import { runningCheckpointText, runningPolicyNote } from "./running.js";
import {
  emptySeries, pushBuckets, pushPoint, rangeBounds, RankHistory, SERIES_METRICS, THROTTLE_STATES,
  trimSeries,
} from "./series.js";

const NAME = document.getElementById("node-page").dataset.node;
const METRICS = SERIES_METRICS;

const state = {
  name: NAME, node: null, policy: null, nodes: [], policies: new Map(),
  baseline: "", baselineChosen: false,
  range: { live: true, seconds: 900 }, bucket_s: 1, main: emptySeries(), base: emptySeries(),
  throttle: { t: [], s: [] }, ranks: new RankHistory(),
  cpu: { values: [], ts: null }, placement: null, lastSeq: {}, loading: 0,
  syncedAt: {}, // node -> Unix s of its newest delta sync (a "sync" event)
  marks: [], // the charts' annotations (node_marks.js)
};

const iso = (s) => new Date(s * 1000).toISOString();

function addThrottle(t, s) {
  state.throttle.t.push(t);
  state.throttle.s.push(s);
}

// The newest sample's state beside the history: its ranks, throttle and CPU per core.
function addSampleState(sample) {
  Object.entries(sample.tables || {}).forEach(([table, info]) => state.ranks.add(table, sample.ts, info.rank));
  addThrottle(sample.ts, sample.throttle);
  if (!isNum(state.cpu.ts) || sample.ts >= state.cpu.ts) {
    state.cpu = { values: sample.cpu_per_core || [], ts: sample.ts };
  }
}

async function loadSeries(node, start, end) {
  const res = await api("/api/telemetry/", {
    params: { node, start: iso(start), end: iso(end), metrics: METRICS.join(",") },
  });
  if (!res.ok) throw new Error(`telemetry of ${node}: ${errorText(res)}`);
  return res.data;
}

// The range's series (and the baseline's), its rank changes and QoS events, the newest
// "policy" event (the runtime's placement) and both nodes' newest delta syncs.
function fetchRange(start, end) {
  const within = { node: NAME, since: iso(start), until: iso(end), limit: 500 };
  return Promise.all([
    loadSeries(NAME, start, end),
    state.baseline ? loadSeries(state.baseline, start, end) : null,
    listAll("/api/rank-events/", within),
    listAll("/api/events/", { ...within, kind: "qos" }),
    api("/api/events/", { params: { node: NAME, kind: "policy", limit: 1 } }),
    Promise.all([NAME, state.baseline].filter(Boolean).map(async (n) => [n, await loadLastSync(n)])),
    loadMarks(NAME, state.baseline, start, end),
  ]);
}

// Rebuilds the page's history from a range query (the newest events come first from the API).
function applyRange(start, end, [series, base, rankEvents, qosEvents]) {
  state.bucket_s = series.bucket_s;
  state.main = emptySeries();
  state.base = emptySeries();
  state.ranks = new RankHistory();
  state.throttle = { t: [], s: [] };
  const mid = series.bucket_s > 1 ? series.bucket_s / 2 : 0;
  pushBuckets(state.main, series.t, mid, { ...series.avg,
    p99_ms: series.max.p99_ms, memory_overhead_pct: series.max.memory_overhead_pct });
  if (base) pushBuckets(state.base, base.t, mid, base.avg);
  rankEvents.reverse().forEach((e) => state.ranks.addChange(epoch(e.ts), e.detail));
  qosEvents.reverse().forEach((e) => {
    if (THROTTLE_STATES.includes(e.detail.state)) addThrottle(epoch(e.ts), e.detail.state);
  });
  const latest = state.node && state.node.latest;
  if (latest && latest.ts >= start && latest.ts <= end) addSampleState(latest);
  if (latest) state.cpu = { values: latest.cpu_per_core || [], ts: latest.ts };
  state.ranks.sort();
  state.ranks.holdFrom(state.main.t.length ? Math.max(start, state.main.t[0]) : start);
  state.lastSeq[NAME] = latest ? latest.seq : -1;
}

// The range, its point count (live points included) and how the server bucketed it.
function showRangeInfo() {
  const [start, end] = rangeBounds(state.range);
  document.getElementById("range-info").textContent =
    `${fmt.time(start)} – ${state.range.live ? "now (live)" : fmt.time(end)} · ` +
    `${fmt.plural(state.main.t.length, "point")} · bucket ${state.bucket_s} s (averaged on the server; ` +
    "P99 and memory show each bucket's maximum)";
}

// Reload everything for the current range (history from the server, downsampled there).
async function loadRange() {
  const token = ++state.loading;
  const [start, end] = rangeBounds(state.range);
  const info = document.getElementById("range-info");
  info.textContent = "Loading…";
  try {
    const got = await fetchRange(start, end);
    const placed = got[4];
    const newest = placed.ok && placed.data.results[0];
    if (newest && newest.detail.placement) state.placement = newest.detail.placement;
    if (token !== state.loading) return; // a newer range was picked meanwhile
    got[5].forEach(([n, t]) => { if (t !== null) noteSync(n, t); });
    applyRange(start, end, got);
    state.marks = got[6];
    state.shown = token;
    showRangeInfo();
    renderCharts(state);
  } catch (err) {
    if (token === state.loading) info.textContent = `Could not load the range: ${err.message}`;
  }
}

function trim() {
  if (!state.range.live) return;
  const [start] = rangeBounds(state.range);
  trimSeries(state.main, start);
  trimSeries(state.base, start);
}

function noteSync(node, t) {
  if (!isNum(state.syncedAt[node]) || t > state.syncedAt[node]) state.syncedAt[node] = t;
  if (node === NAME) summary();
}

function summary() {
  const n = state.node;
  if (!n) return;
  const s = n.latest || {};
  const p = state.policy;
  const trains = trainsLocally(p);
  document.getElementById("node-summary").replaceChildren(
    el("span", { class: `badge ${n.status}` }, n.status), " ",
    el("span", { class: "badge mode", dataset: { mode: modeOf(p) } }, modeOf(p).replace("_", " ")), " ",
    "last seen ", el("span", { dataset: { ago: epoch(n.last_seen) ?? "" } }, fmt.ago(epoch(n.last_seen))),
    n.host ? ` · host ${n.host}` : "",
    isNum(state.syncedAt[NAME]) ? el("span", {}, " · synced ", el("span", { class: "synced-ago",
      dataset: { ago: state.syncedAt[NAME] } }, fmt.ago(state.syncedAt[NAME]))) : "",
    trains || isNum(s.freshness_lag_s) ? ` · freshness lag ${fmt.secs(s.freshness_lag_s)}` : "",
    ` · AUC ${fmt.auc(s.auc)} · P99 ${fmt.ms(s.p99_ms)}`, p ? ` (SLA ${p.sla_p99_ms} ms)` : "",
    trains ? ` · memory ${fmt.pct(s.memory_overhead_pct)}` : "",
    trains && p ? ` (budget ${p.memory_budget_pct} %)` : "",
    trains && s.throttle ? ` · trainer ${s.throttle}` : "",
    runningState(n));
}

// What the node reports it runs: its base checkpoint, and its policy where not the applied one.
function runningState(n) {
  const checkpoint = runningCheckpointText(n);
  if (!checkpoint) return "";
  const policy = runningPolicyNote(n);
  return el("span", { class: "running-state", title: n.running_checkpoint || "" }, ` · ${checkpoint}`,
    policy ? el("span", { class: "warn" }, ` · ${policy}`) : "");
}

// A delta-sync or frozen node has no trainer: no pause/resume, rank, LoRA memory or trainer chart.
function showMode() {
  const trains = trainsLocally(state.policy);
  document.querySelectorAll("[data-trainer-only]").forEach((node) => { node.hidden = !trains; });
  document.querySelectorAll("[data-modes]").forEach((node) => {
    node.hidden = !node.dataset.modes.split(" ").includes(modeOf(state.policy));
  });
  const note = document.getElementById("mode-note");
  note.hidden = trains;
  note.textContent = trains ? "" : `Mode ${MODE_TEXT[modeOf(state.policy)] || modeOf(state.policy)}: ` +
    "there is no trainer to pause, no LoRA factors to snapshot, and no ranks or LoRA memory to show.";
}

function fillBaselines() {
  const select = document.getElementById("baseline");
  const others = state.nodes.filter((n) => n.name !== NAME);
  select.replaceChildren(el("option", { value: "" }, "none"), ...others.map((n) => {
    const p = state.policies.get(n.policy);
    return el("option", { value: n.name }, `${n.name}${p ? ` (${p.mode})` : ""}`);
  }));
  select.value = state.baseline;
}

// Default baseline: a node running a non-LiveUpdate mode (delta sync or frozen), if any.
function defaultBaseline(nodes) {
  const base = nodes.find((n) => n.name !== NAME &&
    ["delta_sync", "frozen"].includes((state.policies.get(n.policy) || {}).mode));
  return base ? base.name : "";
}

async function loadNode() {
  const [nodeRes, nodes, policies] = await Promise.all([
    api(`/api/nodes/${NAME}/`), listAll("/api/nodes/"), listAll("/api/policies/"),
  ]);
  if (!nodeRes.ok) {
    document.getElementById("node-summary").replaceChildren(el("span", { class: "error" },
      nodeRes.status === 404 ? `There is no node named ${NAME}.` : errorText(nodeRes)));
    return false;
  }
  state.node = nodeRes.data;
  state.nodes = nodes;
  state.policies = new Map(policies.map((p) => [p.id, p]));
  state.policy = state.policies.get(state.node.policy) || null;
  if (state.baseline === "" && !state.baselineChosen) state.baseline = defaultBaseline(nodes);
  fillBaselines();
  summary();
  showMode();
  showPolicy(state);
  showOverrides(state.node);
  return true;
}

// What the watchdog overrides of the applied policy (the node runs the stricter value).
function showOverrides(node) {
  const list = document.getElementById("node-overrides");
  const texts = overrideTexts(node);
  list.hidden = !texts.length;
  list.replaceChildren(...texts.map((text, i) =>
    el("li", { class: "warn", title: overrideDetail(node.overrides[i]) }, text)));
}

// Live redraws: one chart per task (the page stays responsive and each chart shows up as soon
// as it is drawn); events arriving meanwhile are folded into one more pass.
let rendering = false;
let dirty = false;
let lastRender = 0;
function scheduleRender() {
  if (rendering) { dirty = true; return; }
  rendering = true;
  dirty = false;
  let i = 0;
  const next = () => {
    if (i < chartSteps.length) { chartSteps[i++](state); setTimeout(next, 0); return; }
    rendering = false;
    lastRender = Date.now();
    if (dirty) scheduleRender();
  };
  requestAnimationFrame(next);
}

function onTelemetry(event) {
  const sample = event.sample;
  if (!state.node) return; // the page's first load will show it
  if (sample.seq <= (state.lastSeq[event.node] ?? -1)) return; // already shown
  state.lastSeq[event.node] = sample.seq;
  const synced = newestSync(sample.events);
  if (synced !== null) noteSync(event.node, synced);
  const [start, end] = rangeBounds(state.range);
  const inRange = state.range.live || (sample.ts >= start && sample.ts < end);
  if (event.node === NAME) {
    state.node.latest = sample;
    state.node.status = "online";
    state.node.last_seen = iso(sample.ts);
    summary();
    if (inRange) {
      pushPoint(state.main, sample.ts, sample);
      addSampleState(sample);
    }
  } else if (event.node === state.baseline && inRange) {
    pushPoint(state.base, sample.ts, sample);
  } else {
    return;
  }
  trim();
  if (state.loading === state.shown) showRangeInfo();
  scheduleRender();
}

onFleetEvent((event) => {
  if (event.kind === "telemetry") onTelemetry(event);
  else if (event.node !== NAME) return;
  else if (event.kind === "node_event" && event.event === "policy" && event.detail.placement) {
    state.placement = event.detail.placement;
    scheduleRender();
  } else if (event.kind === "rank_event" && state.range.live) {
    state.ranks.addChange(event.ts, event.detail);
    state.ranks.sort();
    scheduleRender();
  } else if (event.kind === "node_status" && state.node) {
    state.node.status = event.status;
    state.node.last_seen = event.last_seen ? iso(event.last_seen) : null;
    summary();
  } else if (event.kind === "node_action" && event.action.action === "apply_policy") {
    loadNode().then(() => renderLimits(state));
  }
});
onFleetEvent((event) => { if (addLiveMark(state.marks, event, NAME, state.baseline)) scheduleRender(); });
onFleetReconnect(() => loadNode().then(loadRange));

function pickRange(seconds) {
  state.range = { live: true, seconds };
  document.querySelectorAll("[data-range]").forEach((b) =>
    b.setAttribute("aria-pressed", String(Number(b.dataset.range) === seconds)));
  loadRange();
}

function pickCustomRange(e) {
  e.preventDefault();
  const start = Date.parse(document.getElementById("range-start").value) / 1000;
  const end = Date.parse(document.getElementById("range-end").value) / 1000;
  if (!(isNum(start) && isNum(end)) || end <= start) {
    document.getElementById("range-info").textContent = "Pick a start before the end.";
    return;
  }
  state.range = { live: false, start, end };
  document.querySelectorAll("[data-range]").forEach((b) => b.setAttribute("aria-pressed", "false"));
  loadRange();
}

document.querySelectorAll("[data-range]").forEach((b) =>
  b.addEventListener("click", () => pickRange(Number(b.dataset.range))));
document.getElementById("custom-range").addEventListener("submit", pickCustomRange);
document.getElementById("baseline").addEventListener("change", (e) => {
  state.baseline = e.target.value;
  state.baselineChosen = true;
  watchNodes([NAME, state.baseline].filter(Boolean));
  loadRange();
});
// Keep a live window scrolling and the "last seen" text fresh when no samples arrive.
setInterval(() => {
  if (!state.range.live || !state.node) return;
  summary();
  if (Date.now() - lastRender > 4500) { trim(); scheduleRender(); }
}, 5000);

// The custom range's inputs start at the last hour, in local time.
const localInput = (s) =>
  new Date((s - new Date().getTimezoneOffset() * 60) * 1000).toISOString().slice(0, 19);
const now = Date.now() / 1000;
document.getElementById("range-start").value = localInput(now - 3600);
document.getElementById("range-end").value = localInput(now);
startActions(NAME);
if (await loadNode()) {
  if (trainsLocally(state.policy)) startSnapshots(NAME);
  watchNodes([NAME, state.baseline].filter(Boolean));
  pickRange(900);
}

// Fleet overview: every node's newest sample against its policy, and the open alerts, live.
import { api, listAll } from "./api.js";
import { applyRole, el } from "./dom.js";
import {
  epoch, errorText, fmt, isNum, limitLevel, limitShare, modeOf, trainsLocally,
} from "./format.js";
import { updateAb } from "./fleet_ab.js";
import { onFleetEvent, onFleetReconnect } from "./live.js";
import { runningPolicyNote } from "./running.js";

const state = { nodes: new Map(), policies: new Map(), alerts: new Map(), loaded: false };

// "value / limit" with a small bar showing how much of the limit is used.
function gauge(value, limit, format, label) {
  if (!isNum(value)) return "–";
  return el("div", { class: `gauge ${limitLevel(value, limit)}`, title: label },
    el("span", {}, `${format(value)} / ${format(limit)}`),
    el("span", { class: "bar" },
      el("span", { style: `width:${(limitShare(value, limit) * 100).toFixed(0)}%` })));
}

function trainerCell(s, policy) {
  if (!trainsLocally(policy)) {
    return [el("span", { class: "badge mode" }, modeOf(policy).replace("_", " ")),
      el("div", { class: "sub" }, "no local trainer")];
  }
  return [
    s.throttle ? el("span", { class: `badge ${s.throttle}` }, s.throttle) : "–",
    el("div", { class: "sub" }, isNum(s.trainer_samples_per_s)
      ? `${s.trainer_samples_per_s.toFixed(0)} samples/s · duty ${(100 * s.trainer_duty).toFixed(0)} %`
      : ""),
  ];
}

// The saved version, then what differs: the applied one, and what the node reports it runs.
function policyCell(node, policy) {
  if (!policy) return ["none"];
  const applied = node.applied_policy_version;
  const running = runningPolicyNote(node);
  return [`${policy.name} v${policy.version}`, applied === policy.version ? ""
    : el("div", { class: "sub warn" }, `applied: ${applied ? `v${applied}` : "never"}`),
  running ? el("div", { class: "sub warn running-policy" }, running) : ""];
}

function row(node) {
  const s = node.latest || {};
  const policy = state.policies.get(node.policy);
  const trains = trainsLocally(policy);
  const notHere = el("span", { class: "sub" }, "n/a (no LoRA)");
  const cells = [
    ["Node", el("a", { href: `/nodes/${node.name}/` }, node.name)],
    ["Status", el("span", { class: `badge ${node.status}` }, node.status),
      el("div", { class: "sub", dataset: { ago: epoch(node.last_seen) ?? "" } }, fmt.ago(epoch(node.last_seen)))],
    ["Freshness lag", trains || isNum(s.freshness_lag_s) ? fmt.secs(s.freshness_lag_s)
      : el("span", { class: "sub", title: "No delta sync has landed on this node (a frozen node never syncs)." },
        "no sync yet")],
    ["AUC (window)", fmt.auc(s.auc)],
    ["P99 vs SLA", gauge(s.p99_ms, policy?.sla_p99_ms, fmt.ms, "inference P99 / SLA")],
    ["Memory vs budget", trains ? gauge(s.memory_overhead_pct, policy?.memory_budget_pct, fmt.pct,
      "LoRA memory % of tables / budget") : notHere],
    ["Rank", trains ? fmt.ranks(s.tables) : notHere.cloneNode(true)],
    ["Trainer", ...trainerCell(s, policy)],
    ["Policy", ...policyCell(node, policy)],
  ];
  return el("tr", { dataset: { node: node.name } },
    cells.map(([label, ...content]) => el("td", { dataset: { label } }, el("div", {}, content))));
}

const HEAD = ["Node", "Status", "Freshness lag", "AUC (window)", "P99 vs SLA", "Memory vs budget",
  "Rank", "Trainer", "Policy"];

function renderNodes() {
  const box = document.getElementById("fleet");
  const nodes = [...state.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
  const online = nodes.filter((n) => n.status === "online").length;
  document.getElementById("fleet-summary").textContent =
    `${fmt.plural(nodes.length, "node")}, ${online} online · ${fmt.plural(state.alerts.size, "open alert")}`;
  if (!nodes.length) {
    box.replaceChildren(el("p", { class: "empty" },
      "No nodes registered yet (add one in the admin or with POST /api/nodes/)."));
    return;
  }
  box.replaceChildren(el("table", { class: "fleet responsive", id: "fleet-table" },
    el("thead", {}, el("tr", {}, HEAD.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, nodes.map(row))));
}

function alertItem(a) {
  return el("li", { class: `alert ${a.severity}`, dataset: { alert: a.id } },
    el("span", { class: `badge ${a.severity}` }, a.severity),
    el("a", { href: `/nodes/${a.node}/` }, a.node), " ",
    el("strong", {}, a.kind.replace("_", " ")), " — ", a.message,
    el("span", { class: "sub" }, " raised ", el("span", { dataset: { ago: a.raised_at ?? "" } }, fmt.ago(a.raised_at))),
    a.acknowledged_by ? el("span", { class: "sub" }, ` · acknowledged by ${a.acknowledged_by}`)
      : el("button", { type: "button", class: "secondary small", "data-needs": "operator",
        onclick: () => acknowledge(a.id) }, "Acknowledge"));
}

function renderAlerts() {
  const box = document.getElementById("alerts");
  const alerts = [...state.alerts.values()].sort((a, b) => b.raised_at - a.raised_at);
  document.getElementById("alert-count").textContent = alerts.length ? `(${alerts.length})` : "";
  if (!alerts.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No open alerts."));
    return;
  }
  box.replaceChildren(el("ul", { class: "alerts" }, alerts.map(alertItem)));
  applyRole(box);
}

async function acknowledge(id) {
  const res = await api(`/api/alerts/${id}/acknowledge/`, { method: "POST" });
  const known = state.alerts.get(id);
  if (res.ok) state.alerts.set(id, { ...res.data, raised_at: epoch(res.data.raised_at) });
  else state.alerts.set(id, { ...known, message: `${known.message} (acknowledge failed: ${errorText(res)})` });
  renderAlerts();
}

let inFlight = null;
let loadAgain = false;
// Coalesces bursts (several unknown nodes reporting at once) into one trailing reload: a request
// made while a load is in flight runs once more after it, since that load may predate what the
// caller knows changed (a resync, a new node).
function load() {
  if (inFlight) { loadAgain = true; return inFlight; }
  inFlight = fetchAll().finally(() => {
    inFlight = null;
    if (loadAgain) { loadAgain = false; load(); }
  });
  return inFlight;
}

async function fetchAll() {
  try {
    const [nodes, policies, alerts] = await Promise.all([
      listAll("/api/nodes/"), listAll("/api/policies/"), listAll("/api/alerts/", { open: "true" }),
    ]);
    state.nodes = new Map(nodes.map((n) => [n.name, n]));
    state.policies = new Map(policies.map((p) => [p.id, p]));
    state.alerts = new Map(alerts.map((a) => [a.id, { ...a, raised_at: epoch(a.raised_at) }]));
    state.loaded = true;
    renderNodes();
    renderAlerts();
    updateAb(nodes, state.policies);
  } catch (err) {
    document.getElementById("fleet").replaceChildren(
      el("p", { class: "error" }, `Could not load the fleet: ${err.message}`));
  }
}

const isoOf = (seconds) => (seconds ? new Date(seconds * 1000).toISOString() : null);

function onTelemetry(node, sample) {
  if (!node.latest || sample.seq >= node.latest.seq || sample.ts > node.latest.ts) {
    node.latest = sample;
    node.last_seen = isoOf(sample.ts);
    node.status = "online";
  }
  renderNodes();
}

function onAlert(event) {
  if (event.alert.open) {
    const known = state.alerts.get(event.alert.id) || {};
    state.alerts.set(event.alert.id, { ...known, ...event.alert, node: event.node });
  } else {
    state.alerts.delete(event.alert.id);
  }
  renderAlerts();
  renderNodes();
}

onFleetEvent((event) => {
  if (!state.loaded || !event.node) return;
  const node = state.nodes.get(event.node);
  if (!node && (event.kind === "telemetry" || event.kind === "node_status")) { load(); return; }
  if (event.kind === "telemetry") onTelemetry(node, event.sample);
  else if (event.kind === "node_status") {
    node.status = event.status;
    node.last_seen = isoOf(event.last_seen);
    renderNodes();
  } else if (event.kind === "alert") onAlert(event);
  else if (event.kind === "node_action" && event.action.action === "apply_policy") {
    load(); // the node's policy or applied version changed
  }
});
onFleetReconnect(load);
load();
